"""Pick-an-entity: a small vectorised environment with its own factored action space.

Not seed management: ``E`` foragers each look at ``N`` slots on a grid. A slot is empty or
holds one **entity** of a type (``EntityType``: berry, fish, ore, crab) with a value in
[0, 1]. At most one entity at a time is **valuable** (value >= 0.6); the others are junk
(value < 0.4). Each step the agent takes one factored action ``(op, slot, tool)``:

==========  ==========================================================  ===============
op          effect                                                      reward
==========  ==========================================================  ===============
PASS 0      nothing                                                     0
COLLECT 1   removes the entity at ``slot``; ``tool`` matters            see below
CLEAR 2     removes the entity at ``slot`` (makes room for new ones)    0
==========  ==========================================================  ===============

COLLECT pays ``REWARD_RIGHT_TOOL`` (1.0) for the valuable entity with the tool its type needs
(``TOOL_FOR_TYPE``), ``REWARD_WRONG_TOOL`` (0.2) for the valuable entity with another tool,
and ``REWARD_JUNK`` (-0.25) for a junk entity. So the return depends on choosing the right
op, the right slot and the right tool together: the slot from the value feature, the tool
from the entity's type, which is not a feature but the ``blueprint_indices`` the network
embeds.

Action heads (`action_space`, in this order): ``slot`` (N, the pointer; relevant for COLLECT
and CLEAR, canonical = first valid slot), ``tool`` (3; relevant for COLLECT only, canonical
``Tool.HAND``), ``op`` (3).

Masks (bool, True = valid): ``op`` allows COLLECT and CLEAR only when some slot holds an
entity (PASS is always valid); ``slot`` allows the occupied slots only (all False on an empty
grid, where only PASS is valid and the pointer is canonicalised); ``tool`` is all True.

Dynamics of one ``step``: the action is applied; every entity ages by one; then, if no
valuable entity is left, one appears with probability ``P_VALUABLE`` in a uniformly random
empty slot; then each still-empty slot gets a junk entity with probability ``P_JUNK``. A grid
full of junk gets no valuable entity, so CLEAR has a purpose. Episodes last
``episode_length`` steps; all environments start together, so they end together, and the
step that ends an episode resets them and returns the new episode's first observation with
``done`` True and the finished ``episode_return`` (NaN elsewhere).

Observation ``[E, BASE_DIM + N * SLOT_DIM]`` float32, the slotformer flat layout with
``base_dim = 4`` and ``slot_dim = 4``:

* base: episode progress ``t / T``, ``1 - t / T``, fraction of occupied slots, last reward;
* slot ``k`` at ``4 + 4 k``: occupied flag, value, age / T, a N(0, 1) distractor redrawn
  every step (carries no information);
* ``blueprint_indices [E, N]`` int64: the entity type 0..3, -1 for an empty slot.

Reference scores (mean return, ``PickEntityEnv(64, seed=s)``: 2x3 grid, T = 12, 4 episodes;
seeds 0/1/2): uniformly random valid play -0.33/-0.31/-0.30, `scripted_policy` (the optimum
the reward is built around) +7.62/+7.69/+7.70, always PASS exactly 0.

Everything random comes from one ``torch.Generator`` seeded at construction, with a fixed
number of draws per step (independent of the actions), so a seed fixes the whole stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from slotformer import SlotConfig
from slotformer.actions import ActionSpace, HeadSpec


class Op(IntEnum):
    """The op head's choices."""

    PASS = 0
    COLLECT = 1
    CLEAR = 2


class Tool(IntEnum):
    """The tool head's choices (relevant for COLLECT only)."""

    HAND = 0
    NET = 1
    PICK = 2


class EntityType(IntEnum):
    """Entity types, passed to the network as ``blueprint_indices`` (-1 = empty slot)."""

    BERRY = 0
    FISH = 1
    ORE = 2
    CRAB = 3


