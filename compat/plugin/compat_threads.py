"""pytest plugin: one intra-op thread (the measuring machine is shared)."""
import torch

torch.set_num_threads(1)
