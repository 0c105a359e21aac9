"""Pick-an-entity: a second problem for slotformer, with its own factored action space.

Example:
    >>> from examples.pick_entity import PickEntityEnv, evaluate_policy, scripted_policy
    >>> env = PickEntityEnv(num_envs=8, seed=0)
    >>> evaluate_policy(env, scripted_policy) > 3.0
    True
"""

from __future__ import annotations

from examples.pick_entity.env import (
    TOOL_FOR_TYPE,
    EntityType,
    Op,
    PickEntityEnv,
    StepOutput,
    Tool,
    action_space,
)
from examples.pick_entity.policies import evaluate_policy, random_valid_policy, scripted_policy

__all__ = [
    "TOOL_FOR_TYPE",
    "EntityType",
    "Op",
    "PickEntityEnv",
    "StepOutput",
    "Tool",
    "action_space",
    "evaluate_policy",
    "random_valid_policy",
    "scripted_policy",
]
