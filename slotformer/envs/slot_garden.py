"""Slot Garden: a vectorised toy environment that speaks slotformer's default contract.

``E`` environments are stepped at once as ``[E, ...]`` tensors (no Python loop over
environments) on any :class:`~slotformer.config.SlotConfig` grid of up to 64 slots (8x8).
Each slot is empty or holds a **seed**: a blueprint (1..12), a lifecycle stage, a blend level
alpha moving toward its target, and a hidden quality drawn from its blueprint's distribution.

Lifecycle (``SeedStage``)::

    EMPTY --GERMINATE--> GERMINATED --(next step)--> TRAINING --ADVANCE--> BLENDING
          --(alpha reaches its target)--> HOLDING --FOSSILIZE--> FOSSILIZED (permanent)
    any live stage (GERMINATED, TRAINING, BLENDING, HOLDING) --PRUNE--> EMPTY
    BLENDING / HOLDING --SET_ALPHA_TARGET--> BLENDING (or HOLDING at once for INSTANT speed)

Dynamics of one ``step``: the chosen action is validated against the state the masks were
computed from and applied; then every seed that was not germinated this step ages by one
(GERMINATED becomes TRAINING, BLENDING alpha moves along its curve); then the reward is the
change in the host score minus the rent.

* True contribution of a seed ``i`` (what it adds at alpha = 1)::

      c_i = quality_i + TEMPO_QUALITY_BONUS[tempo_i] + style_bonus[bp_i, style_i]
            + sum over occupied 4-neighbours j of affinity[bp_i, bp_j]

  ``quality_i ~ Normal(BLUEPRINT_MEAN_QUALITY[bp], BLUEPRINT_QUALITY_STD[bp])`` is drawn at
  germination. ``affinity`` ``[13, 13]`` (symmetric) and ``style_bonus`` ``[13, 4]`` are fixed
  per environment seed (drawn once at construction, shared by the ``E`` environments), so what
  to plant where depends on the neighbours.
* Host score = sum over live seeds of ``alpha * c`` + sum over fossilized seeds of their
  value locked at fossilization (``alpha * c`` at that moment; it never changes again).
* Reward = host score(t+1) - host score(t) - ``rent`` x (number of live seeds after the
  action). Fossilized seeds pay no rent. PRUNE removes a seed at once (its ``alpha * c``
  leaves the score); the PRUNE action's alpha_speed and alpha_curve are validated but have no
  further effect in this toy.
* Observed contribution estimate = ``c + noise``, fresh noise every step with standard
  deviation ``ESTIMATE_NOISE_STD / sqrt(1 + age)``: it gets less noisy as the seed ages.
* Episodes last ``episode_length`` steps. All environments start together (``reset``) and
  so end together; the ``step`` that ends an episode resets them (auto-reset) and returns the
  new episode's first observation, with ``done`` True and the finished ``episode_return``.
* Unequal episode lengths (``min_episode_length``): each environment draws the length of each
  of its episodes uniformly from ``min_episode_length .. episode_length`` (at ``reset`` and at
  every auto-reset), so environments end episodes at different steps. Each environment keeps
  its own clock ``t`` and length (``episode_lengths [E]``) on the device; ``done`` is computed
  there (no host sync) and only the finished environments' state is reset. A recurrent
  trainer must then zero its state per environment (``episode_starts``), not all at once.

Reference scores (mean episode return, T = 100, 64 environments x 2 episodes, seeds 0/1/2;
``DEFAULT_RENT`` = 0.005): 1x3 grid: random valid policy -0.61/-0.66/-0.62, heuristic
+2.75/+1.64/+1.86; 2x5 grid: random -1.36/-1.46/-1.58, heuristic +11.78/+5.49/+6.30; doing
nothing scores exactly 0. A higher rent makes the random policy worse still, but also makes
"never plant" an optimum a small PPO falls into before it finds the plant-advance-fossilize
sequence. At 0.005 a small MLP PPO (32 environments, rollouts of 25 steps) on 1x3 goes from
about -0.4 in its first episode to about +2 after 13k environment steps (+2.5 after 19k).

Observation ``[E, 23 + 31 N]`` float32 (base block, then slot ``k`` at ``23 + 31 k``), all
features finite and O(1).

Base block (23 features):

====  ==============================================================
idx   feature
====  ==============================================================
0     episode progress ``t / T`` (0 on the first observation; T is this episode's length)
1     steps remaining ``1 - t / T``
2     host score / N
3     fraction of slots with a live seed (germinated..holding)
4     fraction of empty slots
5     fraction of fossilized slots
6-9   fraction of slots GERMINATED, TRAINING, BLENDING, HOLDING
10    last reward (0 on the first observation)
11    rent per live seed x 100
12    rent paid at the last step (rent x live seeds)
13    return of the episode so far / N
14-19 one-hot of the last op (all 0 on the first observation)
20    mean contribution estimate over live seeds (0 if none)
21    locked value of the fossilized seeds / N
22    N / 64 (grid size)
====  ==============================================================

Slot block (31 features; the blueprint itself is passed separately as ``blueprint_indices``):

====  ==============================================================
idx   feature
====  ==============================================================
0     active flag (1 iff ``blueprint_indices >= 0``)
1-6   stage one-hot: EMPTY, GERMINATED, TRAINING, BLENDING, HOLDING, FOSSILIZED
7     alpha
8     alpha target (0 when empty)
9     contribution estimate (noisy; exact locked value for fossilized; 0 when empty)
10    estimate confidence ``1 - 1 / sqrt(1 + age)`` (1 for fossilized, 0 when empty)
11    age / ``episode_length``
12    training progress ``min(1, age / TEMPO_TRAINING_STEPS[tempo])`` (1 = may ADVANCE)
13    blend progress (0..1; 1 when holding or fossilized)
14    mean contribution estimate of the occupied 4-neighbours (0 if none)
15    fraction of the 4 neighbour positions holding a live seed
16    fraction of the 4 neighbour positions holding a fossilized seed
17    row / max(1, rows - 1)
18    col / max(1, cols - 1)
19-22 style one-hot (0 when empty)
23-25 tempo one-hot (0 when empty)
26-30 alpha curve one-hot (0 when empty)
====  ==============================================================

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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import ClassVar

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import DEFAULT_BASE_DIM, DEFAULT_SLOT_DIM, ObservationLayout, SlotConfig
from slotformer.presets.seed_lifecycle import (
    HEAD_NAMES,
    NUM_BLUEPRINTS,
    NUM_OPS,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlueprintAction,
    Op,
    Style,
    Tempo,
)
from slotformer.validation import describe_shape, validation_enabled

MAX_SLOTS = 64
"""The largest grid the environment accepts (8x8)."""


class SeedStage(IntEnum):
    """A slot's lifecycle stage (PRUNE sends a live seed back to EMPTY)."""

    EMPTY = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    HOLDING = 4
    FOSSILIZED = 5


