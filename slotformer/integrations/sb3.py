"""Stable-Baselines3: slotformer's whole network as sb3-contrib's ``MaskablePPO`` policy.

Needs the ``sb3`` extra. `SlotformerPolicy` runs a slotformer network end to end (slot
attention, the pointer head, the op sampled first and every other head masked for it, V(s)) on
any environment with Slot Garden's ``Dict`` observation; `SlotGardenVecEnv` steps E gardens as
one batch (a ``DummyVecEnv`` of single gardens steps them one at a time, 6x slower for 8)::

    from sb3_contrib import MaskablePPO
    from slotformer.integrations.sb3 import SlotformerPolicy, SlotGardenVecEnv

    model = MaskablePPO(SlotformerPolicy, SlotGardenVecEnv(8, rows=1, cols=3),
                        policy_kwargs={"rows": 1, "cols": 3, "entropy_weights": {"op": 10.0}})
    model.learn(100_000)
    save_checkpoint("policy.pt", model.policy.bundle)  # load_checkpoint onto another grid

**Not recurrent.** SB3 has no maskable recurrent PPO (sb3-contrib's ``RecurrentPPO`` takes no
action masks, ``MaskablePPO`` keeps no recurrent state), so every step is scored as a one-step
sequence from a zero recurrent state, at rollout and at update alike. The slot mask comes from
the observation's ``slot_by_op`` once the op is chosen, so no invalid (op, slot) pair reaches the
environment; the flat per-head ``action_masks`` MaskablePPO passes (whose slot mask is the union
over ops) are not used. For recurrence: your own PPO loop (``docs/ppo_loop.md``) or TorchRL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import SlotConfig
from slotformer.envs.gym import SlotGardenVectorEnv
from slotformer.policy import create_policy
from slotformer.policy_step import PolicyStep, expected_entropy, policy_step
from slotformer.validation import check_positive_int, expect

__all__ = ["SlotGardenVecEnv", "SlotformerDistribution", "SlotformerPolicy"]

Obs = Mapping[str, Tensor]


class SlotformerDistribution:
    """slotformer's masked factored distribution for a batch of B observations, with the
    methods SB3 calls on a distribution. Actions are ``[B, K]`` in head order (MultiDiscrete).

    Args:
        action_space: the network's heads. logits: head -> unmasked ``[B, n]``.
        masks: head -> bool ``[B, n]`` (True = valid). slot_by_op: bool ``[B, num_ops, N]``.
        entropy_weights: head -> coefficient of its term in `entropy` (default 1).
    """

    def __init__(self, action_space: ActionSpace, logits: Mapping[str, Tensor],
                 masks: Mapping[str, Tensor], slot_by_op: Tensor,
                 entropy_weights: Mapping[str, float] | None = None) -> None:
        self.action_space, self.logits, self.masks = action_space, logits, masks
        self.slot_by_op, self.entropy_weights = slot_by_op, entropy_weights

    def step(self, actions: Tensor | None = None, deterministic: bool = False) -> PolicyStep:
        """`slotformer.policy_step.policy_step`: sample (or score int ``[B, K]`` actions)."""
        names = self.action_space.head_names
        if actions is not None:
            expect("actions", actions, shape=(self.slot_by_op.shape[0], len(names)),
                   hint=f" (B, one per head {names})")
        given = None if actions is None else dict(zip(names, actions.long().unbind(-1)))
        return policy_step(self.action_space, self.logits, self.masks, self.slot_by_op,
                           actions=given, deterministic=deterministic)

    def get_actions(self, deterministic: bool = False) -> Tensor:
        """int64 ``[B, K]``: the op first, then each head under its mask for that op."""
        return torch.stack(list(self.step(deterministic=deterministic).actions.values()), -1)

    def sample(self) -> Tensor:
        return self.get_actions(False)

    def mode(self) -> Tensor:
        return self.get_actions(True)

    def log_prob(self, actions: Tensor) -> Tensor:
        """``[B]``: the joint log-prob (heads irrelevant to the op score exactly 0)."""
        return torch.stack(list(self.step(actions).log_probs.values()), -1).sum(-1)

    def entropy(self) -> Tensor:
        """``[B]``: ``w_op H(op) + sum_o p(o) sum_h w_h H(h | o)``, every head's entropy
        normalised by ``ln(num_valid)`` (`slotformer.policy_step.expected_entropy`)."""
        return expected_entropy(self.action_space, self.logits, self.masks, self.slot_by_op,
                                weights=self.entropy_weights)

    def apply_masking(self, masks: Any) -> None:
        """Ignored: the masks come from the observation (``slot_by_op`` per op)."""


class SlotformerPolicy(MaskableActorCriticPolicy):
    """A slotformer bundle as an SB3 policy: ``MaskablePPO(SlotformerPolicy, env, ...)``.

    Args (``policy_kwargs``):
        network: ``"transformer"`` (runs on other grids after training) or ``"lstm"``.
        rows, cols: the grid (``SlotConfig.for_grid``); ``cols`` None = N / rows.
        entropy_weights: head -> weight of its entropy term (default 1 each; MaskablePPO's
            ``ent_coef`` multiplies the sum). A mutable dict: a callback may anneal it.
        heads: slotformer's `ActionSpace` (None = the seed-lifecycle heads for N slots).
        optimizer_class, optimizer_kwargs: as SB3's (Adam, ``eps=1e-5``).
        **config_fields: the network's config (`TransformerConfig`, `LSTMConfig`); the
            auxiliary Q and contribution heads are off unless asked for (SB3 trains neither).

    The observation is a ``Dict`` with ``"obs"`` ``[D]``, ``"blueprint_indices"`` ``[N]``
    (-1 = empty), ``"action_mask"`` ``[sum of head sizes]`` (the heads' masks in order) and
    ``"slot_by_op"`` ``[num_ops, N]``; the action a ``MultiDiscrete`` of the head sizes in
    head order. ``bundle`` is the slotformer policy (``save_checkpoint(path, policy.bundle)``).

    Shapes (B observations, K heads): ``forward`` -> actions int64 ``[B, K]``, V(s) ``[B, 1]``,
    log-prob ``[B]``; ``evaluate_actions(obs, actions [B, K])`` -> V(s) ``[B, 1]``, log-prob
    ``[B]`` (equal to the bundle's ``evaluate_actions``), entropy ``[B]``;
    ``predict_values`` -> ``[B, 1]``.
    """

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space,
        lr_schedule: Schedule, network: str = "transformer", rows: int = 1,
        cols: int | None = None, entropy_weights: Mapping[str, float] | None = None,
        heads: ActionSpace | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None, **config_fields: Any,
    ) -> None:
        if optimizer_kwargs is None:
            optimizer_kwargs = {"eps": 1e-5} if optimizer_class is torch.optim.Adam else {}
        # BasePolicy, not MaskableActorCriticPolicy: no features extractor, MLP or SB3 heads.
        BasePolicy.__init__(self, observation_space, action_space, optimizer_class=optimizer_class,
                            optimizer_kwargs=optimizer_kwargs, normalize_images=False)
        given: Mapping[str, spaces.Space] = (
            observation_space.spaces if isinstance(observation_space, spaces.Dict) else {})
        bp_space = given.get("blueprint_indices")
        if bp_space is None or len(bp_space.shape or ()) != 1:
            raise ValueError(f"observation_space must be a gymnasium Dict whose "
                             f"'blueprint_indices' has shape (N,), got {observation_space}")
        n = int(bp_space.shape[0])  # type: ignore[index]
        cols = n // check_positive_int("rows", rows) if cols is None else cols
        if rows * cols != n:
            raise ValueError(f"rows x cols = {rows} x {cols} must equal the {n} slots of "
                             f"observation_space['blueprint_indices'] (shape ({n},))")
        fields = {"use_q_head": False, "use_contribution_head": False, **config_fields}
        self.bundle = create_policy(network, slot_config=SlotConfig.for_grid(rows, cols),
                                    action_space=heads, **fields)
        self.network = self.bundle.network  # registered: SB3's optimiser trains its parameters
        space: ActionSpace = self.bundle.action_space  # type: ignore[attr-defined]
        self.heads, self.sizes = space, [space.sizes[name] for name in space.head_names]
        expected = {"obs": (self.bundle.state_dim,), "action_mask": (sum(self.sizes),),
                    "slot_by_op": (space.num_ops, n)}
        for key, shape in expected.items():
            got = given.get(key)
            if got is None or tuple(got.shape or ()) != shape:
                raise ValueError(f"observation_space[{key!r}] must have shape {shape}, got "
                                 f"{None if got is None else got.shape}")
        if not (isinstance(action_space, spaces.MultiDiscrete)
                and action_space.nvec.tolist() == self.sizes):
            raise ValueError(f"action_space must be MultiDiscrete({self.sizes}) (heads "
                             f"{list(space.head_names)}), got {action_space}")
        space.check_head_names("entropy_weights", entropy_weights or {})
        self.entropy_weights = dict(entropy_weights or {})
        self._kwargs = {"network": network, "rows": rows, "cols": cols, "heads": heads,
                        **config_fields}
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1),  # type: ignore[call-arg]
                                              **self.optimizer_kwargs)

    def _inputs(self, obs: Obs) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor]:
        """State ``[B, D]``, int64 blueprint indices ``[B, N]``, per-head masks, slot_by_op.
        SB3's buffer stores every entry as float: the small integers convert exactly."""
        state = obs["obs"].to(self.bundle.dtype)
        blueprint = obs["blueprint_indices"].to(torch.float32).round().long()
        flat = obs["action_mask"] != 0  # [B, sum of sizes]
        if flat.shape[-1] != sum(self.sizes):
            raise ValueError(f"obs['action_mask'] has shape {tuple(flat.shape)}, expected "
                             f"(B, {sum(self.sizes)}): the head masks {self.sizes} side by side")
        masks = dict(zip(self.heads.head_names, flat.split(self.sizes, dim=-1)))
        return state, blueprint, masks, obs["slot_by_op"] != 0

    def _distribution(self, obs: Obs) -> tuple[SlotformerDistribution, Tensor]:
        """One network pass: the distribution and V(s) ``[B]``."""
        state, blueprint, masks, slot_by_op = self._inputs(obs)
        out = self.network(state, blueprint)  # no masks: raw logits, as evaluate_actions'
        logits = {name: out[f"{name}_logits"] for name in self.heads.head_names}
        return SlotformerDistribution(self.heads, logits, masks, slot_by_op,
                                      self.entropy_weights), out["state_value"]

    def forward(self, obs: Obs, deterministic: bool = False,  # type: ignore[override]
                action_masks: np.ndarray | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Rollout: actions ``[B, K]``, V(s) ``[B, 1]``, joint log-prob ``[B]``."""
        distribution, value = self._distribution(obs)
        step = distribution.step(deterministic=deterministic)
        actions = torch.stack(list(step.actions.values()), -1)
        return actions, value[:, None], torch.stack(list(step.log_probs.values()), -1).sum(-1)

    def evaluate_actions(self, obs: Obs, actions: Tensor,  # type: ignore[override]
                         action_masks: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Update: V(s) ``[B, 1]``, log-prob of ``actions [B, K]`` ``[B]``, entropy ``[B]``."""
        distribution, value = self._distribution(obs)
        return value[:, None], distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: Obs,  # type: ignore[override]
                         action_masks: np.ndarray | None = None) -> SlotformerDistribution:
        return self._distribution(obs)[0]

    def predict_values(self, obs: Obs) -> Tensor:  # type: ignore[override]
        """V(s) ``[B, 1]``."""
        state, blueprint, _, _ = self._inputs(obs)
        return self.bundle.get_value(state, blueprint)[:, None]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**BasePolicy._get_constructor_parameters(self), **self._kwargs,
                "lr_schedule": self._dummy_schedule, "entropy_weights": self.entropy_weights,
                "optimizer_class": self.optimizer_class, "optimizer_kwargs": self.optimizer_kwargs}


class SlotGardenVecEnv(VecEnv):
    """E Slot Gardens as one SB3 ``VecEnv``, stepped in one batch (`SlotGardenVectorEnv` in
    gymnasium's same-step autoreset, which is SB3's convention): a finished environment returns
    its next episode's first observation, with the last one in
    ``infos[i]["terminal_observation"]`` and ``infos[i]["episode"]`` (``r`` return, ``l``
    length) for SB3's logger. ``action_masks()`` is the flat per-head mask ``[E, sum of sizes]``.

    Args: ``num_envs`` and `SlotGardenVectorEnv`'s keyword arguments (rows, cols, ...).
    """

    def __init__(self, num_envs: int, **kwargs: Any) -> None:
        self.envs = SlotGardenVectorEnv(num_envs, autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
        self._actions: np.ndarray | None = None
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        self.num_envs = num_envs  # get_attr needs it inside VecEnv.__init__
        super().__init__(num_envs, self.envs.single_observation_space,
                         self.envs.single_action_space)

    def reset(self) -> dict[str, np.ndarray]:
        obs, _ = self.envs.reset(seed=self._seeds[0])  # one generator: the first seed
        self._reset_seeds()
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("SlotGardenVecEnv.step_wait called before step_async(actions)")
        obs, reward, terminated, truncated, info = self.envs.step(self._actions)
        done = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        self._lengths += 1
        for i in np.flatnonzero(done):
            infos[i] = {"terminal_observation": {k: v[i] for k, v in info["final_obs"].items()},
                        "episode": {"r": float(info["episode_return"][i]),
                                    "l": int(self._lengths[i])},
                        "TimeLimit.truncated": bool(truncated[i] and not terminated[i])}
        self._lengths[done] = 0
        return obs, reward, done, infos

    def action_masks(self) -> np.ndarray:
        return self.envs.action_masks()

    def close(self) -> None:
        self.envs.close()

    # The gardens share one object: an attribute or a method applies to all of them.
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.envs, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.envs, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        """``"action_masks"``: one row per environment; another method: called once."""
        result = getattr(self.envs, method_name)(*args, **kwargs)
        rows = method_name == "action_masks"
        return [result[i] if rows else result for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
