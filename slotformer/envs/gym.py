"""Slot Garden as a gymnasium environment: a single environment and a native vector one.

Needs the ``gym`` extra (``pip install "slotformer[gym]"``). Importing :mod:`slotformer.envs`
registers both under :data:`~slotformer.envs.GYM_ENV_ID`. A process that never imports
slotformer (a Ray worker, a subprocess) puts the module in front of the id so that gymnasium
imports it first (gymnasium 1.x reads no plugin entry points)::

    import gymnasium as gym
    env = gym.make("slotformer.envs:slotformer/SlotGarden-v0", rows=1, cols=3)
    envs = gym.make_vec("slotformer.envs:slotformer/SlotGarden-v0", num_envs=16,
                        vectorization_mode="vector_entry_point")

Both step a :class:`~slotformer.envs.SlotGardenEnv` on the CPU and return numpy arrays.
Spaces (``N`` slots, ``D = 23 + 31 N``; the vector environment adds a leading ``E``):

* observation, a ``Dict``: ``"obs"``, ``Box`` float32 ``[D]``; ``"blueprint_indices"``,
  ``Box`` int64 ``[N]`` in ``-1 .. 12`` (-1 = empty slot); ``"action_mask"``, ``MultiBinary``
  ``[sum of head sizes]`` (int8, 1 = valid): the head masks concatenated in head order, the
  flat mask sb3-contrib's ``MaskablePPO`` expects (also ``action_masks()``); ``"slot_by_op"``,
  ``MultiBinary`` ``[6, N]`` (int8): the slots valid for each op.
* action: ``MultiDiscrete([N, 13, 4, 3, 3, 4, 5, 6])`` in head order (slot, blueprint, style,
  tempo, alpha_target, alpha_speed, alpha_curve, op).

A ``MultiDiscrete`` policy with independent per-head masks (``MaskablePPO``) can pair an op
with a slot invalid for it (its slot mask is the union over ops): ``invalid_action="wait"``
(the default) turns such an action into WAIT (``info["invalid_action"]`` True), ``"raise"``
raises ``ValueError``. The time left is in the observation, so an episode's end is
``terminated``, never ``truncated``. ``table_seed`` fixes the world (the affinity and style
tables); ``reset(seed=...)`` reseeds the trajectories only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.envs.dynamics import SlotGardenEnv
from slotformer.envs.observation import StepOutput
from slotformer.envs.rules import DEFAULT_RENT, MAX_SLOTS
from slotformer.presets.seed_lifecycle import HEAD_NAMES, NUM_BLUEPRINTS, NUM_OPS, Op
from slotformer.validation import check_positive_int

__all__ = [
    "AUTORESET_MODES", "SlotGardenGymEnv", "SlotGardenVectorEnv", "register_envs",
    "split_action_mask",
]

InvalidAction = Literal["wait", "raise"]
_Obs = dict[str, np.ndarray]
_Info = dict[str, Any]
_OP_COLUMN = HEAD_NAMES.index("op")
_NO_STATE = "action_masks() needs a current state: call reset() first"
# The autoreset modes SlotGardenVectorEnv supports (the first is its default).
AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)


def _flat_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head masks concatenated in head order, ``[E, sum of sizes]`` bool."""
    return torch.cat([masks[name] for name in HEAD_NAMES], dim=-1)


def split_action_mask(
    action_mask: torch.Tensor, head_sizes: Mapping[str, int] | None = None, num_slots: int = 3
) -> dict[str, torch.Tensor]:
    """Split a flat ``action_mask [..., S]`` (nonzero = valid; ``S`` the sum of ``head_sizes``,
    head name -> size in head order, by default Slot Garden's for ``num_slots``) into
    slotformer's per-head bool masks ``[..., n]`` for ``get_action(masks=...)``.

    Example:
        >>> mask = torch.ones(2, 3 + 13 + 4 + 3 + 3 + 4 + 5 + 6)
        >>> {k: tuple(v.shape) for k, v in split_action_mask(mask).items()}["op"]
        (2, 6)
    """
    head_sizes = ActionSpace.default(num_slots).sizes if head_sizes is None else head_sizes
    total = sum(head_sizes.values())
    if action_mask.shape[-1] != total:
        raise ValueError(f"action_mask has {action_mask.shape[-1]} columns (shape "
                         f"{tuple(action_mask.shape)}), expected the sum of the head sizes "
                         f"{total} ({dict(head_sizes)})")
    parts = torch.split(action_mask.bool(), list(head_sizes.values()), dim=-1)
    return dict(zip(head_sizes, parts))


