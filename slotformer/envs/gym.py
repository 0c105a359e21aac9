"""Slot Garden as a gymnasium environment: a single environment and a native vector one.

Needs the ``gym`` extra (``pip install "slotformer[gym]"``). Importing :mod:`slotformer.envs`
registers both under :data:`~slotformer.envs.GYM_ENV_ID` (``"slotformer/SlotGarden-v0"``)::

    import gymnasium as gym
    import slotformer.envs  # registers the id
    env = gym.make("slotformer/SlotGarden-v0", rows=1, cols=3)
    envs = gym.make_vec("slotformer/SlotGarden-v0", num_envs=16,
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
bootstrap), never ``truncated``. The vector environment resets finished environments in the
same step (gymnasium's ``AutoresetMode.SAME_STEP``): the returned observation is the new
episode's first, and ``info["final_obs"]`` (with ``info["_final_obs"]``, the environments it
holds) the finished episode's last.

**Seeding.** ``table_seed`` fixes the world (the neighbour-affinity and style tables that
make some placements better than others), so a policy can learn it; ``reset(seed=...)``
reseeds the trajectories (qualities, estimate noise) only.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from slotformer.config import SlotConfig
from slotformer.envs.dynamics import SlotGardenEnv
from slotformer.envs.observation import StepOutput
from slotformer.envs.rules import DEFAULT_RENT, MAX_SLOTS
from slotformer.presets.seed_lifecycle import HEAD_NAMES, NUM_BLUEPRINTS, NUM_OPS, Op

__all__ = [
    "SlotGardenGymEnv",
    "SlotGardenVectorEnv",
    "register_envs",
    "split_action_mask",
]

InvalidAction = Literal["wait", "raise"]
_OP_COLUMN = HEAD_NAMES.index("op")


def _check_grid(rows: int, cols: int) -> SlotConfig:
    for name, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if rows * cols > MAX_SLOTS:
        raise ValueError(
            f"rows x cols = {rows} x {cols} = {rows * cols} slots, expected at most {MAX_SLOTS}"
        )
    return SlotConfig.for_grid(rows, cols)


def _check_invalid_action(invalid_action: str) -> InvalidAction:
    if invalid_action not in ("wait", "raise"):
        raise ValueError(f"invalid_action must be 'wait' or 'raise', got {invalid_action!r}")
    return invalid_action  # type: ignore[return-value]


def _single_spaces(garden: SlotGardenEnv) -> tuple[spaces.Dict, spaces.MultiDiscrete]:
    """The observation and action space of one environment."""
    n = garden.num_slots
    sizes = [garden.action_space.sizes[name] for name in HEAD_NAMES]
    observation = spaces.Dict({
        "obs": spaces.Box(-np.inf, np.inf, (garden.observation_layout.state_dim,), np.float32),
        "blueprint_indices": spaces.Box(-1, NUM_BLUEPRINTS - 1, (n,), np.int64),
        "action_mask": spaces.MultiBinary(sum(sizes)),
        "slot_by_op": spaces.MultiBinary([NUM_OPS, n]),
    })
    return observation, spaces.MultiDiscrete(np.array(sizes, dtype=np.int64))


def _flat_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head masks concatenated in head order, ``[E, sum of sizes]`` bool."""
    return torch.cat([masks[name] for name in HEAD_NAMES], dim=-1)


def split_action_mask(
    action_mask: torch.Tensor, head_sizes: dict[str, int] | None = None, num_slots: int = 3
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
    if head_sizes is None:
        from slotformer.actions import ActionSpace

        head_sizes = ActionSpace.default(num_slots).sizes
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
    garden: SlotGardenEnv, actions: torch.Tensor, invalid_action: InvalidAction
) -> tuple[torch.Tensor, np.ndarray]:
    """Actions with invalid ones turned into WAIT (or a ``ValueError``), and the invalid flags."""
    valid = garden.action_validity(actions)  # [E]
    invalid = (~valid).numpy()
    if invalid.any():
        if invalid_action == "raise":
            env = int(np.flatnonzero(invalid)[0])
            raise ValueError(
                f"invalid action {actions[env].tolist()} for environment {env} (heads "
                f"{', '.join(HEAD_NAMES)}); pass invalid_action='wait' to turn invalid "
                "actions into WAIT"
            )
        actions = actions.clone()
        actions[~valid, _OP_COLUMN] = int(Op.WAIT)
    return actions, invalid


class SlotGardenGymEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
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
        self.invalid_action = _check_invalid_action(invalid_action)
        self.render_mode = render_mode
        self._garden = SlotGardenEnv(
            num_envs=1, slot_config=_check_grid(rows, cols), episode_length=episode_length,
            rent=rent, table_seed=table_seed, final_observation=True,
        )
        observation_space, self.action_space = _single_spaces(self._garden)
        self.observation_space = observation_space  # type: ignore[assignment]
        self._last: StepOutput | None = None

    @property
    def garden(self) -> SlotGardenEnv:
        """The underlying batched torch environment (one environment)."""
        return self._garden

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._garden.generator.manual_seed(seed)
        self._last = self._garden.reset()
        return _numpy_observation(self._last, 0), {}

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
        if self._last is None:
            raise RuntimeError("action_masks() needs a current state: call reset() first")
        return _flat_mask(self._last.masks)[0].numpy()

    def render(self) -> str | None:
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


class SlotGardenVectorEnv(VectorEnv[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """``num_envs`` Slot Garden environments stepped as one batch (gymnasium ``VectorEnv``).

    One :class:`~slotformer.envs.SlotGardenEnv` steps all of them in torch, so this is much
    faster than a ``SyncVectorEnv`` of single environments. Finished environments reset in
    the same step (``AutoresetMode.SAME_STEP``; ``info["final_obs"]`` holds the last
    observation). Arguments as :class:`SlotGardenGymEnv`, plus:

    Args:
        num_envs: E.
        min_episode_length: None (all episodes last ``episode_length`` and end together) or
            the shortest episode (lengths drawn per episode, so environments end apart).

    Example:
        >>> envs = SlotGardenVectorEnv(num_envs=4, rows=2, cols=2, episode_length=8)
        >>> obs, info = envs.reset(seed=0)
        >>> obs["obs"].shape, envs.action_masks().shape
        ((4, 147), (4, 42))
        >>> obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        >>> reward.shape
        (4,)
    """

    metadata = {  # noqa: RUF012 (gymnasium's class attribute)
        "render_modes": [],
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

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
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode must be None for the vector env, got {render_mode!r}")
        self.invalid_action = _check_invalid_action(invalid_action)
        self._garden = SlotGardenEnv(
            num_envs=num_envs, slot_config=_check_grid(rows, cols),
            episode_length=episode_length, rent=rent, table_seed=table_seed,
            min_episode_length=min_episode_length, final_observation=True,
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = _single_spaces(self._garden)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._last: StepOutput | None = None

    @property
    def garden(self) -> SlotGardenEnv:
        """The underlying batched torch environment."""
        return self._garden

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if isinstance(seed, list):
            raise ValueError(
                "seed must be an int or None (the environments share one generator), got a "
                f"list of {len(seed)}"
            )
        super().reset(seed=seed)
        if seed is not None:
            self._garden.generator.manual_seed(seed)
        self._last = self._garden.reset()
        return _numpy_observation(self._last), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._last is None:
            raise RuntimeError("SlotGardenVectorEnv.step called before reset()")
        checked, invalid = _checked_actions(
            self._garden, _as_action_tensor(actions, self.num_envs), self.invalid_action
        )
        out = self._garden.step(checked)
        self._last = out
        terminated = out.done.numpy().copy()
        info: dict[str, Any] = {"invalid_action": invalid}
        if terminated.any():
            info["final_obs"] = _numpy_observation(self._garden.final_state(out))
            info["_final_obs"] = terminated.copy()
            info["episode_return"] = np.where(terminated, out.episode_return.numpy(), np.nan)
            info["_episode_return"] = terminated.copy()
        return (
            _numpy_observation(out),
            out.reward.numpy().copy(),
            terminated,
            np.zeros(self.num_envs, dtype=bool),
            info,
        )

    def action_masks(self) -> np.ndarray:
        """Bool ``[E, sum of head sizes]``: the flat per-head masks of every environment."""
        if self._last is None:
            raise RuntimeError("action_masks() needs a current state: call reset() first")
        return _flat_mask(self._last.masks).numpy()


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
