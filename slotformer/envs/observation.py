"""What a Slot Garden agent sees: the observation layout, the masks and ``slot_by_op``.

Observation ``[E, 23 + 31 N]`` float32 (base block, then slot ``k`` at ``23 + 31 k``), all
features finite and O(1).

Base block (23 features; 0, 10 and 14-19 are 0 on the first observation)::

    0      episode progress t / T (T: this episode's length)
    1      steps remaining 1 - t / T
    2      host score / N
    3-5    fraction of slots with a live seed (germinated..holding), empty, fossilized
    6-9    fraction of slots GERMINATED, TRAINING, BLENDING, HOLDING
    10-13  last reward, rent per live seed x 100, rent paid at the last step (rent x live
           seeds), return of the episode so far / N
    14-19  one-hot of the last op
    20     mean contribution estimate over live seeds (0 if none)
    21-22  locked value of the fossilized seeds / N, N / 64 (grid size)

Slot block (31 features; the blueprint itself is passed separately as ``blueprint_indices``)::

    0      active flag (1 iff blueprint_indices >= 0)
    1-6    stage one-hot: EMPTY, GERMINATED, TRAINING, BLENDING, HOLDING, FOSSILIZED
    7-8    alpha, alpha target (0 when empty)
    9      contribution estimate (noisy; exact locked value for fossilized; 0 when empty)
    10     estimate confidence 1 - 1 / sqrt(1 + age) (1 for fossilized, 0 when empty)
    11     age / episode_length
    12     training progress min(1, age / TEMPO_TRAINING_STEPS[tempo]) (1 = may ADVANCE)
    13     blend progress (0..1; 1 when holding or fossilized)
    14     mean contribution estimate of the occupied 4-neighbours (0 if none)
    15-16  fraction of the 4 neighbour positions holding a live, a fossilized seed
    17-18  row / max(1, rows - 1), col / max(1, cols - 1)
    19-30  one-hots of style (4), tempo (3) and alpha curve (5), 0 when empty

Masks (bool, True = valid): one per head of ``ActionSpace.default(N)`` plus ``slot_by_op``
``[E, 6, N]``. ``slot_by_op[:, WAIT]`` is all True (WAIT's slot is irrelevant; an all-True row
keeps the slot mask non-empty), GERMINATE: empty slots, SET_ALPHA_TARGET: blending or holding
seeds, PRUNE: live seeds, FOSSILIZE: holding seeds, ADVANCE: training seeds that have trained
for their tempo's number of steps. The ``slot`` mask is the union over ops of ``slot_by_op``
(so all True), the ``op`` mask is the ops with at least one valid slot (WAIT always). The
``blueprint`` mask excludes NOOP (0); every other head is all True. An action is valid when
its op is in the op mask, its slot is in ``slot_by_op[op]`` and every head relevant to the op
(the relevance table of ``ActionSpace.default``) is in its mask; irrelevant heads are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from slotformer.config import SlotConfig
from slotformer.envs.rules import MAX_SLOTS, NUM_STAGES, SeedStage
from slotformer.presets.seed_lifecycle import NUM_OPS, AlphaCurve, BlueprintAction, Style, Tempo

if TYPE_CHECKING:
    from slotformer.envs.dynamics import SlotGardenEnv

# Indices into the observation blocks (see the module docstring), for policies and tests.
BASE_PROGRESS, BASE_LAST_REWARD = 0, 10
SLOT_ACTIVE, SLOT_STAGE = 0, 1  # the stage one-hot is 6 wide
(SLOT_ALPHA, SLOT_ALPHA_TARGET, SLOT_ESTIMATE, SLOT_CONFIDENCE, SLOT_AGE, SLOT_TRAINING_PROGRESS,
 SLOT_BLEND_PROGRESS, SLOT_NEIGHBOUR_ESTIMATE, SLOT_NEIGHBOUR_LIVE, SLOT_NEIGHBOUR_FOSSILIZED,
 SLOT_ROW, SLOT_COL) = range(7, 19)
SLOT_STYLE, SLOT_TEMPO, SLOT_CURVE = 19, 23, 26  # one-hots 4, 3 and 5 wide


@dataclass
class StepOutput:
    """What ``reset`` and ``step`` return (E = number of environments, N = slots).

    Attributes:
        obs: float32 ``[E, 23 + 31 N]``; where an episode just ended, the new one's first.
        blueprint_indices: int64 ``[E, N]``, -1 for an empty slot, else 1..12.
        masks: bool masks (True = valid) keyed exactly by ``ActionSpace.default(N).head_names``:
            ``slot [E, N]``, ``blueprint [E, 13]``, ``style [E, 4]``, ``tempo [E, 3]``,
            ``alpha_target [E, 3]``, ``alpha_speed [E, 4]``, ``alpha_curve [E, 5]``, ``op [E, 6]``.
        slot_by_op: bool ``[E, 6, N]``, the slots valid for each op (WAIT's row all True).
        reward: float32 ``[E]`` (0 after ``reset``).
        done: bool ``[E]``, True where the episode ended at this step (and was reset); all True
            or all False with equal episode lengths (the default).
        episode_return: float32 ``[E]``, the finished episode's return where ``done``, else NaN.
        info: ``host_score [E]``, ``num_live [E]`` and ``contributions_before_reset [E, N]``
            (what the estimates are noisy views of: ``c``, the locked one when fossilized, 0
            when empty) before any auto-reset, ``contributions [E, N]`` for the returned
            ``obs``; with ``final_observation=True``, on steps that end episodes,
            ``final_obs``, ``final_blueprint_indices`` and ``final_slot_by_op``.
    """

    obs: Tensor
    blueprint_indices: Tensor
    masks: dict[str, Tensor]
    slot_by_op: Tensor
    reward: Tensor
    done: Tensor
    episode_return: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


def grid_neighbours(slot_config: SlotConfig) -> tuple[Tensor, Tensor, Tensor]:
    """4-neighbour table ``[N, 4]`` (index N = no neighbour) and normalised rows/cols ``[N]``."""
    positions = slot_config.positions
    index_of = {pos: k for k, pos in enumerate(positions)}
    table = [
        [index_of.get((row + dr, col + dc), len(positions))
         for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
        for row, col in positions
    ]
    grid = torch.tensor(positions, dtype=torch.float32)  # [N, 2]: row, col
    grid = grid / grid.max(0).values.clamp(min=1.0)
    return torch.tensor(table, dtype=torch.long), grid[:, 0], grid[:, 1]


def slot_by_op(env: SlotGardenEnv) -> Tensor:
    """Bool ``[E, 6, N]``: the slots valid for each op in ``env``'s current state."""
    stage = env.stage
    ready = env.age >= env._tempo_steps[env.tempo]
    return torch.stack([
        torch.ones_like(stage, dtype=torch.bool),  # WAIT: slot irrelevant
        stage == SeedStage.EMPTY,  # GERMINATE
        (stage == SeedStage.BLENDING) | (stage == SeedStage.HOLDING),  # SET_ALPHA_TARGET
        env._live(),  # PRUNE
        stage == SeedStage.HOLDING,  # FOSSILIZE
        (stage == SeedStage.TRAINING) & ready,  # ADVANCE
    ], dim=1)


def masks(env: SlotGardenEnv, slot_by_op: Tensor) -> dict[str, Tensor]:
    """The per-head masks (head name -> bool ``[E, n]``) that ``slot_by_op [E, 6, N]`` implies."""
    result = {name: torch.ones(env.num_envs, size, dtype=torch.bool, device=env.device)
              for name, size in env.action_space.sizes.items()}
    result["slot"] = slot_by_op.any(dim=1)  # [E, N]
    result["op"] = slot_by_op.any(dim=2)  # [E, 6]
    result["blueprint"][:, BlueprintAction.NOOP] = False
    return result


def observe(env: SlotGardenEnv) -> Tensor:
    """``env``'s current observation, float32 ``[E, 23 + 31 N]`` (see the module docstring)."""
    e, n, eye = env.num_envs, env.num_slots, env._eye
    occupied = env.blueprint >= 0  # [E, N]
    live = env._live()
    fossil = env.stage == SeedStage.FOSSILIZED
    stage_one_hot = eye[NUM_STAGES][env.stage]  # [E, N, 6]
    stage_fraction = stage_one_hot.mean(1)  # [E, 6]
    progress = env.t.float() / env.episode_lengths  # [E], this episode's length
    mean_estimate = (env.estimate * live).sum(-1) / live.sum(-1).clamp(min=1)
    last_op = eye[NUM_OPS][env.last_op.clamp(min=0)] * (env.last_op >= 0).unsqueeze(-1)
    base = torch.cat([
        torch.stack([progress, 1.0 - progress, env.score / n, live.float().mean(-1),
                     stage_fraction[:, SeedStage.EMPTY], stage_fraction[:, SeedStage.FOSSILIZED]],
                    dim=-1),  # 0-5
        stage_fraction[:, SeedStage.GERMINATED : SeedStage.HOLDING + 1],  # 6-9
        torch.stack([env.last_reward, torch.full_like(progress, env.rent * 100.0), env.last_rent,
                     env.running_return / n], dim=-1),  # 10-13
        last_op,  # 14-19
        torch.stack([mean_estimate, (env.locked_value * fossil).sum(-1) / n,
                     torch.full_like(progress, n / MAX_SLOTS)], dim=-1),  # 20-22
    ], dim=-1)  # [E, 23]
    occupied_f = occupied.float()
    age = env.age.float()
    confidence = torch.where(fossil, 1.0, 1.0 - torch.rsqrt(1.0 + age)) * occupied_f
    training = (age / env._tempo_steps[env.tempo]).clamp(max=1.0)
    training = torch.where(env.stage >= SeedStage.BLENDING, 1.0, training) * occupied_f
    blend = torch.where(env.stage >= SeedStage.HOLDING, 1.0, env.blend_progress)
    # One gather for every neighbour statistic: [E, N, 4 neighbours, 4 statistics].
    per_slot = torch.stack([occupied_f, env.estimate, live.float(), fossil.float()], -1)
    padded = torch.cat([per_slot, per_slot.new_zeros(e, 1, 4)], dim=1)
    around = padded[:, env._neighbours]  # [E, N, 4, 4]
    neighbour_count = around[..., 0].sum(-1).clamp(min=1.0)
    occupied_col = occupied_f.unsqueeze(-1)  # [E, N, 1]
    slots = torch.cat([
        occupied_col, stage_one_hot,  # 0, 1-6
        torch.stack([
            env.alpha, env.alpha_target, env.estimate, confidence, age / env.episode_length,
            training, blend * occupied_f,  # 7-13
            around[..., 1].sum(-1) / neighbour_count,  # 14: the neighbours' mean estimate
            around[..., 2].mean(-1), around[..., 3].mean(-1),  # 15-16: live, fossilized
            env._row_feature.expand(e, n), env._col_feature.expand(e, n),  # 17-18
        ], dim=-1),
        eye[len(Style)][env.style] * occupied_col, eye[len(Tempo)][env.tempo] * occupied_col,
        eye[len(AlphaCurve)][env.curve] * occupied_col,  # 19-30
    ], dim=-1)  # [E, N, 31]
    return torch.cat([base, slots.flatten(1)], dim=-1)


def output(env: SlotGardenEnv, reward: Tensor, done: Tensor, episode_return: Tensor,
           info: dict[str, Tensor]) -> StepOutput:
    """``env``'s current state as a :class:`StepOutput`, with the step's reward ``[E]``,
    ``done [E]``, ``episode_return [E]`` and ``info``."""
    sbo = slot_by_op(env)
    return StepOutput(observe(env), env.blueprint.clone(), masks(env, sbo), sbo, reward.float(),
                      done, episode_return.float(), info)