NUM_STAGES = len(SeedStage)

BLUEPRINT_MEAN_QUALITY: tuple[float, ...] = (
    0.0,  # NOOP (never planted)
    0.35,  # CONV_LIGHT
    0.50,  # ATTENTION
    0.15,  # NORM
    -0.10,  # DEPTHWISE
    -0.30,  # BOTTLENECK
    0.25,  # CONV_SMALL
    -0.40,  # CONV_HEAVY
    -0.10,  # LORA
    -0.50,  # LORA_LARGE
    -0.20,  # MLP_SMALL
    -0.35,  # MLP
    0.10,  # FLEX_ATTENTION
)
"""Mean hidden quality per blueprint: a few reliably positive, most negative (uniform mean < 0)."""

BLUEPRINT_QUALITY_STD: tuple[float, ...] = (
    0.0, 0.15, 0.25, 0.10, 0.20, 0.20, 0.15, 0.30, 0.20, 0.30, 0.15, 0.20, 0.45,
)
"""Standard deviation of the hidden quality per blueprint (FLEX_ATTENTION is a gamble)."""

ALPHA_TARGET_VALUES: tuple[float, ...] = (0.5, 0.7, 1.0)
"""Blend level for AlphaTarget HALF, SEVENTY, FULL."""

ALPHA_SPEED_STEPS: tuple[int, ...] = (0, 2, 4, 8)
"""Steps to reach the target for AlphaSpeed INSTANT, FAST, MEDIUM, SLOW."""

ADVANCE_BLEND_STEPS = 4
"""Steps an ADVANCE-d seed takes to blend from 0 to its target (MEDIUM speed)."""

TEMPO_TRAINING_STEPS: tuple[int, ...] = (2, 4, 7)
"""Minimum age before ADVANCE is allowed, for Tempo FAST, STANDARD, SLOW."""

TEMPO_QUALITY_BONUS: tuple[float, ...] = (-0.05, 0.0, 0.05)
"""Added to a seed's contribution for Tempo FAST, STANDARD, SLOW (patience pays a little)."""

STYLE_DEFAULT_CURVE: tuple[int, ...] = (
    AlphaCurve.LINEAR,  # LINEAR_ADD
    AlphaCurve.COSINE,  # LINEAR_MULTIPLY
    AlphaCurve.SIGMOID,  # SIGMOID_ADD
    AlphaCurve.SIGMOID_SHARP,  # GATED_GATE
)
"""The blend curve a germinated seed uses when ADVANCE-d (SET_ALPHA_TARGET picks its own)."""

ESTIMATE_NOISE_STD = 0.5
"""Noise of the contribution estimate at age 0; it shrinks as ``1 / sqrt(1 + age)``."""

AFFINITY_STD = 0.15
"""Scale of the per-seed blueprint-by-blueprint neighbour affinity table."""

STYLE_BONUS_STD = 0.05
"""Scale of the per-seed blueprint-by-style bonus table."""

DEFAULT_RENT = 0.005
"""Reward charged per live seed per step."""

_SIGMOID_STEEPNESS = (4.0, 8.0, 16.0)  # SIGMOID_GENTLE, SIGMOID, SIGMOID_SHARP
_LIVE_STAGES = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)

# Indices into the observation blocks (see the module docstring), for policies and tests.
BASE_PROGRESS = 0
BASE_LAST_REWARD = 10
SLOT_ACTIVE = 0
SLOT_STAGE = 1  # 6-wide one-hot starts here
SLOT_ALPHA = 7
SLOT_ALPHA_TARGET = 8
SLOT_ESTIMATE = 9
SLOT_CONFIDENCE = 10
SLOT_AGE = 11
SLOT_TRAINING_PROGRESS = 12
SLOT_BLEND_PROGRESS = 13
SLOT_NEIGHBOUR_ESTIMATE = 14
SLOT_NEIGHBOUR_LIVE = 15
SLOT_NEIGHBOUR_FOSSILIZED = 16
SLOT_ROW = 17
SLOT_COL = 18
SLOT_STYLE = 19  # 4-wide one-hot
SLOT_TEMPO = 23  # 3-wide one-hot
SLOT_CURVE = 26  # 5-wide one-hot


@dataclass
class StepOutput:
    """What ``reset`` and ``step`` return (E = number of environments, N = slots).

    Attributes:
        obs: float32 ``[E, 23 + 31 N]``; for an environment that just finished, the first
            observation of its new episode.
        blueprint_indices: int64 ``[E, N]``, -1 for an empty slot, else 1..12.
        masks: bool masks keyed exactly by ``ActionSpace.default(N).head_names``:
            ``slot [E, N]``, ``blueprint [E, 13]``, ``style [E, 4]``, ``tempo [E, 3]``,
            ``alpha_target [E, 3]``, ``alpha_speed [E, 4]``, ``alpha_curve [E, 5]``,
            ``op [E, 6]``; True = valid.
        slot_by_op: bool ``[E, 6, N]``, the slots valid for each op (WAIT's row all True).
        reward: float32 ``[E]`` (0 after ``reset``).
        done: bool ``[E]``, True where the episode ended at this step (and was reset). With
            equal episode lengths (the default) the environments share one clock, so it is all
            True or all False; with ``min_episode_length`` each environment ends on its own.
        episode_return: float32 ``[E]``, the return of the episode that just ended where
            ``done``, NaN elsewhere.
        info: ``host_score [E]`` (score at the end of this step, before any auto-reset),
            ``num_live [E]`` (live seeds, before any auto-reset),
            ``contributions_before_reset [E, N]`` (the true contributions that the estimates
            are noisy views of: ``c`` for live seeds, the locked contribution for fossilized
            ones, 0 for empty slots; before any auto-reset, a target for a contribution
            predictor) and ``contributions [E, N]`` (the same for the returned ``obs``);
            with ``final_observation=True``, on steps that end episodes, also ``final_obs``,
            ``final_blueprint_indices`` and ``final_slot_by_op`` (the last state before the
            auto-reset).
    """

    obs: Tensor
    blueprint_indices: Tensor
    masks: dict[str, Tensor]
    slot_by_op: Tensor
    reward: Tensor
    done: Tensor
    episode_return: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