def _numpy_observation(out: StepOutput, index: slice | int = slice(None)) -> _Obs:
    return {
        "obs": out.obs[index].numpy(),
        "blueprint_indices": out.blueprint_indices[index].numpy(),
        "action_mask": _flat_mask(out.masks)[index].numpy().astype(np.int8),
        "slot_by_op": out.slot_by_op[index].numpy().astype(np.int8),
    }


class _GardenWrapper:
    """What both wrappers share: arguments, the torch environment, seeding, the current state."""

    metadata: dict[str, Any]
    _garden: SlotGardenEnv
    _last: StepOutput | None  # the state behind the last observation returned (None: reset)

    def _setup(
        self, num_envs: int, rows: int, cols: int, invalid_action: str, render_mode: str | None,
        **garden_kwargs: Any,
    ) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
        """Build the torch environment; return one environment's observation and action space."""
        for name, value, choices in (
            ("render_mode", render_mode, (None, *self.metadata["render_modes"])),
            ("invalid_action", invalid_action, ("wait", "raise")),
        ):
            if value not in choices:
                expected = " or ".join(repr(choice) for choice in choices)
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if check_positive_int("rows", rows) * check_positive_int("cols", cols) > MAX_SLOTS:
            raise ValueError(
                f"rows x cols = {rows} x {cols} = {rows * cols} slots, expected at most {MAX_SLOTS}"
            )
        self.render_mode = render_mode
        self.invalid_action: InvalidAction = invalid_action  # type: ignore[assignment]
        self._garden = garden = SlotGardenEnv(
            num_envs, SlotConfig.for_grid(rows, cols), final_observation=True, **garden_kwargs
        )
        self._last = None
        sizes = [garden.action_space.sizes[name] for name in HEAD_NAMES]
        observation = spaces.Dict({
            "obs": spaces.Box(-np.inf, np.inf, (garden.observation_layout.state_dim,), np.float32),
            "blueprint_indices": spaces.Box(-1, NUM_BLUEPRINTS - 1, (garden.num_slots,), np.int64),
            "action_mask": spaces.MultiBinary(sum(sizes)),
            "slot_by_op": spaces.MultiBinary([NUM_OPS, garden.num_slots]),
        })
        return observation, spaces.MultiDiscrete(np.array(sizes, dtype=np.int64))

    @property
    def garden(self) -> SlotGardenEnv:
        """The underlying batched torch environment."""
        return self._garden

    def _reset_garden(self, seed: int | None) -> StepOutput:
        if seed is not None:
            self._garden.generator.manual_seed(seed)
        self._last = self._garden.reset()
        return self._last

    def _actions(
        self, action: Any, ignored: np.ndarray | None = None
    ) -> tuple[torch.Tensor, np.ndarray]:
        """A ``MultiDiscrete`` action (one env: ``[8]``; vector: ``[E, 8]``) as int64 ``[E, 8]``
        with invalid ones turned into WAIT (or a ``ValueError``), and the invalid flags ``[E]``;
        the actions of the ``ignored [E]`` environments count as valid."""
        e, k = self._garden.num_envs, len(HEAD_NAMES)
        array = np.asarray(action)
        if array.shape == (k,) and e == 1:
            array = array[None]
        if array.shape != (e, k) or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"action must be integers of shape {(e, k) if e > 1 else (k,)} (heads "
                             f"{', '.join(HEAD_NAMES)}), got shape {array.shape} and dtype "
                             f"{array.dtype}")
        actions = torch.as_tensor(array, dtype=torch.long)
        invalid = (~self._garden.action_validity(actions)).numpy()
        if ignored is not None:
            invalid &= ~ignored
        if invalid.any():
            if self.invalid_action == "raise":
                env = int(np.flatnonzero(invalid)[0])
                raise ValueError(f"invalid action {actions[env].tolist()} for environment {env} "
                                 f"(heads {', '.join(HEAD_NAMES)}); pass invalid_action='wait' to "
                                 "turn invalid actions into WAIT")
            actions = actions.clone()
            actions[torch.as_tensor(invalid), _OP_COLUMN] = int(Op.WAIT)
        return actions, invalid

    def _current(self, error: str) -> StepOutput:
        """The state behind the last observation returned, or ``RuntimeError(error)``."""
        if self._last is None:
            raise RuntimeError(error)
        return self._last


