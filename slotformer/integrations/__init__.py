"""Adapters to RL libraries, each behind its optional extra (imported on demand).

* :mod:`slotformer.integrations.rllib`: an RLlib ``RLModule`` and factored masked action
  distribution, for RLlib's env runners and DDP learners (``pip install "slotformer[rllib]"``).
* :mod:`slotformer.integrations.sb3`: the whole network as sb3-contrib's ``MaskablePPO``
  policy (non-recurrent) and a batched Slot Garden ``VecEnv`` (``pip install "slotformer[sb3]"``).
* :mod:`slotformer.integrations.torchrl`: TorchRL actor, value and environment modules over
  TensorDicts (``pip install "slotformer[torchrl]"``).
"""
