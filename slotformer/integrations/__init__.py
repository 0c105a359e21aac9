"""Adapters to RL libraries, each behind its optional extra (imported on demand).

* :mod:`slotformer.integrations.rllib`: an RLlib ``RLModule`` and factored masked action
  distribution, for RLlib's env runners and DDP learners (``pip install "slotformer[rllib]"``).
* :mod:`slotformer.integrations.sb3`: a Stable-Baselines3 features extractor around the
  slot encoder, for sb3-contrib's ``MaskablePPO`` (``pip install "slotformer[sb3]"``).
* :mod:`slotformer.integrations.torchrl`: TorchRL actor, value and environment modules over
  TensorDicts (``pip install "slotformer[torchrl]"``).
"""