def _grid_neighbours(slot_config: SlotConfig) -> tuple[Tensor, Tensor, Tensor]:
    """4-neighbour table ``[N, 4]`` (index N = no neighbour) and normalised rows/cols ``[N]``."""
    positions = slot_config.positions
    index_of = {pos: k for k, pos in enumerate(positions)}
    num_slots = len(positions)
    table = []
    for row, col in positions:
        table.append([
            index_of.get((row + dr, col + dc), num_slots)
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
        ])
    rows = torch.tensor([r for r, _ in positions], dtype=torch.float32)
    cols = torch.tensor([c for _, c in positions], dtype=torch.float32)
    rows = rows / max(1.0, float(rows.max()))
    cols = cols / max(1.0, float(cols.max()))
    return torch.tensor(table, dtype=torch.long), rows, cols


class SlotGardenEnv:
    """``num_envs`` Slot Garden environments stepped together on one grid.

    Args:
        num_envs: E, environments stepped at once.
        slot_config: the grid (default ``SlotConfig.default()``, 3 slots in a row); at most
            64 slots. Neighbourhoods are the 4-neighbours of ``slot_config.positions``.
        episode_length: T, steps per episode (environments auto-reset); with
            ``min_episode_length``, the longest episode.
        seed: seeds the environment's own ``torch.Generator``: the affinity and style tables
            and every draw (qualities, estimate noise, episode lengths). Same seed and same
            actions give identical trajectories.
        device: where all tensors live.
        rent: reward charged per live seed per step.
        table_seed: when given, the affinity and style tables come from this seed instead of
            ``seed`` (evaluate on fresh trajectories of the same world: same ``table_seed``,
            another ``seed``).
        min_episode_length: None (the default): every episode lasts ``episode_length`` steps
            and all environments end together. An int in ``1 .. episode_length``: each
            environment draws each episode's length uniformly from ``min_episode_length ..
            episode_length``, so episodes end at different steps in different environments
            (``episode_lengths`` holds the current lengths, ``t`` the per-environment clocks).
        final_observation: when True, a ``step`` that ends episodes also reports the last
            state of each finished episode (before the auto-reset) in its ``info``:
            ``final_obs [E, 23 + 31 N]``, ``final_blueprint_indices [E, N]`` and
            ``final_slot_by_op [E, 6, N]`` (rows of environments that did not finish hold
            their current state). Off by default: it costs a second observation on those
            steps, and a trainer that does not bootstrap across episode ends never needs it.
            The gymnasium wrappers turn it on.

    Example:
        >>> env = SlotGardenEnv(num_envs=4, slot_config=SlotConfig.for_grid(2, 2), seed=0)
        >>> out = env.reset()
        >>> tuple(out.obs.shape), tuple(out.slot_by_op.shape)
        ((4, 147), (4, 6, 4))
        >>> actions = torch.zeros(4, 8, dtype=torch.long)  # WAIT everywhere
        >>> out = env.step(actions)
        >>> out.reward.tolist()
        [0.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        num_envs: int,
        slot_config: SlotConfig | None = None,
        episode_length: int = 100,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rent: float = DEFAULT_RENT,
        table_seed: int | None = None,
        min_episode_length: int | None = None,
        final_observation: bool = False,
    ) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(episode_length, int) or episode_length < 1:
            raise ValueError(f"episode_length must be a positive int, got {episode_length!r}")
        if min_episode_length is not None and (
            not isinstance(min_episode_length, int)
            or not 1 <= min_episode_length <= episode_length
        ):
            raise ValueError(
                f"min_episode_length must be None or an int in 1..episode_length="
                f"{episode_length}, got {min_episode_length!r}"
            )
        if not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if table_seed is not None and not isinstance(table_seed, int):
            raise ValueError(f"table_seed must be an int or None, got {table_seed!r}")
        slot_config = SlotConfig.default() if slot_config is None else slot_config
        if not isinstance(slot_config, SlotConfig):
            raise ValueError(f"slot_config must be a SlotConfig, got {type(slot_config).__name__}")
        if slot_config.num_slots > MAX_SLOTS:
            raise ValueError(
                f"slot_config has {slot_config.num_slots} slots, expected at most {MAX_SLOTS} (8x8)"
            )
        if not math.isfinite(rent) or rent < 0:
            raise ValueError(f"rent must be a finite non-negative float, got {rent!r}")
        self.num_envs = num_envs
        self.slot_config = slot_config
        self.num_slots = slot_config.num_slots
        self.episode_length = episode_length
        self.seed = seed
        self.device = torch.device(device)
        self.rent = float(rent)
        self.table_seed = table_seed
        self.min_episode_length = min_episode_length
        self.final_observation = bool(final_observation)
        # Equal lengths: one shared clock, tracked on the host (no reset work between ends).
        # Unequal: per-environment clocks and lengths on the device, masked resets.
        self._staggered = min_episode_length is not None
        self.action_space = ActionSpace.default(self.num_slots)
        self.observation_layout = ObservationLayout(
            num_slots=self.num_slots, slot_dim=DEFAULT_SLOT_DIM, base_dim=DEFAULT_BASE_DIM
        )

        dev = self.device
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)
        tables = self.generator
        if table_seed is not None:
            tables = torch.Generator(device=dev)
            tables.manual_seed(table_seed)
        affinity = torch.randn(NUM_BLUEPRINTS, NUM_BLUEPRINTS, generator=tables, device=dev)
        affinity = (affinity + affinity.T) * (AFFINITY_STD / math.sqrt(2.0))
        affinity[0] = 0.0
        affinity[:, 0] = 0.0
        self.affinity = affinity  # [13, 13], symmetric, NOOP row/col 0
        self.style_bonus = STYLE_BONUS_STD * torch.randn(
            NUM_BLUEPRINTS, len(Style), generator=tables, device=dev
        )  # [13, 4]

        def const(values: tuple[float, ...] | tuple[int, ...], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype, device=dev)

        self._bp_mean = const(BLUEPRINT_MEAN_QUALITY, torch.float32)
        self._bp_std = const(BLUEPRINT_QUALITY_STD, torch.float32)
        self._target_values = const(ALPHA_TARGET_VALUES, torch.float32)
        self._speed_steps = const(ALPHA_SPEED_STEPS, torch.float32)
        self._tempo_steps = const(TEMPO_TRAINING_STEPS, torch.long)
        self._tempo_bonus = const(TEMPO_QUALITY_BONUS, torch.float32)
        self._style_curve = const(tuple(int(c) for c in STYLE_DEFAULT_CURVE), torch.long)
        neighbours, rows, cols = _grid_neighbours(slot_config)
        self._neighbours = neighbours.to(dev)  # [N, 4], N = padding
        self._row_feature = rows.to(dev)  # [N]
        self._col_feature = cols.to(dev)  # [N]
        self._env_index = torch.arange(num_envs, device=dev)
        self._head_sizes = self.action_space.sizes
        # _op_accepts[op, stage]: the stages whose slot an op may target (WAIT: any slot).
        accepts = torch.zeros(NUM_OPS, NUM_STAGES, dtype=torch.bool)
        accepts[Op.WAIT] = True
        accepts[Op.GERMINATE, SeedStage.EMPTY] = True
        accepts[Op.SET_ALPHA_TARGET, [SeedStage.BLENDING, SeedStage.HOLDING]] = True
        accepts[Op.PRUNE, list(_LIVE_STAGES)] = True
        accepts[Op.FOSSILIZE, SeedStage.HOLDING] = True
        accepts[Op.ADVANCE, SeedStage.TRAINING] = True
        self._op_accepts = accepts.to(dev)  # [6, 6]
        # _relevance[op, head]: does the head's value matter for the op (slot/op checked apart).
        relevance = torch.zeros(NUM_OPS, len(HEAD_NAMES), dtype=torch.bool)
        for position, head in enumerate(self.action_space.heads):
            if head.relevant_ops is not None and head.name != "slot":
                relevance[sorted(head.relevant_ops), position] = True
        self._relevance = relevance.to(dev)  # [6, 8]
        low = torch.zeros(len(HEAD_NAMES), dtype=torch.long)
        low[HEAD_NAMES.index("blueprint")] = 1  # NOOP is not plantable
        self._head_low = low.to(dev)  # [8]
        self._head_high = torch.tensor(
            [self._head_sizes[name] for name in HEAD_NAMES], dtype=torch.long, device=dev
        )  # [8]
        self._eye = {
            size: torch.eye(size, device=dev) for size in (NUM_STAGES, NUM_OPS, 3, 4, 5)
        }
        steepness = torch.tensor((1.0, 1.0, *_SIGMOID_STEEPNESS), device=dev)  # per AlphaCurve
        self._curve_steepness = steepness
        self._curve_low = torch.sigmoid(-steepness / 2)
        self._curve_span = torch.sigmoid(steepness / 2) - self._curve_low
        self._allocate_state()

    # ------------------------------------------------------------------ state
    # Every per-environment state tensor, as name -> (per slot, dtype, its value in a fresh
    # episode); dtype None is the default float dtype. `_allocate_state` (every environment)
    # and `_reset_where` (the finished ones) both start episodes from this table, so a new
    # state tensor cannot be reset by one and forgotten by the other.
    _FRESH_STATE: ClassVar[dict[str, tuple[bool, torch.dtype | None, int | float]]] = {
        "blueprint": (True, torch.long, -1),
        "stage": (True, torch.long, 0),
        "style": (True, torch.long, 0),
        "tempo": (True, torch.long, 0),
        "curve": (True, torch.long, 0),
        "age": (True, torch.long, 0),
        "alpha": (True, None, 0.0),
        "alpha_start": (True, None, 0.0),
        "alpha_target": (True, None, 0.0),
        "blend_steps": (True, None, 0.0),
        "blend_progress": (True, None, 0.0),
        "quality": (True, None, 0.0),
        "locked_contribution": (True, None, 0.0),
        "locked_value": (True, None, 0.0),
        "estimate": (True, None, 0.0),
        # Derived from the state, cached: every step needs it before and after the action.
        "contribution": (True, None, 0.0),
        "t": (False, torch.long, 0),
        "score": (False, None, 0.0),
        "running_return": (False, None, 0.0),
        "last_reward": (False, None, 0.0),
        "last_rent": (False, None, 0.0),
        "last_op": (False, torch.long, -1),
    }
    blueprint: Tensor
    stage: Tensor
    style: Tensor
    tempo: Tensor
    curve: Tensor
    age: Tensor
    alpha: Tensor
    alpha_start: Tensor
    alpha_target: Tensor
    blend_steps: Tensor
    blend_progress: Tensor
    quality: Tensor
    locked_contribution: Tensor
    locked_value: Tensor
    estimate: Tensor
    contribution: Tensor
    t: Tensor
    score: Tensor
    running_return: Tensor
    last_reward: Tensor
    last_rent: Tensor
    last_op: Tensor
    episode_lengths: Tensor  # int64 [E], the current episode's length in each environment

    def _allocate_state(self) -> None:
        """A fresh episode in every environment: empty grids at t = 0 (with unequal lengths,
        each with a newly drawn length)."""
        for name, (per_slot, dtype, fill) in self._FRESH_STATE.items():
            shape = (self.num_envs, self.num_slots) if per_slot else (self.num_envs,)
            setattr(self, name, torch.full(shape, fill, dtype=dtype, device=self.device))
        self.episode_lengths = self._draw_episode_lengths()  # int64 [E]
        self._episode_step = 0  # host-side copy of t (equal lengths: one shared clock)

    def _reset_where(self, done: Tensor) -> None:
        """A fresh episode (and a newly drawn length) in the environments where ``done [E]``;
        the others keep their state. No host sync: every tensor is updated under the mask."""
        for name, (per_slot, _, fill) in self._FRESH_STATE.items():
            mask = done.unsqueeze(-1) if per_slot else done
            setattr(self, name, getattr(self, name).masked_fill(mask, fill))
        self.episode_lengths = torch.where(done, self._draw_episode_lengths(), self.episode_lengths)

    def _draw_episode_lengths(self) -> Tensor:
        """int64 ``[E]``: ``episode_length`` everywhere, or with ``min_episode_length`` one
        draw per environment (E draws every time, used or not, so the generator stream does
        not depend on which environments finished)."""
        if self.min_episode_length is None:
            return torch.full(
                (self.num_envs,), self.episode_length, dtype=torch.long, device=self.device
            )
        return torch.randint(
            self.min_episode_length, self.episode_length + 1, (self.num_envs,),
            generator=self.generator, device=self.device,
        )

    _STATE_NAMES = (
        *(name for name in _FRESH_STATE if name != "contribution"),  # contribution is derived
        "episode_lengths",
    )

    def get_state(self) -> dict[str, Tensor]:
        """A copy of the full state (including the generator), for ``set_state``."""
        state = {name: getattr(self, name).clone() for name in self._STATE_NAMES}
        state["generator"] = self.generator.get_state()
        return state

    def set_state(self, state: Mapping[str, Tensor]) -> None:
        """Restore a state from ``get_state`` (same num_envs, grid, device and episode-length
        setting). A rejected state leaves the environment as it was."""
        values = {}
        for name in self._STATE_NAMES:
            current = getattr(self, name)
            value = state[name]
            if value.shape != current.shape or value.dtype != current.dtype:
                raise ValueError(
                    f"state[{name!r}] has shape {describe_shape(value)} and dtype {value.dtype}, "
                    f"expected {describe_shape(current)} and {current.dtype}"
                )
            values[name] = value.clone().to(self.device)
        t, lengths = values["t"], values["episode_lengths"]
        low = self.episode_length if self.min_episode_length is None else self.min_episode_length
        if not bool(((lengths >= low) & (lengths <= self.episode_length)).all()):
            raise ValueError(
                f"state['episode_lengths'] must be in {low}..{self.episode_length}, got "
                f"{lengths.tolist()}"
            )
        if not bool(((t >= 0) & (t < lengths)).all()):
            raise ValueError(
                f"state['t'] must be in 0..episode_lengths - 1 ({lengths.tolist()}), got "
                f"{t.tolist()}"
            )
        steps = t.unique()
        if self.min_episode_length is None and steps.numel() != 1:
            raise ValueError(f"state['t'] must be the same in every environment, got {steps.tolist()}")
        for name, value in values.items():
            setattr(self, name, value)
        self.generator.set_state(state["generator"])
        self.contribution = self._contribution()
        self._episode_step = int(steps[0]) if self.min_episode_length is None else 0

    def clone(self) -> SlotGardenEnv:
        """An independent copy (same tables, state and generator position)."""
        twin = SlotGardenEnv(
            self.num_envs, self.slot_config, self.episode_length, self.seed, self.device, self.rent,
            self.table_seed, self.min_episode_length, self.final_observation,
        )
        twin.set_state(self.get_state())
        return twin

    # ------------------------------------------------------------- dynamics
    def _live(self) -> Tensor:
        return (self.stage >= SeedStage.GERMINATED) & (self.stage <= SeedStage.HOLDING)

    def _neighbour_values(self, values: Tensor, fill: float | int = 0) -> Tensor:
        """``values [E, N]`` of each slot's 4 neighbours, ``[E, N, 4]`` (``fill`` off-grid)."""
        padded = torch.cat([values, values.new_full((self.num_envs, 1), fill)], dim=1)
        return padded[:, self._neighbours]  # [E, N, 4]

    def _contribution(self) -> Tensor:
        """True contribution at alpha = 1 of every occupied slot, ``[E, N]`` (0 when empty)."""
        occupied = self.blueprint >= 0  # [E, N]
        bp = self.blueprint.clamp(min=0)  # [E, N]
        neighbour_bp = self._neighbour_values(self.blueprint, -1)  # [E, N, 4]
        pair = bp.unsqueeze(-1) * NUM_BLUEPRINTS + neighbour_bp.clamp(min=0)
        affinity = self.affinity.flatten()[pair] * (neighbour_bp >= 0)  # [E, N, 4]
        style = self.style_bonus.flatten()[bp * len(Style) + self.style]  # [E, N]
        total = self.quality + self._tempo_bonus[self.tempo] + style + affinity.sum(-1)
        return total * occupied

    def _host_score(self, contribution: Tensor) -> Tensor:
        live_value = self.alpha * contribution * self._live()
        fossil_value = self.locked_value * (self.stage == SeedStage.FOSSILIZED)
        return (live_value + fossil_value).sum(-1)  # [E]

    def _refresh_estimates(self, noise: Tensor) -> None:
        """Draw the observed contribution estimates from ``noise [E, N]`` (standard normal)."""
        std = ESTIMATE_NOISE_STD * torch.rsqrt(1.0 + self.age.float())
        estimate = self.contribution + noise * std
        estimate = torch.where(self.stage == SeedStage.FOSSILIZED, self.locked_contribution,
                               estimate)
        self.estimate = torch.where(self.blueprint >= 0, estimate, 0.0)

    # ---------------------------------------------------------------- masks
    def slot_by_op(self) -> Tensor:
        """Bool ``[E, 6, N]``: the slots valid for each op in the current state."""
        stage = self.stage
        ready = self.age >= self._tempo_steps[self.tempo]
        rows = [
            torch.ones_like(stage, dtype=torch.bool),  # WAIT: slot irrelevant
            stage == SeedStage.EMPTY,  # GERMINATE
            (stage == SeedStage.BLENDING) | (stage == SeedStage.HOLDING),  # SET_ALPHA_TARGET
            self._live(),  # PRUNE
            stage == SeedStage.HOLDING,  # FOSSILIZE
            (stage == SeedStage.TRAINING) & ready,  # ADVANCE
        ]
        return torch.stack(rows, dim=1)

    def masks(self, slot_by_op: Tensor | None = None) -> dict[str, Tensor]:
        """The per-head masks of the current state (see the module docstring)."""
        slot_by_op = self.slot_by_op() if slot_by_op is None else slot_by_op
        e, dev = self.num_envs, self.device
        masks = {
            name: torch.ones(e, size, dtype=torch.bool, device=dev)
            for name, size in self._head_sizes.items()
        }
        masks["slot"] = slot_by_op.any(dim=1)  # [E, N]
        masks["op"] = slot_by_op.any(dim=2)  # [E, 6]
        masks["blueprint"][:, BlueprintAction.NOOP] = False
        return masks

    def final_state(self, out: StepOutput) -> StepOutput:
        """``out`` as seen at the end of its step, before any auto-reset.

        For an environment whose episode ended at this step: that episode's last
        observation, blueprint indices, ``slot_by_op`` and masks (from ``info["final_*"]``,
        which ``final_observation=True`` reports); for the others, ``out``'s own (their rows
        of ``info["final_*"]`` hold the current state). Reward, ``done``, the return and
        ``info`` are ``out``'s. A step that ended no episode returns ``out`` itself.

        Example:
            >>> env = SlotGardenEnv(num_envs=2, episode_length=1, final_observation=True)
            >>> _ = env.reset()
            >>> out = env.step(torch.zeros(2, 8, dtype=torch.long))  # WAIT ends the episode
            >>> bool(out.obs[0, 0] == 0), bool(env.final_state(out).obs[0, 0] == 1)
            (True, True)
        """
        if "final_obs" not in out.info:
            if not self.final_observation:
                raise ValueError(
                    "final_state needs the environment built with final_observation=True"
                )
            return out
        slot_by_op = out.info["final_slot_by_op"]
        return replace(
            out,
            obs=out.info["final_obs"],
            blueprint_indices=out.info["final_blueprint_indices"],
            slot_by_op=slot_by_op,
            masks=self.masks(slot_by_op),  # the masks are a function of slot_by_op
        )

    def action_validity(self, actions: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Bool ``[E]``: is each environment's action valid in the current state.

        Checked directly from the state, rule by rule (independently of ``slot_by_op``):
        the op is in 0..5, the slot suits the op (ignored for WAIT), and every head relevant
        to the op is in range (blueprint also not NOOP). Irrelevant heads are ignored.
        """
        heads = self._split_actions(actions)
        return self._validity_and_reason(heads)[0]

    def _validity_and_reason(self, heads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Validity ``[E]`` and a reason code ``[E]``: 0 valid, 1 bad op, 2 bad slot, else
        3 + the position (in head order) of the first relevant head with a bad value."""
        op, slot = heads["op"], heads["slot"]
        op_ok = (op >= 0) & (op < NUM_OPS)
        op_clamped = op.clamp(0, NUM_OPS - 1)
        slot_clamped = slot.clamp(0, self.num_slots - 1).unsqueeze(-1)  # [E, 1]
        stage = self.stage.gather(1, slot_clamped).squeeze(-1)  # [E]
        age = self.age.gather(1, slot_clamped).squeeze(-1)
        ready = age >= self._tempo_steps[self.tempo.gather(1, slot_clamped).squeeze(-1)]
        # Which stages each op accepts, looked up as _op_accepts[op, stage]; ADVANCE also
        # needs the seed to have trained for its tempo's number of steps.
        stage_ok = self._op_accepts[op_clamped, stage] & ((op != Op.ADVANCE) | ready)
        slot_in_range = (slot >= 0) & (slot < self.num_slots)
        slot_ok = (op == Op.WAIT) | (slot_in_range & stage_ok)
        values = torch.stack([heads[name] for name in HEAD_NAMES], dim=-1)  # [E, 8]
        head_ok = (values >= self._head_low) & (values < self._head_high)  # [E, 8]
        bad_head = self._relevance[op_clamped] & ~head_ok  # [E, 8]
        first_bad = bad_head.to(torch.uint8).argmax(-1)  # [E]
        reason = torch.where(bad_head.any(-1), 3 + first_bad, 0)
        reason = torch.where(slot_ok, reason, 2)
        reason = torch.where(op_ok, reason, 1)
        return reason == 0, reason

    def _split_actions(self, actions: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
        e = self.num_envs
        if isinstance(actions, Tensor):
            if actions.shape != (e, len(HEAD_NAMES)) or actions.dtype != torch.long:
                raise ValueError(
                    f"actions has shape {describe_shape(actions)} and dtype {actions.dtype}, "
                    f"expected int64 [{e}, {len(HEAD_NAMES)}] in head order {list(HEAD_NAMES)}"
                )
            heads = {name: actions[:, k] for k, name in enumerate(HEAD_NAMES)}
        elif isinstance(actions, Mapping):
            if set(actions) != set(HEAD_NAMES):
                raise ValueError(
                    f"actions has keys {sorted(actions)}, expected exactly {list(HEAD_NAMES)}"
                )
            heads = dict(actions)
            for name, value in heads.items():
                if not isinstance(value, Tensor) or value.shape != (e,) or value.dtype != torch.long:
                    got = (
                        f"shape {describe_shape(value)} and dtype {value.dtype}"
                        if isinstance(value, Tensor) else type(value).__name__
                    )
                    raise ValueError(f"actions[{name!r}] has {got}, expected int64 [{e}]")
        else:
            raise ValueError(
                f"actions must be a dict of int64 [E] tensors or an int64 [E, 8] tensor, got "
                f"{type(actions).__name__}"
            )
        for name, value in heads.items():
            if value.device != self.device:
                raise ValueError(
                    f"actions[{name!r}] is on {value.device}, expected the env's device {self.device}"
                )
        return heads

    def _describe_invalid(self, heads: dict[str, Tensor], env: int, reason: int) -> str:
        values = {name: int(heads[name][env]) for name in HEAD_NAMES}
        op = values["op"]
        op_name = Op(op).name if 0 <= op < NUM_OPS else "?"
        described = ", ".join(f"{name}={value}" for name, value in values.items())
        slot = values["slot"]
        if reason == 1:
            why = f"op={op} is outside 0..{NUM_OPS - 1}"
        elif reason == 2:
            if 0 <= slot < self.num_slots:
                stage = SeedStage(int(self.stage[env, slot])).name
                age, tempo = int(self.age[env, slot]), int(self.tempo[env, slot])
                if op == Op.ADVANCE and stage == SeedStage.TRAINING.name:
                    stage += (
                        f" (age {age} < {TEMPO_TRAINING_STEPS[tempo]} steps of "
                        f"{Tempo(tempo).name} training)"
                    )
                why = (
                    f"slot {slot} ({self.slot_config.slot_ids[slot]}) is {stage}, which "
                    f"{op_name} does not accept; valid slots "
                    f"for {op_name}: {self.slot_by_op()[env, op].nonzero().flatten().tolist()}"
                )
            else:
                why = f"slot={slot} is outside 0..{self.num_slots - 1}"
        else:
            name = self.action_space.heads[reason - 3].name
            low = 1 if name == "blueprint" else 0
            why = (
                f"{name}={values[name]} is not a valid choice for {op_name} (expected "
                f"{low}..{self._head_sizes[name] - 1}"
                + (", NOOP 0 cannot be planted)" if name == "blueprint" else ")")
            )
        return f"invalid action for environment {env} (op {op_name}): {described}; {why}"

    # ------------------------------------------------------------------ api
    def reset(self) -> StepOutput:
        """Reset every environment to an empty grid at t = 0 (drawing new episode lengths with
        ``min_episode_length``) and return the first observation."""
        self._allocate_state()
        zeros = torch.zeros(self.num_envs, device=self.device)
        done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        empty = torch.zeros_like(self.contribution)
        info = {
            "host_score": zeros.clone(),
            "num_live": zeros.clone(),
            "contributions_before_reset": empty,
            "contributions": empty.clone(),
        }
        return self._output(zeros, done, torch.full_like(zeros, math.nan), info)

    def step(self, actions: Mapping[str, Tensor] | Tensor) -> StepOutput:
        """Apply one action per environment and advance every environment by one step.

        Args:
            actions: ``dict`` head name -> int64 ``[E]``, or int64 ``[E, 8]`` in head order
                slot, blueprint, style, tempo, alpha_target, alpha_speed, alpha_curve, op.

        Raises:
            ValueError: an action is invalid (naming the first such environment and its
                action). With ``slotformer.validation`` off the check is skipped (no host
                sync) and an invalid action is replaced by WAIT.
        """
        heads = self._split_actions(actions)
        valid, reason = self._validity_and_reason(heads)
        if validation_enabled() and not bool(valid.all()):
            env = int((~valid).nonzero()[0, 0])
            raise ValueError(
                "SlotGardenEnv.step: " + self._describe_invalid(heads, env, int(reason[env]))
            )
        op = torch.where(valid, heads["op"], int(Op.WAIT))  # [E]
        slot = heads["slot"].clamp(0, self.num_slots - 1)
        chosen = torch.nn.functional.one_hot(slot, self.num_slots).bool()  # [E, N]

        def at(target_op: Op) -> Tensor:
            return chosen & (op == target_op).unsqueeze(-1)  # [E, N]

        def col(name: str, num_choices: int) -> Tensor:
            return heads[name].clamp(0, num_choices - 1).unsqueeze(-1)  # [E, 1]

        contribution = self.contribution  # [E, N], before the action
        score_before = self.score

        # A fixed number of draws per step (a quality per environment, used only where a seed
        # is planted, and the estimate noise) keeps the generator stream independent of the
        # actions taken.
        draws = torch.randn(
            self.num_envs, 1 + self.num_slots, generator=self.generator, device=self.device
        )
        draw, noise = draws[:, :1], draws[:, 1:]  # [E, 1], [E, N]

        germinate = at(Op.GERMINATE)
        bp = col("blueprint", NUM_BLUEPRINTS)
        style = col("style", len(Style))
        self.blueprint = torch.where(germinate, bp, self.blueprint)
        self.stage = torch.where(germinate, int(SeedStage.GERMINATED), self.stage)
        self.style = torch.where(germinate, style, self.style)
        self.tempo = torch.where(germinate, col("tempo", len(Tempo)), self.tempo)
        self.curve = torch.where(germinate, self._style_curve[style], self.curve)
        self.alpha_target = torch.where(
            germinate, self._target_values[col("alpha_target", len(AlphaTarget))],
            self.alpha_target,
        )
        quality = self._bp_mean[bp] + self._bp_std[bp] * draw  # [E, 1]
        self.quality = torch.where(germinate, quality, self.quality)
        for name in ("age", "alpha", "alpha_start", "blend_steps", "blend_progress"):
            setattr(self, name, getattr(self, name).masked_fill(germinate, 0))

        retarget = at(Op.SET_ALPHA_TARGET)
        steps = self._speed_steps[col("alpha_speed", len(AlphaSpeed))]  # [E, 1]
        new_target = self._target_values[col("alpha_target", len(AlphaTarget))]
        instant = retarget & (steps == 0)
        self.style = torch.where(retarget, style, self.style)
        self.curve = torch.where(retarget, col("alpha_curve", len(AlphaCurve)), self.curve)
        self.alpha_target = torch.where(retarget, new_target, self.alpha_target)
        self.alpha_start = torch.where(retarget, self.alpha, self.alpha_start)
        self.blend_steps = torch.where(retarget, steps, self.blend_steps)
        self.blend_progress = self.blend_progress.masked_fill(retarget, 0.0)
        self.stage = torch.where(retarget, int(SeedStage.BLENDING), self.stage)
        self.alpha = torch.where(instant, self.alpha_target, self.alpha)
        self.blend_progress = self.blend_progress.masked_fill(instant, 1.0)
        self.stage = torch.where(instant, int(SeedStage.HOLDING), self.stage)

        advance = at(Op.ADVANCE)
        self.stage = torch.where(advance, int(SeedStage.BLENDING), self.stage)
        self.alpha_start = self.alpha_start.masked_fill(advance, 0.0)
        self.blend_steps = self.blend_steps.masked_fill(advance, float(ADVANCE_BLEND_STEPS))
        self.blend_progress = self.blend_progress.masked_fill(advance, 0.0)

        fossilize = at(Op.FOSSILIZE)
        self.stage = torch.where(fossilize, int(SeedStage.FOSSILIZED), self.stage)
        self.locked_contribution = torch.where(fossilize, contribution, self.locked_contribution)
        self.locked_value = torch.where(fossilize, self.alpha * contribution, self.locked_value)

        prune = at(Op.PRUNE)
        self.blueprint = self.blueprint.masked_fill(prune, -1)
        for name in ("stage", "style", "tempo", "curve", "age", "alpha", "alpha_start",
                     "alpha_target", "blend_steps", "blend_progress", "quality"):
            setattr(self, name, getattr(self, name).masked_fill(prune, 0))

        self._tick(~germinate)

        self.contribution = contribution = self._contribution()
        live_count = self._live().sum(-1).float()  # [E]
        score = self._host_score(contribution)
        rent = self.rent * live_count
        reward = score - score_before - rent  # [E]
        self.score = score
        self.t = self.t + 1
        self.running_return = self.running_return + reward
        self.last_reward = reward
        self.last_rent = rent
        self.last_op = op
        if self._staggered:
            # Each environment on its own clock: decided on the device, no host sync.
            episode_over = False
            done = self.t >= self.episode_lengths  # [E]
        else:
            # Every environment starts together and episodes have a fixed length, so they all
            # end together: a host-side counter decides, with no device sync and no reset work
            # on the other steps.
            self._episode_step += 1
            episode_over = self._episode_step >= self.episode_length
            done = torch.full((self.num_envs,), episode_over, dtype=torch.bool, device=self.device)
        episode_return = torch.where(done, self.running_return, math.nan)
        info = {
            "host_score": score,
            "num_live": live_count,
            "contributions_before_reset": self._true_contributions(),
        }
        if self.final_observation and (self._staggered or episode_over):
            # The finished episodes' last state, observed as it would be without the reset.
            # `_refresh_estimates` only reads `noise`, so calling it twice leaves the
            # generator's stream (and every trajectory) unchanged.
            self._refresh_estimates(noise)
            info["final_obs"] = self._observation()
            info["final_blueprint_indices"] = self.blueprint.clone()
            info["final_slot_by_op"] = self.slot_by_op()
        if self._staggered:
            self._reset_where(done)
        elif episode_over:
            self._allocate_state()
        self._refresh_estimates(noise)
        info["contributions"] = self._true_contributions()
        return self._output(reward, done, episode_return, info)

    def _true_contributions(self) -> Tensor:
        """What the observed estimates are noisy views of, ``[E, N]``: ``c`` for live seeds,
        the locked contribution for fossilized ones, 0 for empty slots."""
        return torch.where(
            self.stage == SeedStage.FOSSILIZED, self.locked_contribution, self.contribution
        )

    def _tick(self, ticking: Tensor) -> None:
        """Age every seed in ``ticking [E, N]`` by one step (stage changes, alpha moves)."""
        live = self._live() & ticking
        self.age = self.age + live.long()
        self.stage = torch.where(
            ticking & (self.stage == SeedStage.GERMINATED), int(SeedStage.TRAINING), self.stage
        )
        blending = ticking & (self.stage == SeedStage.BLENDING)
        progress = (self.blend_progress + 1.0 / self.blend_steps.clamp(min=1.0)).clamp(max=1.0)
        progress = torch.where(blending, progress, self.blend_progress)
        shaped = self._curve(progress, self.curve)
        alpha = self.alpha_start + (self.alpha_target - self.alpha_start) * shaped
        self.alpha = torch.where(blending, alpha, self.alpha)
        self.blend_progress = progress
        reached = blending & (progress >= 1.0)
        self.alpha = torch.where(reached, self.alpha_target, self.alpha)
        self.stage = torch.where(reached, int(SeedStage.HOLDING), self.stage)

    def _curve(self, progress: Tensor, curve: Tensor) -> Tensor:
        """Blend shape ``f(progress)`` per AlphaCurve, with f(0) = 0 and f(1) = 1."""
        steepness = self._curve_steepness[curve]
        sigmoid = (torch.sigmoid(steepness * (progress - 0.5)) - self._curve_low[curve])
        sigmoid = sigmoid / self._curve_span[curve]
        cosine = 0.5 - 0.5 * torch.cos(math.pi * progress)
        shaped = torch.where(curve == AlphaCurve.COSINE, cosine, sigmoid)
        return torch.where(curve == AlphaCurve.LINEAR, progress, shaped)

    # ---------------------------------------------------------- observation
    def _output(
        self, reward: Tensor, done: Tensor, episode_return: Tensor, info: dict[str, Tensor]
    ) -> StepOutput:
        slot_by_op = self.slot_by_op()
        return StepOutput(
            obs=self._observation(),
            blueprint_indices=self.blueprint.clone(),
            masks=self.masks(slot_by_op),
            slot_by_op=slot_by_op,
            reward=reward.float(),
            done=done,
            episode_return=episode_return.float(),
            info=info,
        )

    def _observation(self) -> Tensor:
        e, n = self.num_envs, self.num_slots
        occupied = self.blueprint >= 0  # [E, N]
        live = self._live()
        fossil = self.stage == SeedStage.FOSSILIZED
        stage_one_hot = self._eye[NUM_STAGES][self.stage]  # [E, N, 6]
        stage_fraction = stage_one_hot.mean(1)  # [E, 6]
        progress = self.t.float() / self.episode_lengths  # [E], this episode's length
        live_count = live.sum(-1)
        mean_estimate = (self.estimate * live).sum(-1) / live_count.clamp(min=1)
        last_op = self._eye[NUM_OPS][self.last_op.clamp(min=0)]
        last_op = last_op * (self.last_op >= 0).unsqueeze(-1)  # [E, 6]
        base = torch.cat([
            torch.stack([
                progress,
                1.0 - progress,
                self.score / n,
                live.float().mean(-1),
                stage_fraction[:, SeedStage.EMPTY],
                stage_fraction[:, SeedStage.FOSSILIZED],
            ], dim=-1),
            stage_fraction[:, SeedStage.GERMINATED : SeedStage.HOLDING + 1],
            torch.stack([
                self.last_reward,
                torch.full_like(progress, self.rent * 100.0),
                self.last_rent,
                self.running_return / n,
            ], dim=-1),
            last_op,
            torch.stack([
                mean_estimate,
                (self.locked_value * fossil).sum(-1) / n,
                torch.full_like(progress, n / MAX_SLOTS),
            ], dim=-1),
        ], dim=-1)  # [E, 23]

        occupied_f = occupied.float()
        age = self.age.float()
        confidence = torch.where(fossil, 1.0, 1.0 - torch.rsqrt(1.0 + age)) * occupied_f
        training = (age / self._tempo_steps[self.tempo]).clamp(max=1.0)
        training = torch.where(self.stage >= SeedStage.BLENDING, 1.0, training) * occupied_f
        blend = torch.where(self.stage >= SeedStage.HOLDING, 1.0, self.blend_progress)
        # One gather for every neighbour statistic: [E, N, 4 neighbours, 4 statistics].
        per_slot = torch.stack([occupied_f, self.estimate, live.float(), fossil.float()], -1)
        padded = torch.cat([per_slot, per_slot.new_zeros(e, 1, 4)], dim=1)
        around = padded[:, self._neighbours]  # [E, N, 4, 4]
        neighbour_count = around[..., 0].sum(-1).clamp(min=1.0)
        neighbour_estimate = around[..., 1].sum(-1) / neighbour_count  # [E, N]
        neighbour_live, neighbour_fossil = around[..., 2].mean(-1), around[..., 3].mean(-1)
        occupied_col = occupied_f.unsqueeze(-1)  # [E, N, 1]
        slots = torch.cat([
            occupied_col,
            stage_one_hot,
            torch.stack([
                self.alpha,
                self.alpha_target,
                self.estimate,
                confidence,
                age / self.episode_length,
                training,
                blend * occupied_f,
                neighbour_estimate,
                neighbour_live,
                neighbour_fossil,
                self._row_feature.expand(e, n),
                self._col_feature.expand(e, n),
            ], dim=-1),
            self._eye[len(Style)][self.style] * occupied_col,
            self._eye[len(Tempo)][self.tempo] * occupied_col,
            self._eye[len(AlphaCurve)][self.curve] * occupied_col,
        ], dim=-1)  # [E, N, 31]
        return torch.cat([base, slots.flatten(1)], dim=-1)
