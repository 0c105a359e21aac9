"""Reference policies for Slot Garden (int64 actions ``[E, 8]`` in head order, as
``SlotGardenEnv.step`` takes them), whose returns a learned policy should beat, and an evaluator."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from slotformer.actions import ActionSpace, canonicalize_masks
from slotformer.config import ObservationLayout
from slotformer.envs.dynamics import SlotGardenEnv
from slotformer.envs.observation import (
    BASE_PROGRESS,
    SLOT_CONFIDENCE,
    SLOT_ESTIMATE,
    SLOT_NEIGHBOUR_ESTIMATE,
    StepOutput,
)
from slotformer.envs.rules import BLUEPRINT_MEAN_QUALITY, ESTIMATE_NOISE_STD
from slotformer.presets.seed_lifecycle import AlphaCurve, AlphaSpeed, AlphaTarget, Op, Style, Tempo
from slotformer.validation import check_positive_int

PolicyFn = Callable[[StepOutput], Tensor]

GOOD_BLUEPRINTS: tuple[int, ...] = tuple(  # the three best mean qualities, best first
    sorted(range(1, len(BLUEPRINT_MEAN_QUALITY)), key=lambda b: -BLUEPRINT_MEAN_QUALITY[b])[:3]
)


def random_valid_policy(step_output: StepOutput, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random valid action per environment, int64 ``[E, 8]``: the op among the
    valid ops, the slot among ``slot_by_op[op]``, every head relevant to the op among its valid
    choices; the others take their canonical action (``canonicalize_masks``, as the networks).

    Example:
        >>> env = SlotGardenEnv(num_envs=2, seed=0)
        >>> actions = random_valid_policy(env.reset(), torch.Generator().manual_seed(0))
        >>> tuple(actions.shape), bool(env.action_validity(actions).all())
        ((2, 8), True)
    """
    masks = step_output.masks
    space = ActionSpace.default(step_output.slot_by_op.shape[-1])
    ops = torch.multinomial(masks["op"].float(), 1, generator=generator).squeeze(-1)  # [E]
    canonical = canonicalize_masks(space, masks, ops, step_output.slot_by_op)
    columns = [  # one draw per head, in head order
        ops if name == space.op_head
        else torch.multinomial(canonical[name].float(), 1, generator=generator).squeeze(-1)
        for name in space.head_names
    ]
    return torch.stack(columns, dim=-1)  # [E, 8]