class SlotGardenGymEnv(_GardenWrapper, gym.Env[_Obs, np.ndarray]):
    """One Slot Garden environment behind gymnasium's ``Env`` API.

    ``rows * cols`` slots (at most 64), ``episode_length`` and ``rent`` as
    :class:`~slotformer.envs.SlotGardenEnv`'s; ``table_seed`` fixes the world for every
    reset; ``invalid_action`` is ``"wait"`` or ``"raise"``; ``render_mode`` None or ``"ansi"``.

    Example:
        >>> env = SlotGardenGymEnv(rows=1, cols=3, episode_length=8)
        >>> obs, info = env.reset(seed=0)
        >>> obs["obs"].shape, env.action_space.nvec.tolist()
        ((116,), [3, 13, 4, 3, 3, 4, 5, 6])
        >>> obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        >>> bool(terminated), bool(truncated)
        (False, False)
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(
        self, rows: int = 1, cols: int = 3, episode_length: int = 48, rent: float = DEFAULT_RENT,
        table_seed: int = 0, invalid_action: InvalidAction = "wait", render_mode: str | None = None,
    ) -> None:
        observation_space, self.action_space = self._setup(
            1, rows, cols, invalid_action, render_mode, episode_length=episode_length, rent=rent,
            table_seed=table_seed,
        )
        self.observation_space = observation_space  # type: ignore[assignment, unused-ignore]  # gymnasium 1.2 (ray) vs 1.4 stubs

    def reset(self, *, seed: int | None = None, options: _Info | None = None) -> tuple[_Obs, _Info]:
        super().reset(seed=seed)
        return _numpy_observation(self._reset_garden(seed), 0), {}

    def step(self, action: np.ndarray) -> tuple[_Obs, float, bool, bool, _Info]:
        self._current("SlotGardenGymEnv.step called before reset()")
        actions, invalid = self._actions(action)
        out = self._last = self._garden.step(actions)
        terminated = bool(out.done[0])
        info: _Info = {"invalid_action": bool(invalid[0]),
                       "host_score": float(out.info["host_score"][0])}
        if terminated:  # gymnasium's single env stops: the final state, then the caller resets
            info["episode_return"] = float(out.episode_return[0])
            out, self._last = self._garden.final_state(out), None
        return _numpy_observation(out, 0), float(out.reward[0]), terminated, False, info

    def action_masks(self) -> np.ndarray:
        """Bool ``[sum of head sizes]``: the flat per-head mask (sb3-contrib's hook)."""
        return _flat_mask(self._current(_NO_STATE).masks)[0].numpy()

    def render(self) -> str | None:  # type: ignore[override, unused-ignore]  # gymnasium 1.2 stubs
        if self.render_mode != "ansi":
            return None
        garden, lines = self._garden, dict[int, list[str]]()
        cells = {pos: "." if bp < 0 else f"{bp}:{stage}" for pos, bp, stage in zip(
            garden.slot_config.positions, garden.blueprint[0].tolist(), garden.stage[0].tolist())}
        width = max(map(len, cells.values()))
        for (row, _), text in sorted(cells.items()):
            lines.setdefault(row, []).append(text.rjust(width))
        body = "\n".join(" ".join(line) for _, line in sorted(lines.items()))
        return f"t={int(garden.t[0])} score={float(garden.score[0]):.3f}\n{body}"


class SlotGardenVectorEnv(_GardenWrapper, VectorEnv[_Obs, np.ndarray, np.ndarray]):
    """``num_envs`` Slot Garden environments stepped as one batch (gymnasium ``VectorEnv``).

    One :class:`~slotformer.envs.SlotGardenEnv` steps them all in torch. Arguments as
    :class:`SlotGardenGymEnv`, plus ``num_envs`` (E), ``min_episode_length`` (as
    ``SlotGardenEnv``'s) and ``autoreset_mode`` (an ``AutoresetMode`` or its value, also a
    keyword of ``gymnasium.make_vec``), advertised in ``metadata["autoreset_mode"]``:

    * ``NEXT_STEP`` (the default, gymnasium's own): the step that ends an episode returns its
      last observation, ``terminated`` and ``info["episode_return"]``; the next step ignores
      that environment's action and returns the new episode's first observation, reward 0.
    * ``SAME_STEP``: the step that ends an episode returns the new episode's first
      observation; the last one is ``info["final_obs"]``, the last step's info
      ``info["final_info"]`` (``info["_final_obs"]`` / ``["_final_info"]`` mark them).

    Example:
        >>> envs = SlotGardenVectorEnv(num_envs=4, rows=2, cols=2, episode_length=8)
        >>> obs, info = envs.reset(seed=0)
        >>> obs["obs"].shape, envs.action_masks().shape, envs.metadata["autoreset_mode"].name
        ((4, 147), (4, 42), 'NEXT_STEP')
        >>> obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        >>> reward.shape
        (4,)
    """

    # gymnasium's class attribute (the default mode); an instance gets a copy with its own.
    metadata = {"render_modes": [], "autoreset_mode": AUTORESET_MODES[0]}  # noqa: RUF012
    _out: StepOutput  # the torch environment's latest output (set by reset)

    def __init__(
        self, num_envs: int, rows: int = 1, cols: int = 3, episode_length: int = 48,
        rent: float = DEFAULT_RENT, table_seed: int = 0, invalid_action: InvalidAction = "wait",
        min_episode_length: int | None = None, render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AUTORESET_MODES[0],
    ) -> None:
        mode = next((m for m in AUTORESET_MODES if autoreset_mode is m or (
            isinstance(autoreset_mode, str) and autoreset_mode == m.value)), None)
        if mode is None:
            names, values = (", ".join(map(str, AUTORESET_MODES)),
                             ", ".join(repr(m.value) for m in AUTORESET_MODES))
            raise ValueError(f"autoreset_mode must be one of {names} (or their values {values}), "
                             f"got {autoreset_mode!r}")
        self.autoreset_mode: AutoresetMode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.single_observation_space, self.single_action_space = self._setup(
            num_envs, rows, cols, invalid_action, render_mode, episode_length=episode_length,
            rent=rent, table_seed=table_seed, min_episode_length=min_episode_length,
        )
        self.num_envs = num_envs
        batch = gym.vector.utils.batch_space
        self.observation_space = batch(self.single_observation_space, num_envs)
        self.action_space = batch(self.single_action_space, num_envs)
        self._restarting = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: restart at the next step

    def reset(
        self, *, seed: int | list[int] | None = None, options: _Info | None = None
    ) -> tuple[_Obs, _Info]:
        if isinstance(seed, list):
            raise ValueError("seed must be an int or None (the environments share one generator), "
                             f"got a list of {len(seed)}")
        super().reset(seed=seed)
        self._out = self._reset_garden(seed)
        self._restarting = np.zeros(self.num_envs, dtype=bool)
        return _numpy_observation(self._out), {}

    def step(self, actions: np.ndarray) -> tuple[_Obs, np.ndarray, np.ndarray, np.ndarray, _Info]:
        self._current("SlotGardenVectorEnv.step called before reset()")
        restarting, no = self._restarting, np.zeros(self.num_envs, dtype=bool)
        checked, invalid = self._actions(actions, ignored=restarting)  # raises before any change
        if restarting.all():
            # Every environment restarts (with equal episode lengths, all of them always do):
            # the torch environment began their new episodes when the last ones ended.
            self._last, self._restarting = self._out, no
            obs, reward = _numpy_observation(self._out), np.zeros(self.num_envs, np.float32)
            return obs, reward, no.copy(), no.copy(), {"invalid_action": no.copy()}
        self._restarting = no
        # The restarting environments sit the step out on their new episode's first state.
        hold = torch.as_tensor(restarting) if restarting.any() else None
        out = self._out = self._last = self._garden.step(checked, hold=hold)
        terminated = out.done.numpy().copy()
        info: _Info = {"invalid_action": invalid}
        if terminated.any():
            episode_return = np.where(terminated, out.episode_return.numpy(), np.nan)
            ended = {"episode_return": episode_return, "_episode_return": terminated.copy()}
            info.update(ended)
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:
                self._last = self._garden.final_state(out)  # their new episodes come next step
                self._restarting = terminated.copy()
            else:
                info["final_obs"] = _numpy_observation(self._garden.final_state(out))
                info["final_info"] = {key: value.copy() for key, value in ended.items()}
                info["_final_obs"], info["_final_info"] = terminated.copy(), terminated.copy()
        return _numpy_observation(self._last), out.reward.numpy().copy(), terminated, no, info

    def action_masks(self) -> np.ndarray:
        """Bool ``[E, sum of head sizes]``: the flat per-head masks of the last observation."""
        return _flat_mask(self._current(_NO_STATE).masks).numpy()


def register_envs() -> None:
    """Register ``slotformer/SlotGarden-v0`` with gymnasium (idempotent)."""
    from slotformer.envs import GYM_ENV_ID

    if GYM_ENV_ID in gym.registry:
        return
    gym.register(
        id=GYM_ENV_ID,
        entry_point="slotformer.envs.gym:SlotGardenGymEnv",
        vector_entry_point="slotformer.envs.gym:SlotGardenVectorEnv",
    )
