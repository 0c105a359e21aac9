"""Slot Garden as a gymnasium environment: a single environment and a native vector one.

Needs the ``gym`` extra (``pip install "slotformer[gym]"``). Importing :mod:`slotformer.envs`
registers both under :data:`~slotformer.envs.GYM_ENV_ID` (``"slotformer/SlotGarden-v0"``). A
process that never imports slotformer (a Ray worker, a subprocess) names the module in front
of the id, and gymnasium imports it before looking the id up (gymnasium 1.x reads no plugin
entry points, so nothing can register the bare id without that import)::

    import gymnasium as gym
    env = gym.make("slotformer.envs:slotformer/SlotGarden-v0", rows=1, cols=3)
    envs = gym.make_vec("slotformer.envs:slotformer/SlotGarden-v0", num_envs=16,
                        vectorization_mode="vector_entry_point")

Both step a :class:`~slotformer.envs.SlotGardenEnv` (torch, on the CPU) and hand numpy arrays
to gymnasium.

Spaces (``N`` slots, ``D = 23 + 31 N``; the vector environment adds a leading ``E``):

* observation, a ``Dict``:

  - ``"obs"``: ``Box`` float32 ``[D]``, the flat observation (slotformer's default layout);
  - ``"blueprint_indices"``: ``Box`` int64 ``[N]`` in ``-1 .. 12`` (-1 = empty slot);
  - ``"action_mask"``: ``MultiBinary`` ``[sum of head sizes]`` (int8, 1 = valid): the head
    masks concatenated in head order (slot, blueprint, style, tempo, alpha_target,
    alpha_speed, alpha_curve, op), the flat mask that sb3-contrib's ``MaskablePPO``
    expects for a ``MultiDiscrete`` action space (also returned by ``action_masks()``);
  - ``"slot_by_op"``: ``MultiBinary`` ``[6, N]`` (int8): the slots valid for each op.

* action: ``MultiDiscrete([N, 13, 4, 3, 3, 4, 5, 6])`` in the same head order.

**Masks and dependent heads.** Which slot is valid depends on the op (GERMINATE needs an
empty slot, FOSSILIZE a holding seed). slotformer's networks take ``slot_by_op`` and sample
the op first, then a slot valid for it, so they never pick an invalid pair. A ``MultiDiscrete``
policy with independent per-head masks (``MaskablePPO``) can: its slot mask is the union over
ops. ``invalid_action="wait"`` (the default) turns such an action into WAIT (the step goes on,
the reward is what WAIT earns, ``info["invalid_action"]`` is True); ``"raise"`` raises
``ValueError`` instead.

**Episodes.** Episodes have a fixed length (``episode_length``, with the time left in the
observation), so the end of one is ``terminated`` (a true end of the task, nothing to
bootstrap), never ``truncated``. The vector environment restarts a finished environment in
gymnasium's ``AutoresetMode.NEXT_STEP`` (the default) or ``SAME_STEP``: its
``autoreset_mode`` argument, advertised in ``metadata["autoreset_mode"]``.

**Seeding.** ``table_seed`` fixes the world (the neighbour-affinity and style tables that
make some placements better than others), so a policy can learn it; ``reset(seed=...)``
reseeds the trajectories (qualities, estimate noise) only.
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

__all__ = [
    "AUTORESET_MODES",
    "SlotGardenGymEnv",
    "SlotGardenVectorEnv",
    "register_envs",
    "split_action_mask",
]

InvalidAction = Literal["wait", "raise"]
_OP_COLUMN = HEAD_NAMES.index("op")
AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
"""The autoreset modes :class:`SlotGardenVectorEnv` supports (the first is its default)."""


def _flat_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head masks concatenated in head order, ``[E, sum of sizes]`` bool."""
    return torch.cat([masks[name] for name in HEAD_NAMES], dim=-1)


