"""Slot Garden's per-environment state: the tensors an episode starts from, fresh episodes
for all or some environments, and snapshots (``get_state`` / ``set_state``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor

from slotformer.validation import expect


class GardenState:
    """The state tensors (``[E, N]`` per slot, ``[E]`` per environment) and their lifecycle;
    the base of :class:`~slotformer.envs.dynamics.SlotGardenEnv`, which sets the rest."""

    num_envs: int
    num_slots: int
    episode_length: int
    min_episode_length: int | None
    device: torch.device
    generator: torch.Generator
    _episode_step: int  # host-side copy of t (equal lengths: one shared clock)
    _contribution: Callable[[], Tensor]  # true contribution at alpha = 1, [E, N]

    # Every per-environment state tensor: name -> (per slot, dtype (None: the default float),
    # value in a fresh episode); the one table `_allocate_state` and `_reset_where` start
    # episodes from. `contribution` is derived, cached: each step needs it before and after.
    _FRESH_STATE: ClassVar[dict[str, tuple[bool, torch.dtype | None, int | float]]] = {
        "blueprint": (True, torch.long, -1),
        **dict.fromkeys(("stage", "style", "tempo", "curve", "age"), (True, torch.long, 0)),
        **dict.fromkeys(
            ("alpha", "alpha_start", "alpha_target", "blend_steps", "blend_progress", "quality",
             "locked_contribution", "locked_value", "estimate", "contribution"),
            (True, None, 0.0),
        ),
        "t": (False, torch.long, 0),
        **dict.fromkeys(("score", "running_return", "last_reward", "last_rent"),
                        (False, None, 0.0)),
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
        """A fresh episode (empty grid, t = 0, a new length if drawn) in every environment."""
        for name, (per_slot, dtype, fill) in self._FRESH_STATE.items():
            shape = (self.num_envs, self.num_slots) if per_slot else (self.num_envs,)
            setattr(self, name, torch.full(shape, fill, dtype=dtype, device=self.device))
        self.episode_lengths = self._draw_episode_lengths()
        self._episode_step = 0

    def _reset_where(self, done: Tensor) -> None:
        """A fresh episode where ``done [E]``, with no host sync (updates under the mask)."""
        for name, (per_slot, _, fill) in self._FRESH_STATE.items():
            mask = done.unsqueeze(-1) if per_slot else done
            setattr(self, name, getattr(self, name).masked_fill(mask, fill))
        self.episode_lengths = torch.where(done, self._draw_episode_lengths(), self.episode_lengths)

    def _snapshot(self) -> dict[str, Tensor]:
        """The state tensors, uncopied: every update replaces a state tensor, none writes in one."""
        return {name: getattr(self, name) for name in self._FRESH_STATE}

    def _restore_where(self, mask: Tensor, snapshot: Mapping[str, Tensor]) -> None:
        """Put the environments where ``mask [E]`` back to ``snapshot``; the others keep theirs."""
        for name, before in snapshot.items():
            where = mask.unsqueeze(-1) if before.dim() == 2 else mask
            setattr(self, name, torch.where(where, before, getattr(self, name)))

    def _draw_episode_lengths(self) -> Tensor:
        """int64 ``[E]``: ``episode_length``, or one draw per environment (E draws each time, used
        or not, so the generator's stream does not depend on which environments finished)."""
        if self.min_episode_length is None:
            return torch.full(
                (self.num_envs,), self.episode_length, dtype=torch.long, device=self.device
            )
        return torch.randint(
            self.min_episode_length, self.episode_length + 1, (self.num_envs,),
            generator=self.generator, device=self.device,
        )

    # What get_state / set_state carry: `contribution` is derived, episode_lengths drawn.
    _STATE_NAMES = (*(name for name in _FRESH_STATE if name != "contribution"), "episode_lengths")

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
            value = expect(f"state[{name!r}]", state[name], dtype=current.dtype,
                           shape=current.shape)
            values[name] = value.clone().to(self.device)
        t, lengths = values["t"], values["episode_lengths"]
        low = self.episode_length if self.min_episode_length is None else self.min_episode_length
        steps = t.unique()
        for name, ok, expected, got in (
            ("episode_lengths", ((lengths >= low) & (lengths <= self.episode_length)).all(),
             f"in {low}..{self.episode_length}", lengths),
            ("t", ((t >= 0) & (t < lengths)).all(),
             f"in 0..episode_lengths - 1 ({lengths.tolist()})", t),
            ("t", self.min_episode_length is not None or steps.numel() == 1,
             "the same in every environment", steps),
        ):
            if not bool(ok):
                raise ValueError(f"state[{name!r}] must be {expected}, got {got.tolist()}")
        for name, value in values.items():
            setattr(self, name, value)
        self.generator.set_state(state["generator"])
        self.contribution = self._contribution()
        self._episode_step = int(steps[0]) if self.min_episode_length is None else 0
