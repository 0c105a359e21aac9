"""RLlib (new API stack): a slotformer network as an ``RLModule``, and its action distribution.

Needs the ``rllib`` extra (``pip install "slotformer[rllib]"``, Ray 2.60). Train Slot Garden
(``gymnasium.make("slotformer.envs:slotformer/SlotGarden-v0")``) or any environment with its
spaces through RLlib's algorithms, with env runners and DDP learners across processes or
machines (``examples/rllib_ppo.py``, ``docs/distributed.md``).

* :class:`SlotformerRLModule`: ``TorchRLModule`` and ``ValueFunctionAPI`` around a policy
  bundle (``"transformer"`` or ``"lstm"``), built from ``model_config``:

  ================== ============================================================
  key                value
  ================== ============================================================
  ``rows``, ``cols`` the grid (``SlotConfig.for_grid``); default 1 x 3
  ``network``        ``"transformer"`` (default) or ``"lstm"``
  ``policy_kwargs``  anything ``create_policy`` takes (``lstm_hidden_dim``, ...)
  ``probability_floor`` a minimum probability per valid action (float or per head)
  ``entropy_weights`` head name -> weight of its entropy, relative to RLlib's
                     ``entropy_coeff`` (default 1); e.g. ``{"op": 20.0}``
  ``max_seq_len``    RLlib's sequence length at update (default 25: a 24-step
                     rollout fragment plus the step RLlib appends to each chunk)
  ``checkpoint``     a slotformer checkpoint whose weights seed the module
  ================== ============================================================

* :class:`FactoredMaskedDistribution`: RLlib's ``Distribution`` API over the factored action
  (op first, the slot restricted by ``slot_by_op[op]``, irrelevant heads canonical), with
  ``logp``, ``entropy`` and ``kl`` from `slotformer.policy_step` (vectorised, every op at once).

Spaces (Slot Garden's; ``N`` slots, ``S`` the sum of the head sizes, ``O`` ops): a ``Dict``
observation with ``"obs"`` ``[D]``, ``"blueprint_indices"`` ``[N]``, ``"action_mask"`` ``[S]``
and ``"slot_by_op"`` ``[O, N]``; a ``MultiDiscrete`` action in head order. Batches are
``[B, T, ...]``; RLlib's recurrent state ``{"h", "c"}`` is ``[B, L, H]`` each (slotformer's is
``[L, B, H]``; the module transposes). ``ACTION_DIST_INPUTS`` ``[B, T, 2 S + O N + 1]`` holds
the unmasked logits, the masks, ``slot_by_op`` and a *real row* flag, so PPO's loss sees the
masks used at sampling, and the rows RLlib adds at update (outside ``LOSS_MASK``) count as
all-valid: they score finite and never raise, while real rows keep slotformer's validation.
The module freezes the auxiliary heads (RLlib's PPO loss has no term for them), so DDP
learners need no ``find_unused_parameters``. Details: ``docs/distributed.md``.

Example (one acting step on Slot Garden's spaces):

    >>> import gymnasium as gym
    >>> from ray.rllib.core.columns import Columns
    >>> env = gym.make("slotformer.envs:slotformer/SlotGarden-v0", rows=1, cols=3)
    >>> module = SlotformerRLModule(
    ...     observation_space=env.observation_space, action_space=env.action_space,
    ...     model_config={"network": "lstm", "policy_kwargs": {"lstm_hidden_dim": 16}})
    >>> obs, _ = env.reset(seed=0)
    >>> batch = {Columns.OBS: {k: torch.as_tensor(v)[None, None] for k, v in obs.items()},
    ...          Columns.STATE_IN: {k: v[None] for k, v in module.get_initial_state().items()}}
    >>> out = module.forward_exploration(batch)
    >>> out[Columns.ACTIONS].shape, out[Columns.STATE_OUT]["h"].shape
    (torch.Size([1, 1, 8]), torch.Size([1, 1, 16]))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.distribution import Distribution
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from slotformer.config import SlotConfig
from slotformer.networks.core import ActorCriticCore
from slotformer.policy import create_policy
from slotformer.policy.bundles import ActorCriticBundle
from slotformer.policy_step import (
    PolicyStep,
    expected_entropy,
    factored_kl,
    floors_by_head,
    policy_step,
)
from slotformer.validation import describe_shape

__all__ = [
    "DEFAULT_MAX_SEQ_LEN",
    "FactoredMaskedDistribution",
    "SlotformerRLModule",
    "rl_module_spec_from_checkpoint",
    "save_slotformer_checkpoint",
]

DEFAULT_MAX_SEQ_LEN = 25
"""``max_seq_len`` when ``model_config`` has none (PPOConfig does not fill RLlib's default)."""
_MODEL_CONFIG_KEYS = frozenset({"rows", "cols", "network", "policy_kwargs", "probability_floor",
                                "entropy_weights", "max_seq_len", "checkpoint"})
_RLLIB_KEYS = frozenset(f.name for f in dataclasses.fields(DefaultModelConfig))


class FactoredMaskedDistribution(Distribution):
    """slotformer's factored masked action distribution behind RLlib's ``Distribution`` API.

    A class bound to one action space (`bind`) is what ``SlotformerRLModule`` hands to
    RLlib; ``from_logits`` reads ``ACTION_DIST_INPUTS`` (module docstring). Actions are
    int64 ``[..., K]`` in head order; ``logp``, ``entropy`` and ``kl`` are ``[...]`` fp32.

    Args:
        logits: head name -> unmasked logits ``[..., n]``.
        masks: head name -> bool ``[..., n]``, True = valid.
        slot_by_op: bool ``[..., O, N]``.
        deterministic: `sample` returns the mode (`to_deterministic`).
    """

    space: ClassVar[ActionSpace]
    num_slots: ClassVar[int]
    floors: ClassVar[dict[str, float]] = {}
    floor_mode: ClassVar[str] = "clip"
    entropy_weights: ClassVar[dict[str, float]] = {}

    def __init__(self, logits: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                 slot_by_op: Tensor, deterministic: bool = False) -> None:
        self.logits, self.masks, self.slot_by_op = dict(logits), dict(masks), slot_by_op
        self.deterministic = deterministic

    @classmethod
    def bind(cls, space: ActionSpace, *, floors: Mapping[str, float] | None = None,
             floor_mode: str = "clip", entropy_weights: Mapping[str, float] | None = None,
             ) -> type[FactoredMaskedDistribution]:
        """A subclass for ``space`` (RLlib calls ``from_logits(tensor)`` with nothing else).

        Raises:
            ValueError: ``entropy_weights`` names a head ``space`` does not have.
        """
        if space.num_slots is None:
            raise ValueError("the action space needs a pointer (slot) head for slot_by_op")
        weights = {k: float(v) for k, v in (entropy_weights or {}).items()}
        space.check_head_names("entropy_weights", weights)
        return type(cls.__name__, (cls,), {"space": space, "num_slots": space.num_slots,
                                           "floors": dict(floors or {}),
                                           "floor_mode": floor_mode, "entropy_weights": weights})

    @classmethod
    def required_input_dim(cls, space: gym.Space | None = None, **kwargs: Any) -> int:
        """``2 S + O N + 1``: logits, masks, ``slot_by_op`` and the real-row flag."""
        s = sum(cls.space.sizes.values())
        return 2 * s + cls.space.num_ops * cls.num_slots + 1

    @classmethod
    def to_inputs(cls, logits: Mapping[str, Tensor], action_mask: Tensor, slot_by_op: Tensor,
                  real: Tensor) -> Tensor:
        """``ACTION_DIST_INPUTS [..., 2 S + O N + 1]`` from unmasked ``logits`` (head ->
        ``[..., n]``), the flat ``action_mask [..., S]`` and ``slot_by_op [..., O, N]`` (any
        dtype, nonzero = valid) and the real-row flag ``real [...]``."""
        flat = torch.cat([logits[name] for name in cls.space.head_names], dim=-1).float()
        parts = [action_mask, slot_by_op.flatten(-2), real.unsqueeze(-1)]
        return torch.cat([flat, *((p != 0).to(flat.dtype) for p in parts)], dim=-1)

    @classmethod
    def from_logits(  # type: ignore[override]  # a torch tensor only
        cls, logits: Tensor, **kwargs: Any
    ) -> FactoredMaskedDistribution:
        """The distribution of ``ACTION_DIST_INPUTS [..., 2 S + O N + 1]`` (`to_inputs`);
        rows whose flag is 0 get every action valid."""
        space = cls.space
        sizes = [space.sizes[name] for name in space.head_names]
        s, o, n = sum(sizes), space.num_ops, cls.num_slots
        if logits.shape[-1] != cls.required_input_dim():
            raise ValueError(
                f"action distribution inputs have shape {describe_shape(logits)}, expected "
                f"[..., {cls.required_input_dim()}] (2 x {s} head logits and masks + {o} x {n} "
                f"slot_by_op + 1 real-row flag)")
        flat, mask, by_op, real = logits.split([s, s, o * n, 1], dim=-1)
        padding = real <= 0.5  # [..., 1]: RLlib's own rows (outside LOSS_MASK)
        mask = (mask > 0.5) | padding
        by_op = ((by_op > 0.5) | padding).unflatten(-1, (o, n))
        names = space.head_names
        return cls(dict(zip(names, flat.split(sizes, -1))), dict(zip(names, mask.split(sizes, -1))),
                   by_op)

    def _step(self, actions: Mapping[str, Tensor] | None) -> PolicyStep:
        return policy_step(self.space, self.logits, self.masks, self.slot_by_op, actions=actions,
                           deterministic=self.deterministic, floors=self.floors,
                           floor_mode=self.floor_mode)

    def sample(self, *, sample_shape: tuple[int, ...] | None = None, return_logp: bool = False,
               **kwargs: Any) -> Tensor | tuple[Tensor, Tensor]:
        """int64 actions ``[..., K]`` (the op first, then the other heads under its masks), and
        with ``return_logp`` their summed log-prob ``[...]``."""
        if sample_shape not in (None, (), torch.Size()):
            raise ValueError(f"sample_shape must be None or (), got {sample_shape!r}: draw "
                             "more samples with more environments")
        with torch.no_grad():
            step = self._step(None)
        actions = torch.stack([step.actions[name] for name in self.space.head_names], dim=-1)
        logp = torch.stack(list(step.log_probs.values()), dim=-1).sum(-1)
        return (actions, logp) if return_logp else actions

    def rsample(self, *, sample_shape: tuple[int, ...] | None = None, return_logp: bool = False,
                **kwargs: Any) -> Tensor | tuple[Tensor, Tensor]:
        """Not available: categorical actions are not reparameterisable."""
        raise NotImplementedError("FactoredMaskedDistribution has no rsample: categorical "
                                  "actions are not reparameterisable; use sample()")

    def logp(self, value: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        """``[...]`` fp32: the summed log-prob of int actions ``value [..., K]`` (head order).

        Raises:
            ValueError: bad shape or dtype; with validation on, a real row whose mask forbids
                its action (`slotformer.policy_step.policy_step`)."""
        k, lead = len(self.space.head_names), self.slot_by_op.shape[:-2]
        if value.is_floating_point() or tuple(value.shape) != (*lead, k):
            raise ValueError(f"actions have dtype {value.dtype} and shape {describe_shape(value)}, "
                             f"expected integers of shape {(*lead, k)} (heads "
                             f"{list(self.space.head_names)})")
        actions = dict(zip(self.space.head_names, value.long().unbind(-1)))
        return torch.stack(list(self._step(actions).log_probs.values()), dim=-1).sum(-1)

    def entropy(self, **kwargs: Any) -> Tensor:
        """``[...]``: ``w_op H(op) + sum_o p(o) sum_h w_h H(h | o)``, normalised per head, the
        op marginalised analytically (`slotformer.policy_step.expected_entropy`)."""
        return expected_entropy(self.space, self.logits, self.masks, self.slot_by_op,
                                weights=self.entropy_weights, floors=self.floors,
                                floor_mode=self.floor_mode)

    def kl(self, other: Distribution, **kwargs: Any) -> Tensor:
        """``[...]``: ``KL(self || other)`` on this distribution's masks (for the rows inside
        ``LOSS_MASK`` both have the same masks)."""
        if not isinstance(other, FactoredMaskedDistribution):
            raise TypeError(f"kl needs another FactoredMaskedDistribution, got {type(other)}")
        return factored_kl(self.space, self.logits, other.logits, self.masks, self.slot_by_op,
                           floors=self.floors, floor_mode=self.floor_mode)

    def to_deterministic(self) -> FactoredMaskedDistribution:
        """The mode: the most likely op, then each head's most likely action under its
        op-canonical mask; its `logp` is the stochastic distribution's."""
        return type(self)(self.logits, self.masks, self.slot_by_op, deterministic=True)


class SlotformerRLModule(TorchRLModule, ValueFunctionAPI):
    """A slotformer policy bundle as an RLlib ``RLModule`` (``model_config``: the module
    docstring). The bundle is ``module.bundle``, its network ``module.network``.

    Outputs (``[B, T, ...]``): acting, ``ACTIONS`` ``[B, T, K]``, ``ACTION_LOGP``,
    ``ACTION_DIST_INPUTS`` and ``STATE_OUT``; training, ``ACTION_DIST_INPUTS`` (flag =
    ``LOSS_MASK``) and ``EMBEDDINGS`` (``lstm_out [B, T, H]``), from which `compute_values`
    takes V(s) without a second trunk pass.
    """

    bundle: ActorCriticBundle
    network: ActorCriticCore

    def setup(self) -> None:
        config = self.model_config if isinstance(self.model_config, dict) else {}
        self.model_config = config  # RLlib's connectors read max_seq_len from it
        # RLlib's own keys (an algorithm adds some, e.g. PPO's vf_share_layers) are ignored.
        unknown = sorted(set(config) - _MODEL_CONFIG_KEYS - _RLLIB_KEYS)
        if unknown:
            raise ValueError(f"model_config has unknown keys {unknown}; expected some of "
                             f"{sorted(_MODEL_CONFIG_KEYS)}")
        config.setdefault("max_seq_len", DEFAULT_MAX_SEQ_LEN)
        grid = SlotConfig.for_grid(int(config.get("rows", 1)), int(config.get("cols", 3)))
        network = config.get("network", "transformer")
        if config.get("checkpoint"):
            if config.get("policy_kwargs"):
                raise ValueError("model_config has both checkpoint and policy_kwargs; the "
                                 "checkpoint's stored config builds the network, so drop one")
            bundle = load_checkpoint(config["checkpoint"], slot_config=grid,
                                     policy_type=network, map_location="cpu")
        else:
            bundle = create_policy(network, slot_config=grid,
                                   **dict(config.get("policy_kwargs") or {}))
        if not isinstance(bundle, ActorCriticBundle):
            raise TypeError(f"network {network!r} is a {type(bundle).__name__}, expected one of "
                            "slotformer's bundles ('transformer', 'lstm')")
        assert isinstance(bundle.network, ActorCriticCore)
        self.bundle, self.network = bundle, bundle.network
        for head in (self.network.q_head, self.network.contribution_predictor):
            if head is not None:  # no PPO loss term: frozen, so DDP needs no unused-param scan
                head.requires_grad_(False)
        space = self.bundle.action_space
        self._check_spaces(space)
        self._floors = floors_by_head(space, config.get("probability_floor"))
        self.set_entropy_weights(config.get("entropy_weights"))

    def _check_spaces(self, space: ActionSpace) -> None:
        sizes = [space.sizes[name] for name in space.head_names]
        nvec = getattr(self.action_space, "nvec", None)
        if nvec is not None and [int(v) for v in nvec] != sizes:
            raise ValueError(f"action_space is MultiDiscrete({list(nvec)}), expected "
                             f"MultiDiscrete({sizes}) (heads {list(space.head_names)})")
        spaces = getattr(self.observation_space, "spaces", None)
        if spaces is not None:
            missing = sorted({"obs", "blueprint_indices", "action_mask", "slot_by_op"} - set(spaces))
            width = spaces.get("obs", None)
            if missing or (width is not None and width.shape[-1] != self.bundle.state_dim):
                raise ValueError(
                    f"observation_space must be a Dict with obs [{self.bundle.state_dim}], "
                    f"blueprint_indices, action_mask and slot_by_op; missing {missing}, obs "
                    f"shape {None if width is None else width.shape}")

    def set_entropy_weights(self, weights: Mapping[str, float] | None) -> None:
        """Each head's entropy weight relative to RLlib's ``entropy_coeff`` (default 1);
        call it on every learner to anneal one head (``examples/rllib_ppo.py``)."""
        self._dist_cls = FactoredMaskedDistribution.bind(
            self.bundle.action_space, floors=self._floors,
            floor_mode=self.bundle.config.floor_mode, entropy_weights=weights)

    # RLlib's torch modules declare TorchDistribution; any Distribution works. One class
    # acts, explores and trains.
    def get_inference_action_dist_cls(self) -> type[FactoredMaskedDistribution]:  # type: ignore[override]
        return self._dist_cls

    get_exploration_action_dist_cls = get_inference_action_dist_cls  # type: ignore[assignment]
    get_train_action_dist_cls = get_inference_action_dist_cls  # type: ignore[assignment]

    def get_initial_state(self) -> dict[str, Tensor]:
        """Zero state ``{"h", "c"}``, each ``[L, H]`` (RLlib adds the batch axis first)."""
        h, c = self.network.get_initial_hidden(1)  # [L, 1, H]
        return {"h": h[:, 0], "c": c[:, 0]}

    def _trunk(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        obs, state = batch[Columns.OBS], batch[Columns.STATE_IN]
        hidden = (state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous())
        return self.network(obs["obs"], obs["blueprint_indices"].long(), hidden)

    def _inputs(self, out: Mapping[str, Any], obs: Mapping[str, Tensor], real: Tensor) -> Tensor:
        logits = {name: out[f"{name}_logits"] for name in self.bundle.action_space.head_names}
        return self._dist_cls.to_inputs(logits, obs["action_mask"], obs["slot_by_op"], real)

    def _act(self, batch: Mapping[str, Any], deterministic: bool) -> dict[str, Any]:
        with torch.no_grad():
            out = self._trunk(batch)
            obs = batch[Columns.OBS]
            inputs = self._inputs(out, obs, obs["obs"].new_ones(obs["obs"].shape[:-1]))
            dist = self._dist_cls.from_logits(inputs)
            actions, logp = (dist.to_deterministic() if deterministic else dist).sample(
                return_logp=True)
        h, c = out["hidden"]
        return {Columns.ACTIONS: actions, Columns.ACTION_LOGP: logp,
                Columns.ACTION_DIST_INPUTS: inputs,
                Columns.STATE_OUT: {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}}

    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._act(batch, deterministic=False)

    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._act(batch, deterministic=True)

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        out = self._trunk(batch)
        obs = batch[Columns.OBS]
        real = batch.get(Columns.LOSS_MASK)
        real = obs["obs"].new_ones(obs["obs"].shape[:-1]) if real is None else real
        return {Columns.ACTION_DIST_INPUTS: self._inputs(out, obs, real),
                Columns.EMBEDDINGS: out["lstm_out"]}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Tensor:
        """V(s) ``[B, T]``: from ``embeddings`` (``lstm_out``) when given, else a trunk pass."""
        if embeddings is None:
            return self._trunk(batch)["state_value"]
        return self.network.compute_state_value(embeddings)


def rl_module_spec_from_checkpoint(path: str | os.PathLike[str], **model_config: Any,
                                   ) -> RLModuleSpec:
    """An ``RLModuleSpec`` whose module starts from the slotformer checkpoint at ``path``
    (its network type and grid; ``model_config`` adds or overrides keys, e.g. ``rows`` and
    ``cols`` for a transformer on another grid). Every process that builds the module reads
    ``path``: on a cluster, put it where every node sees it.

    Raises:
        CheckpointError: see `slotformer.load_checkpoint`.
        ValueError: the checkpoint's slot ids are not a full ``rows x cols`` grid.
    """
    payload = read_checkpoint(path, map_location="cpu")
    saved = SlotConfig(tuple(payload["slot_ids"]))
    rows = 1 + max(r for r, _ in saved.positions)
    cols = 1 + max(c for _, c in saved.positions)
    if SlotConfig.for_grid(rows, cols) != saved:
        raise ValueError(f"checkpoint {path} has slot ids {list(saved.slot_ids)}, expected a "
                         f"full grid (SlotConfig.for_grid) for an RLlib module")
    config = {"rows": rows, "cols": cols, "network": payload["policy_type"],
              "checkpoint": str(Path(path)), **model_config}
    return RLModuleSpec(module_class=SlotformerRLModule, model_config=config)


def save_slotformer_checkpoint(module: SlotformerRLModule, path: str | os.PathLike[str],
                               extra: Mapping[str, Any] | None = None) -> Path:
    """Save an RLlib-trained module's bundle as a slotformer checkpoint
    (`slotformer.save_checkpoint`; load it with `slotformer.load_checkpoint`)."""
    unwrapped = module.unwrapped()  # the module itself, or the one inside RLlib's DDP wrapper
    assert isinstance(unwrapped, SlotformerRLModule)
    return save_checkpoint(path, unwrapped.bundle, extra=extra)
