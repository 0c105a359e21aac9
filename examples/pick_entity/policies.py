"""Reference policies for pick-an-entity: uniformly random valid play, a scripted optimum, and
an evaluator. A policy maps a `StepOutput` to actions ``{"slot", "tool", "op"}`` (int64 ``[E]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from examples.pick_entity.env import TOOL_FOR_TYPE, Op, PickEntityEnv, StepOutput, action_space
from slotformer.actions import canonicalize_masks

PolicyFn = Callable[[StepOutput], dict[str, Tensor]]


def random_valid_policy(step: StepOutput, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The op uniform among the valid ops, then every head relevant to it uniform among its
    valid choices; irrelevant heads take their canonical action (`canonicalize_masks`, as the
    networks do).

    Example:
        >>> env = PickEntityEnv(num_envs=3, seed=0)
        >>> actions = random_valid_policy(env.reset(), torch.Generator().manual_seed(0))
        >>> bool(env.action_validity(actions).all())
        True
    """
    space = action_space(step.masks["slot"].shape[-1])
    ops = torch.multinomial(step.masks["op"].float(), 1, generator=generator).squeeze(-1)
    canonical = canonicalize_masks(space, step.masks, ops)
    return {
        name: ops if name == space.op_head
        else torch.multinomial(canonical[name].float(), 1, generator=generator).squeeze(-1)
        for name in space.head_names
    }


def scripted_policy(step: StepOutput) -> dict[str, Tensor]:
    """The optimum the reward is built around: COLLECT the valuable entity with its type's
    tool; else CLEAR a junk entity (room for the next valuable one); else PASS.

    Example:
        >>> env = PickEntityEnv(num_envs=3, seed=0)
        >>> actions = scripted_policy(env.reset())
        >>> actions["op"].tolist()  # every episode starts with a valuable entity
        [1, 1, 1]
    """
    has_valuable = step.valuable.any(-1)
    occupied = step.masks["slot"]
    any_entity = occupied.any(-1)
    # argmax of a bool row = its first True
    valuable_slot = step.valuable.to(torch.uint8).argmax(-1)
    junk_slot = occupied.to(torch.uint8).argmax(-1)
    slot = torch.where(has_valuable, valuable_slot, junk_slot)
    entity_type = step.blueprint_indices.gather(-1, slot.unsqueeze(-1)).squeeze(-1).clamp(min=0)
    tool_for_type = torch.tensor([int(t) for t in TOOL_FOR_TYPE], device=slot.device)
    op = torch.where(
        has_valuable,
        int(Op.COLLECT),
        torch.where(any_entity, int(Op.CLEAR), int(Op.PASS)),
    )
    tool = torch.where(op == Op.COLLECT, tool_for_type[entity_type], 0)
    return {"slot": slot, "tool": tool, "op": op}


def evaluate_policy(env: PickEntityEnv, policy_fn: PolicyFn, num_episodes: int = 1) -> float:
    """Mean return of ``policy_fn`` over ``num_episodes`` episodes of every environment
    (``env`` is reset first).

    Example:
        >>> evaluate_policy(PickEntityEnv(8, seed=0), scripted_policy) > 3.0
        True
    """
    returns = []
    with torch.no_grad():
        step = env.reset()
        for _ in range(num_episodes * env.episode_length):
            step = env.step(policy_fn(step))
            returns.append(step.episode_return[step.done])
    return float(torch.cat(returns).mean())
