"""Slot Garden: a vectorised torch environment speaking slotformer's default contract.

Example:
    >>> import torch
    >>> from examples.slot_garden import SlotGardenEnv, evaluate_policy, heuristic_policy
    >>> env = SlotGardenEnv(num_envs=8, episode_length=32, seed=0)
    >>> mean_return = evaluate_policy(env, heuristic_policy, num_episodes=1)
"""

from __future__ import annotations

from examples.slot_garden.env import SeedStage, SlotGardenEnv, StepOutput
from examples.slot_garden.policies import evaluate_policy, heuristic_policy, random_valid_policy

__all__ = [
    "SeedStage",
    "SlotGardenEnv",
    "StepOutput",
    "evaluate_policy",
    "heuristic_policy",
    "random_valid_policy",
]