TOOL_FOR_TYPE: tuple[Tool, ...] = (Tool.HAND, Tool.NET, Tool.PICK, Tool.NET)
"""The tool each ``EntityType`` needs to be collected whole."""

NUM_TYPES, NUM_TOOLS, NUM_OPS = len(EntityType), len(Tool), len(Op)
BASE_DIM, SLOT_DIM = 4, 4
BASE_PROGRESS, BASE_REMAINING, BASE_OCCUPANCY, BASE_LAST_REWARD = range(BASE_DIM)
SLOT_OCCUPIED, SLOT_VALUE, SLOT_AGE, SLOT_DISTRACTOR = range(SLOT_DIM)

REWARD_RIGHT_TOOL, REWARD_WRONG_TOOL, REWARD_JUNK = 1.0, 0.2, -0.25
VALUABLE_THRESHOLD = 0.6  # valuable entities have value in [0.6, 1.0), junk in [0, 0.4)
P_VALUABLE, P_JUNK, P_JUNK_AT_RESET = 0.6, 0.25, 0.4


def action_space(num_slots: int) -> ActionSpace:
    """The environment's factored action space: ``slot`` (pointer, N), ``tool`` (3), ``op`` (3).

    Example:
        >>> space = action_space(6)
        >>> space.head_names, space.sizes["slot"], space.num_ops
        (('slot', 'tool', 'op'), 6, 3)
    """
    return ActionSpace(
        heads=(
            # The pointer's name must be "slot" for SlotTransformerActorCritic (it builds its
            # pointer module as `slot_head`); FactoredRecurrentActorCritic takes any name.
            HeadSpec("slot", num_slots, frozenset({Op.COLLECT, Op.CLEAR}), None),
            HeadSpec("tool", NUM_TOOLS, frozenset({Op.COLLECT}), Tool.HAND),
            HeadSpec("op", NUM_OPS),
        ),
        op_head="op",
        pointer_head="slot",
    )


@dataclass(frozen=True)
class StepOutput:
    """What ``reset`` and ``step`` return (E environments, N slots).

    Attributes:
        obs: float32 ``[E, 4 + 4 N]``.
        blueprint_indices: int64 ``[E, N]``: entity type 0..3, -1 = empty slot.
        masks: bool masks keyed by ``action_space(N).head_names``: ``slot [E, N]``,
            ``tool [E, 3]``, ``op [E, 3]``; True = valid.
        reward: float32 ``[E]`` (0 after ``reset``).
        done: bool ``[E]`` (all True or all False: the environments share one clock).
        episode_return: float32 ``[E]``: the finished episode's return where ``done``, else NaN.
        valuable: bool ``[E, N]``: where the valuable entity is (for scripted policies and
            tests; the observation shows it through the value feature).
    """

    obs: Tensor
    blueprint_indices: Tensor
    masks: dict[str, Tensor]
    reward: Tensor
    done: Tensor
    episode_return: Tensor
    valuable: Tensor