def split_action_mask(
    action_mask: torch.Tensor, head_sizes: Mapping[str, int] | None = None, num_slots: int = 3
) -> dict[str, torch.Tensor]:
    """Split a flat ``action_mask [..., sum of sizes]`` back into slotformer's per-head masks.

    Args:
        action_mask: the observation's ``"action_mask"`` (any dtype; nonzero = valid),
            ``[..., S]`` with ``S`` the sum of the head sizes.
        head_sizes: head name -> size in head order (default: Slot Garden's heads for
            ``num_slots`` slots, ``ActionSpace.default(num_slots).sizes``).
        num_slots: N, used when ``head_sizes`` is None.

    Returns:
        head name -> bool ``[..., n]``, ready for ``get_action(masks=...)``.

    Example:
        >>> mask = torch.ones(2, 3 + 13 + 4 + 3 + 3 + 4 + 5 + 6)
        >>> {k: tuple(v.shape) for k, v in split_action_mask(mask).items()}["op"]
        (2, 6)
    """
    head_sizes = ActionSpace.default(num_slots).sizes if head_sizes is None else head_sizes
    total = sum(head_sizes.values())
    if action_mask.shape[-1] != total:
        raise ValueError(
            f"action_mask has {action_mask.shape[-1]} columns (shape "
            f"{tuple(action_mask.shape)}), expected the sum of the head sizes {total} "
            f"({dict(head_sizes)})"
        )
    parts = torch.split(action_mask.bool(), list(head_sizes.values()), dim=-1)
    return dict(zip(head_sizes, parts))


def _numpy_observation(out: StepOutput, index: slice | int = slice(None)) -> dict[str, np.ndarray]:
    return {
        "obs": out.obs[index].numpy(),
        "blueprint_indices": out.blueprint_indices[index].numpy(),
        "action_mask": _flat_mask(out.masks)[index].numpy().astype(np.int8),
        "slot_by_op": out.slot_by_op[index].numpy().astype(np.int8),
    }


def _as_action_tensor(action: Any, num_envs: int) -> torch.Tensor:
    """A ``MultiDiscrete`` action (one env: ``[8]``; vector: ``[E, 8]``) as int64 ``[E, 8]``."""
    array = np.asarray(action)
    expected = (num_envs, len(HEAD_NAMES))
    if array.shape == expected[1:] and num_envs == 1:
        array = array[None]
    if array.shape != expected or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"action must be integers of shape {expected if num_envs > 1 else expected[1:]} "
            f"(heads {', '.join(HEAD_NAMES)}), got shape {array.shape} and dtype {array.dtype}"
        )
    return torch.as_tensor(array, dtype=torch.long)


