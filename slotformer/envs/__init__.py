"""Environments that speak slotformer's default contract.

:class:`SlotGardenEnv` steps ``E`` environments as ``[E, ...]`` torch tensors on any device;
with the ``gym`` extra it is also gymnasium's ``slotformer/SlotGarden-v0``, single and vector
(:mod:`slotformer.envs.gym`).

Example:
    >>> import torch
    >>> from slotformer.envs import SlotGardenEnv, evaluate_policy, heuristic_policy
    >>> env = SlotGardenEnv(num_envs=8, episode_length=32, seed=0)
    >>> mean_return = evaluate_policy(env, heuristic_policy, num_episodes=1)
"""

from __future__ import annotations

import importlib.util

from slotformer.envs.dynamics import SlotGardenEnv
from slotformer.envs.observation import StepOutput
from slotformer.envs.policies import evaluate_policy, heuristic_policy, random_valid_policy
from slotformer.envs.rules import SeedStage

__all__ = [
    "GYM_ENV_ID", "SeedStage", "SlotGardenEnv", "StepOutput", "evaluate_policy",
    "heuristic_policy", "random_valid_policy",
]

# Slot Garden's gymnasium id, registered by importing this package (or, in a process that has
# not, by the id "slotformer.envs:" + GYM_ENV_ID) when gymnasium is installed.
GYM_ENV_ID = "slotformer/SlotGarden-v0"

if importlib.util.find_spec("gymnasium") is not None:
    from slotformer.envs.gym import register_envs

    register_envs()