def heuristic_policy(step_output: StepOutput) -> Tensor:
    """A scripted policy that reads only the observation and the masks, int64 ``[E, 8]``.

    Per environment, the first that applies: PRUNE the live seed with the most negative
    estimate, if below 0 by half a noise standard deviation; FOSSILIZE a holding seed whose
    estimate is above 0 by as much; ADVANCE a ready training seed with a positive estimate;
    GERMINATE (STANDARD tempo, FULL target) in the empty slot whose neighbours' mean estimate
    is best, unless below -0.2: the best of ``GOOD_BLUEPRINTS`` (next to neighbours that look
    bad, one of them rotated by time); else WAIT. It does not know the affinity table.

    Example:
        >>> env = SlotGardenEnv(num_envs=2, seed=0)
        >>> actions = heuristic_policy(env.reset())
        >>> actions[:, -1].tolist()  # GERMINATE on an empty grid
        [1, 1]
    """
    obs, slot_by_op = step_output.obs, step_output.slot_by_op
    num_envs, num_slots = step_output.blueprint_indices.shape
    base, slots = ObservationLayout.infer(obs.shape[-1], num_slots).split(obs)  # [E,23] [E,N,31]
    estimate = slots[..., SLOT_ESTIMATE]
    noise_std = ESTIMATE_NOISE_STD * (1.0 - slots[..., SLOT_CONFIDENCE])  # [E, N]
    far = torch.finfo(obs.dtype).max

    def pick(candidates: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """Best-scoring candidate slot ``[E]`` and whether any exists ``[E]``."""
        scored = torch.where(candidates, score, -far)
        return scored.argmax(-1), candidates.any(-1)

    prune_slot, prune = pick(slot_by_op[:, Op.PRUNE] & (estimate + 0.5 * noise_std < 0), -estimate)
    fossil_slot, fossilize = pick(slot_by_op[:, Op.FOSSILIZE] & (estimate - 0.5 * noise_std > 0),
                                  estimate)
    advance_slot, advance = pick(slot_by_op[:, Op.ADVANCE] & (estimate > 0.0), estimate)
    neighbour = slots[..., SLOT_NEIGHBOUR_ESTIMATE]
    germ_slot, germinate = pick(slot_by_op[:, Op.GERMINATE] & (neighbour > -0.2), neighbour)

    # Plant the best blueprint; next to neighbours that look bad (or after a prune left the
    # slot empty among them), rotate among the good ones by time so a replant tries another.
    good = torch.tensor(GOOD_BLUEPRINTS, dtype=torch.long, device=obs.device)
    rotation = (base[:, BASE_PROGRESS] * 997).long() % len(GOOD_BLUEPRINTS)
    chosen_neighbour = neighbour.gather(1, germ_slot.unsqueeze(-1)).squeeze(-1)  # [E]
    blueprint = good[torch.where(chosen_neighbour < 0.0, rotation, 0)]

    op = torch.full((num_envs,), int(Op.WAIT), dtype=torch.long, device=obs.device)
    slot = torch.zeros(num_envs, dtype=torch.long, device=obs.device)
    # Lowest priority first, so each later assignment overrides the earlier ones.
    for chosen, where, target_op in (
        (germ_slot, germinate, Op.GERMINATE), (advance_slot, advance, Op.ADVANCE),
        (fossil_slot, fossilize, Op.FOSSILIZE), (prune_slot, prune, Op.PRUNE),
    ):
        op = torch.where(where, int(target_op), op)
        slot = torch.where(where, chosen, slot)

    # Every seed it plants: SIGMOID_ADD style, STANDARD tempo, FULL target, INSTANT and LINEAR.
    fixed = (Style.SIGMOID_ADD, Tempo.STANDARD, AlphaTarget.FULL, AlphaSpeed.INSTANT,
             AlphaCurve.LINEAR)
    fixed_heads = torch.tensor(fixed, dtype=torch.long, device=obs.device).expand(num_envs, -1)
    blueprint = torch.where(op == Op.GERMINATE, blueprint, 0)
    return torch.cat([slot[:, None], blueprint[:, None], fixed_heads, op[:, None]], -1)  # [E, 8]


def evaluate_policy(
    env: SlotGardenEnv | Callable[[], SlotGardenEnv], policy_fn: PolicyFn, num_episodes: int = 1
) -> float:
    """Mean return of ``policy_fn`` (``StepOutput`` -> int64 actions ``[E, 8]``, e.g.
    ``functools.partial(random_valid_policy, generator=g)``) over the episodes that end in
    ``num_episodes * episode_length`` steps of ``env`` (reset first) or of a fresh one from it.

    Example:
        >>> env = SlotGardenEnv(num_envs=4, episode_length=16, seed=0)
        >>> isinstance(evaluate_policy(env, heuristic_policy), float)
        True
    """
    check_positive_int("num_episodes", num_episodes)
    garden = env if isinstance(env, SlotGardenEnv) else env()
    if not isinstance(garden, SlotGardenEnv):
        raise ValueError(f"env must be a SlotGardenEnv or a factory of one, got {type(garden)}")
    returns = []
    with torch.no_grad():
        out = garden.reset()
        for _ in range(num_episodes * garden.episode_length):
            out = garden.step(policy_fn(out))
            returns.append(out.episode_return[out.done])
    return float(torch.cat(returns).mean())