def _checked_actions(
    garden: SlotGardenEnv, actions: torch.Tensor, invalid_action: InvalidAction,
    ignored: np.ndarray | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Actions with invalid ones turned into WAIT (or a ``ValueError``), and the invalid flags
    ``[E]``; the actions of the ``ignored [E]`` environments count as valid."""
    invalid = (~garden.action_validity(actions)).numpy()
    if ignored is not None:
        invalid &= ~ignored
    if invalid.any():
        if invalid_action == "raise":
            env = int(np.flatnonzero(invalid)[0])
            raise ValueError(
                f"invalid action {actions[env].tolist()} for environment {env} (heads "
                f"{', '.join(HEAD_NAMES)}); pass invalid_action='wait' to turn invalid "
                "actions into WAIT"
            )
        actions = actions.clone()
        actions[torch.as_tensor(invalid), _OP_COLUMN] = int(Op.WAIT)
    return actions, invalid


class _GardenWrapper:
    """What both wrappers share: the torch environment, seeding and the current masks."""

    _garden: SlotGardenEnv
    _last: StepOutput | None  # the state behind the last observation returned (None: reset)

    def _setup(
        self, num_envs: int, rows: int, cols: int, invalid_action: str, **garden_kwargs: Any
    ) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
        """Build the torch environment; return one environment's observation and action space."""
        if invalid_action not in ("wait", "raise"):
            raise ValueError(f"invalid_action must be 'wait' or 'raise', got {invalid_action!r}")
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if rows * cols > MAX_SLOTS:
            raise ValueError(
                f"rows x cols = {rows} x {cols} = {rows * cols} slots, expected at most {MAX_SLOTS}"
            )
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

    def _current_masks(self) -> np.ndarray:
        if self._last is None:
            raise RuntimeError("action_masks() needs a current state: call reset() first")
        return _flat_mask(self._last.masks).numpy()


class SlotGardenGymEnv(_GardenWrapper, gym.Env[dict[str, np.ndarray], np.ndarray]):
    """One Slot Garden environment behind gymnasium's ``Env`` API.

    Args:
        rows, cols: the grid (``rows * cols`` slots, at most 64).
        episode_length: steps per episode.
        rent: reward charged per live seed per step.
        table_seed: fixes the world (affinity and style tables); the same for every reset.
        invalid_action: ``"wait"`` (an invalid action becomes WAIT and
            ``info["invalid_action"]`` is True) or ``"raise"``.
        render_mode: None or ``"ansi"`` (a text picture of the grid).

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
        self,
        rows: int = 1,
        cols: int = 3,
        episode_length: int = 48,
        rent: float = DEFAULT_RENT,
        table_seed: int = 0,
        invalid_action: InvalidAction = "wait",
        render_mode: str | None = None,
    ) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        observation_space, self.action_space = self._setup(
            1, rows, cols, invalid_action, episode_length=episode_length, rent=rent,
            table_seed=table_seed,
        )
        self.observation_space = observation_space  # type: ignore[assignment, unused-ignore]  # gymnasium 1.2 (ray) vs 1.4 stubs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        return _numpy_observation(self._reset_garden(seed), 0), {}

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._last is None:
            raise RuntimeError("SlotGardenGymEnv.step called before reset()")
        actions, invalid = _checked_actions(
            self._garden, _as_action_tensor(action, 1), self.invalid_action
        )
        out = self._garden.step(actions)
        terminated = bool(out.done[0])
        info: dict[str, Any] = {
            "invalid_action": bool(invalid[0]),
            "host_score": float(out.info["host_score"][0]),
        }
        if terminated:
            # Gymnasium's single env stops at the end: report the final state, and make the
            # caller reset (the torch environment has already started the next episode).
            obs = _numpy_observation(self._garden.final_state(out), 0)
            info["episode_return"] = float(out.episode_return[0])
            self._last = None
        else:
            obs = _numpy_observation(out, 0)
            self._last = out
        return obs, float(out.reward[0]), terminated, False, info

    def action_masks(self) -> np.ndarray:
        """Bool ``[sum of head sizes]``: the flat per-head mask (sb3-contrib's hook)."""
        return self._current_masks()[0]

    def render(self) -> str | None:  # type: ignore[override, unused-ignore]  # gymnasium 1.2 stubs
        if self.render_mode != "ansi":
            return None
        garden = self._garden
        cells = []
        for k, (row, col) in enumerate(garden.slot_config.positions):
            bp = int(garden.blueprint[0, k])
            cells.append((row, col, "." if bp < 0 else f"{bp}:{int(garden.stage[0, k])}"))
        width = max(len(text) for *_, text in cells)
        lines: dict[int, list[str]] = {}
        for row, _, text in sorted(cells):
            lines.setdefault(row, []).append(text.rjust(width))
        body = "\n".join(" ".join(line) for _, line in sorted(lines.items()))
        return f"t={int(garden.t[0])} score={float(garden.score[0]):.3f}\n{body}"


class SlotGardenVectorEnv(_GardenWrapper, VectorEnv[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """``num_envs`` Slot Garden environments stepped as one batch (gymnasium ``VectorEnv``).

    One :class:`~slotformer.envs.SlotGardenEnv` steps all of them in torch, so this is much
    faster than a ``SyncVectorEnv`` of single environments. Arguments as
    :class:`SlotGardenGymEnv`, plus:

    Args:
        num_envs: E.
        min_episode_length: None (all episodes last ``episode_length`` and end together) or
            the shortest episode (lengths drawn per episode, so environments end apart).
        autoreset_mode: how a finished environment restarts, a gymnasium ``AutoresetMode``
            (or its value, ``"NextStep"`` / ``"SameStep"``), advertised in
            ``metadata["autoreset_mode"]``:

            * ``NEXT_STEP`` (the default): the step that ends an episode returns its last
              observation, ``terminated`` and ``info["episode_return"]``; the next step
              restarts that environment, ignoring its action: it returns the new episode's
              first observation, reward 0 and ``terminated``/``truncated`` False. The
              default because it is gymnasium's (its own vector envs use it, and its vector
              wrappers assume it when a vector env does not say): a consumer that ignores
              the metadata counts episodes correctly.
            * ``SAME_STEP``: the step that ends an episode already returns the new episode's
              first observation; the finished one's last is ``info["final_obs"]``, its last
              step's info ``info["final_info"]`` (``info["_final_obs"]`` and
              ``info["_final_info"]`` mark the environments). No step is spent restarting,
              but a consumer that assumes NEXT_STEP loses a step of every episode.

            Through ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`` it
            is a keyword argument like the others (gymnasium passes ``vector_kwargs`` only
            to its own ``SyncVectorEnv`` / ``AsyncVectorEnv``).

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

    def __init__(
        self,
        num_envs: int,
        rows: int = 1,
        cols: int = 3,
        episode_length: int = 48,
        rent: float = DEFAULT_RENT,
        table_seed: int = 0,
        invalid_action: InvalidAction = "wait",
        min_episode_length: int | None = None,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AUTORESET_MODES[0],
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None for the vector env, got {render_mode!r}")
        mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else None
        if mode is None and isinstance(autoreset_mode, str):
            mode = next((m for m in AutoresetMode if autoreset_mode == m.value), None)
        if mode not in AUTORESET_MODES:
            raise ValueError(
                f"autoreset_mode must be one of {', '.join(str(m) for m in AUTORESET_MODES)} "
                f"(or their values {', '.join(repr(m.value) for m in AUTORESET_MODES)}), got "
                f"{autoreset_mode!r}"
            )
        self.autoreset_mode: AutoresetMode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.single_observation_space, self.single_action_space = self._setup(
            num_envs, rows, cols, invalid_action, episode_length=episode_length, rent=rent,
            table_seed=table_seed, min_episode_length=min_episode_length,
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._out: StepOutput | None = None  # the torch environment's latest output
        self._restarting = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: restart at the next step

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if isinstance(seed, list):
            raise ValueError(
                "seed must be an int or None (the environments share one generator), got a "
                f"list of {len(seed)}"
            )
        super().reset(seed=seed)
        self._out = self._reset_garden(seed)
        self._restarting = np.zeros(self.num_envs, dtype=bool)
        return _numpy_observation(self._out), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._out is None:
            raise RuntimeError("SlotGardenVectorEnv.step called before reset()")
        action_tensor = _as_action_tensor(actions, self.num_envs)
        restarting, no = self._restarting, np.zeros(self.num_envs, dtype=bool)
        if restarting.all():
            # Every environment restarts (with equal episode lengths, all of them always do):
            # the torch environment began their new episodes when the last ones ended.
            self._last, self._restarting = self._out, no
            obs, reward = _numpy_observation(self._out), np.zeros(self.num_envs, np.float32)
            return obs, reward, no.copy(), no.copy(), {"invalid_action": no.copy()}
        checked, invalid = _checked_actions(  # raises before anything changes
            self._garden, action_tensor, self.invalid_action, ignored=restarting
        )
        self._restarting = no
        # The restarting environments sit the step out on their new episode's first state.
        hold = torch.as_tensor(restarting) if restarting.any() else None
        out = self._out = self._last = self._garden.step(checked, hold=hold)
        terminated = out.done.numpy().copy()
        info: dict[str, Any] = {"invalid_action": invalid}
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
        return self._current_masks()


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