class PickEntityEnv:
    """``num_envs`` pick-an-entity environments stepped together as ``[E, ...]`` tensors.

    Args:
        num_envs: E.
        slot_config: the grid (default 2x3, N = 6).
        episode_length: steps per episode (T).
        seed: seeds the environment's own ``torch.Generator``.
        device: where the state lives.

    Example:
        >>> env = PickEntityEnv(num_envs=2, seed=0)
        >>> out = env.reset()
        >>> tuple(out.obs.shape), tuple(out.blueprint_indices.shape), out.masks["op"].shape[-1]
        ((2, 28), (2, 6), 3)
    """

    def __init__(
        self,
        num_envs: int,
        slot_config: SlotConfig | None = None,
        episode_length: int = 12,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_envs < 1 or episode_length < 1:
            raise ValueError(f"num_envs and episode_length must be >= 1, got {num_envs}, {episode_length}")
        self.slot_config = slot_config if slot_config is not None else SlotConfig.for_grid(2, 3)
        self.num_envs, self.num_slots = num_envs, self.slot_config.num_slots
        self.episode_length = episode_length
        self.device = torch.device(device)
        self.action_space = action_space(self.num_slots)
        self.state_dim = BASE_DIM + self.num_slots * SLOT_DIM
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._tool_for_type = torch.tensor([int(t) for t in TOOL_FOR_TYPE], device=self.device)
        self._allocate()

    # ------------------------------------------------------------------ state
    def _allocate(self) -> None:
        E, N = self.num_envs, self.num_slots
        self.entity_type = torch.full((E, N), -1, dtype=torch.long, device=self.device)
        self.value = torch.zeros(E, N, device=self.device)
        self.age = torch.zeros(E, N, device=self.device)
        self.t = 0
        self.running_return = torch.zeros(E, device=self.device)
        self.last_reward = torch.zeros(E, device=self.device)
        # The first observation of an episode: a valuable entity somewhere, junk around it.
        self._spawn(p_valuable=1.0, p_junk=P_JUNK_AT_RESET)

    def _spawn(self, p_valuable: float, p_junk: float) -> None:
        """At most one valuable entity (only if none is left), then junk in empty slots."""
        E, N = self.num_envs, self.num_slots
        u = torch.rand(E, 4 * N + 3, generator=self.generator, device=self.device)
        junk_draw, junk_type, junk_value, where = u[:, :N], u[:, N:2 * N], u[:, 2 * N:3 * N], u[:, 3 * N:4 * N]
        valuable_draw, valuable_type, valuable_value = u[:, 4 * N], u[:, 4 * N + 1], u[:, 4 * N + 2]
        self.distractor = torch.randn(E, N, generator=self.generator, device=self.device)

        empty = self.entity_type < 0
        needs_valuable = ~self.valuable().any(-1) & empty.any(-1) & (valuable_draw < p_valuable)
        # A uniformly random empty slot: the largest random score among the empty ones.
        slot = torch.where(empty, where, -1.0).argmax(-1)  # [E]
        place = torch.nn.functional.one_hot(slot, N).bool() & needs_valuable.unsqueeze(-1)
        new_type = (valuable_type * NUM_TYPES).long().clamp(max=NUM_TYPES - 1).unsqueeze(-1)
        new_value = (VALUABLE_THRESHOLD + (1 - VALUABLE_THRESHOLD) * valuable_value).unsqueeze(-1)
        self._place(place, new_type.expand(E, N), new_value.expand(E, N))

        junk = (self.entity_type < 0) & (junk_draw < p_junk)
        self._place(junk, (junk_type * NUM_TYPES).long().clamp(max=NUM_TYPES - 1), 0.4 * junk_value)

    def _place(self, where: Tensor, entity_type: Tensor, value: Tensor) -> None:
        self.entity_type = torch.where(where, entity_type, self.entity_type)
        self.value = torch.where(where, value, self.value)
        self.age = self.age.masked_fill(where, 0.0)

    def valuable(self) -> Tensor:
        """Bool ``[E, N]``: the slot holding the valuable entity (at most one per row)."""
        return (self.entity_type >= 0) & (self.value >= VALUABLE_THRESHOLD)

    # ------------------------------------------------------------------ API
    def reset(self) -> StepOutput:
        """Start a new episode in every environment (the generator is not reseeded)."""
        self._allocate()
        return self.observe()

    def observe(self) -> StepOutput:
        """The current state's output without stepping (reward 0, ``done`` False): for a
        caller that edited the state, e.g. a test emptying some grids."""
        zeros = torch.zeros(self.num_envs, device=self.device)
        done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._output(zeros, done, torch.full_like(zeros, float("nan")))

    def masks(self) -> dict[str, Tensor]:
        """The valid actions for the current state (see the module docstring)."""
        occupied = self.entity_type >= 0  # [E, N]
        any_entity = occupied.any(-1, keepdim=True)  # [E, 1]
        op = torch.cat([torch.ones_like(any_entity), any_entity, any_entity], dim=-1)  # [E, 3]
        tool = torch.ones(self.num_envs, NUM_TOOLS, dtype=torch.bool, device=self.device)
        return {"slot": occupied.clone(), "tool": tool, "op": op}

    def action_validity(self, actions: dict[str, Tensor]) -> Tensor:
        """Bool ``[E]``: is each environment's action valid under the current masks."""
        masks = self.masks()
        op, slot, tool = actions["op"], actions["slot"], actions["tool"]
        valid = masks["op"].gather(-1, op.unsqueeze(-1)).squeeze(-1)
        uses_slot = (op == Op.COLLECT) | (op == Op.CLEAR)
        slot_ok = masks["slot"].gather(-1, slot.clamp(0, self.num_slots - 1).unsqueeze(-1)).squeeze(-1)
        slot_ok = slot_ok & (slot >= 0) & (slot < self.num_slots)
        tool_ok = (tool >= 0) & (tool < NUM_TOOLS)
        return valid & (~uses_slot | slot_ok) & tool_ok

    def step(self, actions: dict[str, Tensor]) -> StepOutput:
        """Apply one action per environment: ``actions`` maps ``op``, ``slot``, ``tool`` to
        int64 ``[E]``. An invalid action (see `masks`) is an error."""
        valid = self.action_validity(actions)
        if not bool(valid.all()):
            bad = int((~valid).nonzero()[0, 0])
            raise ValueError(
                f"invalid action in environment {bad}: "
                f"{ {k: int(v[bad]) for k, v in actions.items()} } under masks "
                f"{ {k: m[bad].tolist() for k, m in self.masks().items()} }"
            )
        op, slot, tool = actions["op"], actions["slot"], actions["tool"]
        chosen = torch.nn.functional.one_hot(slot, self.num_slots).bool()  # [E, N]
        collect = op == Op.COLLECT
        hit_type = self.entity_type.gather(-1, slot.unsqueeze(-1)).squeeze(-1).clamp(min=0)
        hit_valuable = self.valuable().gather(-1, slot.unsqueeze(-1)).squeeze(-1)
        right_tool = tool == self._tool_for_type[hit_type]
        reward = torch.where(
            hit_valuable,
            torch.where(right_tool, REWARD_RIGHT_TOOL, REWARD_WRONG_TOOL),
            REWARD_JUNK,
        )
        reward = torch.where(collect, reward, 0.0)
        removed = chosen & (collect | (op == Op.CLEAR)).unsqueeze(-1)
        self.entity_type = self.entity_type.masked_fill(removed, -1)
        self.value = self.value.masked_fill(removed, 0.0)
        self.age = self.age.masked_fill(removed, 0.0)
        self.age = self.age + (self.entity_type >= 0).float()
        self.t += 1
        self.running_return = self.running_return + reward
        self.last_reward = reward
        done_now = self.t >= self.episode_length
        done = torch.full((self.num_envs,), done_now, dtype=torch.bool, device=self.device)
        episode_return = torch.where(done, self.running_return, float("nan"))
        if done_now:
            self._allocate()
        else:
            self._spawn(p_valuable=P_VALUABLE, p_junk=P_JUNK)
        return self._output(reward, done, episode_return)

    def _output(self, reward: Tensor, done: Tensor, episode_return: Tensor) -> StepOutput:
        E = self.num_envs
        occupied = (self.entity_type >= 0).float()
        progress = torch.full((E,), self.t / self.episode_length, device=self.device)
        base = torch.stack(
            [progress, 1.0 - progress, occupied.mean(-1), self.last_reward], dim=-1
        )  # [E, 4]
        slots = torch.stack(
            [occupied, self.value, self.age / self.episode_length, self.distractor], dim=-1
        )  # [E, N, 4]
        return StepOutput(
            obs=torch.cat([base, slots.flatten(1)], dim=-1),
            blueprint_indices=self.entity_type.clone(),
            masks=self.masks(),
            reward=reward.float(),
            done=done,
            episode_return=episode_return.float(),
            valuable=self.valuable(),
        )
