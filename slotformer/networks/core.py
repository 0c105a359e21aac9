"""The shared actor-critic core: everything right of the trunk, one implementation.

A network (`SlotTransformerActorCritic`, `FactoredRecurrentActorCritic`) supplies only its
trunk (observation -> temporal representation), its slot head and its contribution
predictor. Heads' logits, masks, op-conditioned canonicalisation, probability floors,
fp32 log-probs, normalised entropies, sampling, V(s) and Q(s, op) are computed here, by the
same functions at rollout (`get_action`) and at update (`evaluate_actions`).

What that guarantees for the PPO ratio at epoch 0 (tests marked ``parity``, run in CI under
1 and 2 threads, ``ATEN_CPU_CAPABILITY=avx2`` / ``default`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2``):

* an update that re-scores the stored steps one at a time (``T = 1`` per call, the rollout's
  shapes) reproduces the rollout's log-probs bit for bit: the same kernels on the same
  shapes (on CPU the LSTM takes ``torch.lstm``'s grad-mode kernel in both);
* an update that scores ``T > 1`` steps in one call (the usual case) agrees within fp32
  rounding, ``|log-prob difference| <= 1e-5``: the matmul library picks its kernel (and
  blocking) by shape, so ``[B*T, ...]`` products may round differently from ``T`` products
  of ``[B, ...]`` (about 1e-6 on AVX-512 CPUs with MKL).

Shapes: ``B`` batch, ``T`` time, ``D`` state features, ``N`` slots, ``H`` recurrent width.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slotformer.actions import ActionSpace, PaddedHeads, canonicalize_head
from slotformer.config import DEFAULT_BASE_DIM, ObservationLayout, SlotConfig
from slotformer.distributions import (
    check_logits_and_mask,
    gather_log_prob,
    greedy_actions,
    mask_logits,
    masked_log_probs,
    normalised_entropy,
    sample_actions,
)
from slotformer.layers.lstm import ResidualLSTM
from slotformer.validation import describe_shape, validation_enabled

Hidden = tuple[Tensor, Tensor]
"""Recurrent state ``(h, c)``, each ``[lstm_layers, B, H]``."""
ProbabilityFloor = float | Mapping[str, float] | None
"""A minimum probability per valid action: one float for every head, or per head name."""
VALUE_BASELINES = ("q", "v")
_Value = TypeVar("_Value")


class GetActionResult(NamedTuple):
    """What `get_action` returns (one rollout step). Every tensor is ``[B]`` unless noted.

    Attributes:
        actions: chosen action per head name, int64.
        log_probs: fp32 log-prob of each head's action under its canonicalised, floored
            distribution (exactly 0 for a head irrelevant to the chosen op).
        values: the baseline selected by ``value_baseline`` (Q(s, op) or V(s)).
        hidden: the recurrent state after this step, ``(h, c)`` each ``[layers, B, H]``.
        sampled_op: the chosen op (same as ``actions[op_head]``).
        op_logits: ``[B, num_ops]`` masked op logits when ``return_op_logits`` else None.
        head_entropies: normalised entropy per head name, fp32 in [0, 1].
    """

    actions: dict[str, Tensor]
    log_probs: dict[str, Tensor]
    values: Tensor
    hidden: Hidden
    sampled_op: Tensor
    op_logits: Tensor | None
    head_entropies: dict[str, Tensor]


class _EvaluateActionsTuple(NamedTuple):
    log_probs: dict[str, Tensor]
    value: Tensor
    entropy: dict[str, Tensor]
    hidden: Hidden
    pred_contributions: Tensor  # [B, T, N]
    q_value: Tensor


class EvaluateActionsResult(_EvaluateActionsTuple):
    """What `evaluate_actions` returns. Every tensor is ``[B, T]`` unless noted.

    It is the contract's 6-tuple ``(log_probs, value, entropy, hidden, pred_contributions,
    q_value)`` (dicts are keyed by head name; ``pred_contributions`` is ``[B, T, N]``), plus
    the attribute ``state_value`` (V(s)), so that a loss can train both value heads (needed
    under DDP without unused parameters).
    """

    state_value: Tensor

    def __new__(
        cls,
        log_probs: dict[str, Tensor],
        value: Tensor,
        entropy: dict[str, Tensor],
        hidden: Hidden,
        pred_contributions: Tensor,
        q_value: Tensor,
        state_value: Tensor,
    ) -> EvaluateActionsResult:
        self = super().__new__(cls, log_probs, value, entropy, hidden, pred_contributions, q_value)
        self.state_value = state_value
        return self


@dataclass(frozen=True)
class SlotContext:
    """The grid a call runs on: its slot config, observation layout and position ids."""

    slot_config: SlotConfig
    layout: ObservationLayout
    action_space: ActionSpace
    row_ids: Tensor  # [N]
    col_ids: Tensor  # [N]
    padded_heads: PaddedHeads  # the heads the policy step scores together

    @property
    def num_slots(self) -> int:
        return self.slot_config.num_slots


@dataclass
class TrunkOutput:
    """What a network's trunk hands to the shared core."""

    temporal: Tensor  # [B, T, H]: the recurrent core's output (``lstm_out``)
    value_features: Tensor  # [B, T, F]: input of the V(s) head (Q adds the op one-hot)
    hidden: Hidden
    slot_repr: Tensor | None = None  # [B, T, N, D] for networks with per-slot representations
    extras: dict[str, Any] | None = None


def as_autograd_input(value: _Value) -> _Value:
    """``value`` with every tensor made under ``torch.inference_mode`` cloned into a normal one.

    Tensors made under inference mode (``get_action``'s outputs: actions, hidden state) cannot
    be saved for backward; a trainer feeding stored rollout tensors to a differentiable call
    should not have to know that. Tensors nested in tuples and mappings are handled (mappings
    come back as dicts); anything else is returned as is, for the callee's checks to name.

    Nothing is copied inside inference mode (a rollout: nothing is saved for backward) or while
    ``torch.compile`` traces (dynamo cannot trace ``is_inference()``; the policy bundles call
    this before entering a compiled network).
    """
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return value
    return cast(_Value, _clone_inference_tensors(value))


def _clone_inference_tensors(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, tuple):
        return tuple(_clone_inference_tensors(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _clone_inference_tensors(v) for k, v in value.items()}
    return value


def _head_label(name: str, for_chosen_op: bool = False, slot_by_op: bool = False) -> str:
    """How value-check errors name a head: its logits and the argument its mask came from."""
    if slot_by_op:
        return f"{name}_logits (mask: slot_by_op_mask at the chosen op)"
    suffix = " for the chosen op" if for_chosen_op else ""
    return f"{name}_logits (mask: {name}_mask{suffix})"


class ActorCriticCore(nn.Module, ABC):
    """Base class of the actor-critic networks. Subclasses implement the trunk and slot head.

    Args:
        state_dim: D, the flat observation width (``base_dim + N * slot_dim``).
        slot_config: the slots (default: 3 in one row).
        lstm_hidden_dim: H.
        lstm_layers: recurrent layers.
        value_baseline: ``"q"`` (``value`` = Q(s, op), the original plan) or ``"v"``
            (``value`` = V(s), the unbiased PPO baseline).
        action_space: the factored heads (default: the contract's eight heads).
        base_dim: features in the base block of the observation (default 23).
    """

    network_type: ClassVar[str]
    supports_slot_config_override: ClassVar[bool] = False

    def __init__(
        self,
        state_dim: int,
        slot_config: SlotConfig | None,
        lstm_hidden_dim: int,
        lstm_layers: int,
        value_baseline: str,
        action_space: ActionSpace | None = None,
        base_dim: int = DEFAULT_BASE_DIM,
    ) -> None:
        super().__init__()
        if value_baseline not in VALUE_BASELINES:
            raise ValueError(
                f"value_baseline must be one of {list(VALUE_BASELINES)}, got {value_baseline!r}"
            )
        self.slot_config = slot_config if slot_config is not None else SlotConfig.default()
        num_slots = self.slot_config.num_slots
        self.action_space = (
            action_space if action_space is not None else ActionSpace.default(num_slots)
        )
        if self.action_space.pointer_head is None:
            raise ValueError("the networks need an action space with a pointer (slot) head")
        if self.action_space.num_slots != num_slots:
            raise ValueError(
                f"action_space's pointer head {self.action_space.pointer_head!r} has "
                f"{self.action_space.num_slots} choices but slot_config has {num_slots} slots"
            )
        self.layout = ObservationLayout.infer(state_dim, num_slots, base_dim)
        self.state_dim = state_dim
        self.lstm_hidden_dim = lstm_hidden_dim
        self.lstm_layers = lstm_layers
        self.value_baseline = value_baseline
        self.num_ops = self.action_space.num_ops
        self._contexts: dict[tuple[tuple[str, ...], str], SlotContext] = {}
        # Mask rows with no valid action met while validation was off (each fell back to
        # action 0; see masked_log_probs): a device counter, so counting costs no host sync.
        self.register_buffer("empty_mask_rows", torch.zeros((), dtype=torch.long), persistent=False)
        self.empty_mask_rows: Tensor

    # ------------------------------------------------------------------ subclass hooks
    # Modules every subclass builds (the shared core reads them by these names).
    lstm: ResidualLSTM
    state_value_head: nn.Module
    q_head: nn.Module
    contribution_predictor: nn.Module

    @abstractmethod
    def _trunk(
        self,
        state: Tensor,
        blueprint_indices: Tensor,
        active_mask: Tensor,
        hidden: Hidden | None,
        ctx: SlotContext,
    ) -> TrunkOutput:
        """Observation ``[B, T, D]`` -> temporal representation and recurrent state."""

    @abstractmethod
    def _slot_logits(self, trunk: TrunkOutput) -> Tensor:
        """Raw pointer logits ``[B, T, N]`` (no masking)."""

    @abstractmethod
    def _contributions(self, trunk: TrunkOutput, stop_gradient: bool) -> Tensor:
        """Per-slot contribution predictions ``[B, T, N]``."""

    def _on_trunk_done(self, trunk: TrunkOutput) -> None:
        """Called after each trunk run outside compiled regions (telemetry)."""

    # ------------------------------------------------------------------ weights
    def _categorical_head_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.action_space.head_names if n != self.action_space.pointer_head)

    def head_module(self, name: str) -> nn.Module:
        """The module producing head ``name``'s logits (attribute ``{name}_head``)."""
        module = getattr(self, f"{name}_head")
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name}_head is not a module")
        return module

    # ------------------------------------------------------------------ public API
    def get_initial_hidden(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Hidden:
        """Zero recurrent state ``(h, c)``, each ``[lstm_layers, batch_size, H]``."""
        if device is None:
            device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        return self.lstm.initial_hidden(batch_size, device=device, dtype=dtype)

    def slot_context(self, slot_config: SlotConfig | None = None) -> SlotContext:
        """The grid for a call: the constructor's, or another one where the network allows."""
        config = self.slot_config if slot_config is None else slot_config
        if config != self.slot_config and not self.supports_slot_config_override:
            raise ValueError(
                f"{type(self).__name__} is fixed to its constructor's {self.slot_config.num_slots} "
                f"slots {list(self.slot_config.slot_ids)}; got slot_config with "
                f"{config.num_slots} slots {list(config.slot_ids)}. Only "
                f"SlotTransformerActorCritic runs on another grid."
            )
        device = next(self.parameters()).device
        key = (config.slot_ids, str(device))
        ctx = self._contexts.get(key)
        if ctx is None:
            # The context is cached across calls, and the first call is usually get_action
            # (under inference mode): position ids made there would be inference tensors, and
            # every later differentiable call (evaluate_actions) would fail when the
            # positional embedding saves them for backward.
            action_space = self.action_space.with_num_slots(config.num_slots)
            with torch.inference_mode(False):
                row_ids, col_ids = config.position_ids(device)
                padded_heads = PaddedHeads.from_space(action_space, device)
            ctx = SlotContext(
                slot_config=config,
                layout=ObservationLayout(config.num_slots, self.layout.slot_dim, self.layout.base_dim),
                action_space=action_space,
                row_ids=row_ids,
                col_ids=col_ids,
                padded_heads=padded_heads,
            )
            self._contexts[key] = ctx
        return ctx

    def forward(
        self,
        state: Tensor,
        blueprint_indices: Tensor | None,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        probability_floor: ProbabilityFloor = None,
        *,
        masks: Mapping[str, Tensor | None] | None = None,
        slot_config: SlotConfig | None = None,
        active_mask: Tensor | None = None,
    ) -> dict[str, Any]:
        """Run the network over a sequence.

        Args:
            state: flat observations ``[B, T, D]``.
            blueprint_indices: int64 ``[B, T, N]``, -1 for an empty slot (None only with
                ``active_mask``).
            hidden: recurrent state ``(h, c)`` each ``[layers, B, H]``; None = zeros.
            slot_mask ... op_mask: bool masks (True = valid) ``[B, T, n]`` or ``[B, n]``
                (broadcast over T); None = all valid.
            probability_floor: a minimum probability per valid action, one float for every
                head or a mapping head name -> float.
            masks: masks by head name, for action spaces with other head names.
            slot_config: run on another grid (transformer only).
            active_mask: explicit slot activity ``[B, T, N]`` for callers without blueprint
                indices.

        Returns:
            dict with ``"{head}_logits"`` ``[B, T, n]`` (base masks applied with
            ``MASKED_LOGIT_VALUE``), ``value``, ``state_value``, ``q_value`` ``[B, T]``,
            ``lstm_out`` ``[B, T, H]``, ``sampled_op`` ``[B, T]`` (drawn from the floored op
            distribution; Q is evaluated at it) and ``hidden``.
        """
        ctx = self.slot_context(slot_config)
        state, blueprint_indices, active = self._check_observation(
            state, blueprint_indices, active_mask, ctx, allow_2d=False
        )
        B, T = state.shape[:2]
        head_masks = self._collect_masks(
            ctx, B, T, state.device, masks,
            slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
            alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
            alpha_curve=alpha_curve_mask, op=op_mask,
        )
        floors = self._floors(probability_floor, ctx)
        # A hidden state carried from get_action is an inference tensor; forward may be
        # differentiated (a bundle's forward at update), so it gets a normal copy.
        hidden = as_autograd_input(hidden)
        trunk, logits = self._trunk_and_logits(state, blueprint_indices, active, hidden, ctx)
        sampled_op = sample_actions(self._op_log_probs(logits, head_masks, floors, ctx))  # [B, T]
        value, state_value, q_value = self._values(trunk, sampled_op)
        out: dict[str, Any] = {
            f"{name}_logits": mask_logits(logits[name], head_masks[name])
            for name in ctx.action_space.head_names
        }
        out.update(
            value=value,
            state_value=state_value,
            q_value=q_value,
            lstm_out=trunk.temporal,
            sampled_op=sampled_op,
            hidden=trunk.hidden,
        )
        return out

    @torch.inference_mode()
    def get_action(
        self,
        state: Tensor,
        blueprint_indices: Tensor | None,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        slot_by_op_mask: Tensor | None = None,
        deterministic: bool = False,
        return_op_logits: bool = False,
        probability_floor: ProbabilityFloor = None,
        *,
        masks: Mapping[str, Tensor | None] | None = None,
        slot_config: SlotConfig | None = None,
        active_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> GetActionResult:
        """Choose one action per environment (one rollout step), under inference mode.

        Args:
            state: ``[B, D]`` or ``[B, 1, D]`` (T must be 1).
            blueprint_indices: ``[B, N]`` or ``[B, 1, N]`` int64, -1 = empty slot.
            hidden: recurrent state from the previous step (None = zeros).
            slot_mask ... op_mask: bool ``[B, n]`` or ``[B, 1, n]``; None = all valid.
            slot_by_op_mask: bool ``[B, num_ops, N]``: the slot mask to use for each op
                (it replaces ``slot_mask`` for the chosen op).
            deterministic: take each head's most likely action instead of sampling.
            return_op_logits: also return the masked op logits ``[B, num_ops]``.
            probability_floor: as in `forward`.
            generator: optional RNG for sampling.

        Returns:
            `GetActionResult`; every per-step tensor is ``[B]``.
        """
        ctx = self.slot_context(slot_config)
        state, blueprint_indices, active = self._check_observation(
            state, blueprint_indices, active_mask, ctx, allow_2d=True
        )
        B, T = state.shape[:2]
        if T != 1:
            raise ValueError(
                f"get_action takes one time step: state has shape {describe_shape(state)} "
                f"(T={T}), expected [B, D] or [B, 1, D]"
            )
        head_masks = self._collect_masks(
            ctx, B, T, state.device, masks,
            slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
            alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
            alpha_curve=alpha_curve_mask, op=op_mask,
        )
        slot_by_op = self._check_slot_by_op(slot_by_op_mask, ctx, B, T)
        floors = self._floors(probability_floor, ctx)
        trunk, logits = self._trunk_and_logits(state, blueprint_indices, active, hidden, ctx)
        actions, log_probs, entropies = self._policy(
            logits, head_masks, floors, ctx, slot_by_op,
            given_actions=None, deterministic=deterministic, generator=generator,
        )
        op_name = ctx.action_space.op_head
        op = actions[op_name]
        value, _, _ = self._values(trunk, op)
        op_logits = (
            mask_logits(logits[op_name], head_masks[op_name])[:, 0] if return_op_logits else None
        )
        return GetActionResult(
            actions={k: v[:, 0] for k, v in actions.items()},
            log_probs={k: v[:, 0] for k, v in log_probs.items()},
            values=value[:, 0],
            hidden=trunk.hidden,
            sampled_op=op[:, 0],
            op_logits=op_logits,
            head_entropies={k: v[:, 0] for k, v in entropies.items()},
        )

    def evaluate_actions(
        self,
        states: Tensor,
        blueprint_indices: Tensor | None,
        actions: Mapping[str, Tensor],
        slot_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        hidden: Hidden | None = None,
        probability_floor: ProbabilityFloor = None,
        aux_stop_gradient: bool = True,
        *,
        slot_by_op_mask: Tensor | None = None,
        masks: Mapping[str, Tensor | None] | None = None,
        slot_config: SlotConfig | None = None,
        active_mask: Tensor | None = None,
    ) -> EvaluateActionsResult:
        """Log-probs, values and entropies of stored actions (differentiable; PPO update).

        Uses the stored op for canonicalisation and for Q(s, op). Deterministic in train
        mode on the policy and value path: only the auxiliary contribution predictor has
        dropout (and the transformer's encoder, if built with ``encoder_dropout > 0``).

        Args:
            states: ``[B, T, D]``.
            blueprint_indices: int64 ``[B, T, N]``.
            actions: int64 ``[B, T]`` per head name (every head).
            slot_mask ... op_mask: bool ``[B, T, n]`` or ``[B, n]``; the masks stored at
                rollout. None = all valid.
            hidden: the recurrent state at the start of the sequences (None = zeros).
            probability_floor: as at rollout.
            aux_stop_gradient: detach the contribution predictor's input so the auxiliary
                task does not shape the shared representation.
            slot_by_op_mask: ``[B, num_ops, N]`` or ``[B, T, num_ops, N]`` if the rollout
                used one.

        Returns:
            `EvaluateActionsResult` (unpacks as ``log_probs, value, entropy, hidden,
            pred_contributions, q_value``; ``.state_value`` is V(s)).
        """
        ctx = self.slot_context(slot_config)
        states, blueprint_indices, active = self._check_observation(
            states, blueprint_indices, active_mask, ctx, allow_2d=False, name="states"
        )
        B, T = states.shape[:2]
        head_masks = self._collect_masks(
            ctx, B, T, states.device, masks,
            slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
            alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
            alpha_curve=alpha_curve_mask, op=op_mask,
        )
        given = self._check_actions(actions, ctx, B, T, states.device)
        slot_by_op = self._check_slot_by_op(slot_by_op_mask, ctx, B, T)
        hidden = as_autograd_input(hidden)
        floors = self._floors(probability_floor, ctx)
        trunk, logits = self._trunk_and_logits(states, blueprint_indices, active, hidden, ctx)
        _, log_probs, entropies = self._policy(
            logits, head_masks, floors, ctx, slot_by_op,
            given_actions=given, deterministic=False, generator=None,
        )
        value, state_value, q_value = self._values(trunk, given[ctx.action_space.op_head])
        contributions = self._contributions(trunk, stop_gradient=aux_stop_gradient)
        return EvaluateActionsResult(
            log_probs, value, entropies, trunk.hidden, contributions, q_value, state_value
        )

    def predict_contributions(
        self,
        state: Tensor,
        blueprint_indices: Tensor | None,
        hidden: Hidden | None = None,
        stop_gradient: bool = True,
        *,
        slot_config: SlotConfig | None = None,
        active_mask: Tensor | None = None,
    ) -> Tensor:
        """Predicted per-slot contributions: ``[B, N]`` for ``state [B, D]``, ``[B, T, N]``
        for ``state [B, T, D]``."""
        ctx = self.slot_context(slot_config)
        squeeze = isinstance(state, Tensor) and state.dim() == 2
        state, blueprint_indices, active = self._check_observation(
            state, blueprint_indices, active_mask, ctx, allow_2d=True
        )
        hidden = as_autograd_input(hidden)
        trunk = self._trunk(state, blueprint_indices, active, hidden, ctx)
        contributions = self._contributions(trunk, stop_gradient=stop_gradient)
        return contributions[:, 0] if squeeze else contributions

    # ------------------------------------------------------------------ shared machinery
    def _trunk_and_logits(
        self,
        state: Tensor,
        blueprint_indices: Tensor,
        active: Tensor,
        hidden: Hidden | None,
        ctx: SlotContext,
    ) -> tuple[TrunkOutput, dict[str, Tensor]]:
        """The trunk (then its telemetry) and every head's raw logits ``[B, T, n]``."""
        trunk = self._trunk(state, blueprint_indices, active, hidden, ctx)
        self._on_trunk_done(trunk)
        return trunk, self._head_logits(trunk, ctx)

    def _head_logits(self, trunk: TrunkOutput, ctx: SlotContext) -> dict[str, Tensor]:
        logits: dict[str, Tensor] = {}
        for name in ctx.action_space.head_names:
            if name == ctx.action_space.pointer_head:
                logits[name] = self._slot_logits(trunk)  # [B, T, N]
            else:
                logits[name] = self.head_module(name)(trunk.temporal)  # [B, T, n]
        return logits

    def _values(self, trunk: TrunkOutput, op: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``value`` (the one ``value_baseline`` selects), V(s) and Q(s, op), each ``[B, T]``."""
        features = trunk.value_features  # [B, T, F]
        state_value = self.state_value_head(features).squeeze(-1)
        op_one_hot = F.one_hot(op, num_classes=self.num_ops).to(features.dtype)  # [B, T, O]
        q_value = self.q_head(torch.cat([features, op_one_hot], dim=-1)).squeeze(-1)
        value = q_value if self.value_baseline == "q" else state_value
        return value, state_value, q_value

    def _op_log_probs(
        self,
        logits: Mapping[str, Tensor],
        head_masks: Mapping[str, Tensor],
        floors: Mapping[str, float],
        ctx: SlotContext,
    ) -> Tensor:
        """The op head's floored fp32 log-probs ``[B, T, num_ops]`` under its base mask."""
        op_name = ctx.action_space.op_head
        check_logits_and_mask(logits[op_name], head_masks[op_name], name=_head_label(op_name))
        return masked_log_probs(logits[op_name], head_masks[op_name], floors.get(op_name))

    def _policy(
        self,
        logits: Mapping[str, Tensor],
        head_masks: Mapping[str, Tensor],
        floors: Mapping[str, float],
        ctx: SlotContext,
        slot_by_op: Tensor | None,
        given_actions: Mapping[str, Tensor] | None,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The one path from logits to actions, log-probs and entropies (rollout and update).

        The op is decided first (sampled, argmax or given), every other head's mask is
        canonicalised for it, then each head's floored fp32 distribution scores its action.
        """
        space = ctx.action_space
        op_name = space.op_head

        def decide(head_log_probs: Tensor, given: Tensor | None) -> Tensor:
            """The given actions, else the argmax or a sample of ``head_log_probs``."""
            if given is not None:
                return given
            if deterministic:
                return greedy_actions(head_log_probs)
            return sample_actions(head_log_probs, generator=generator)

        op_log_probs = self._op_log_probs(logits, head_masks, floors, ctx)
        op = decide(op_log_probs, None if given_actions is None else given_actions[op_name])
        # With validation off an empty mask row is not an error: it falls back to action 0
        # (masked_log_probs) and is counted in `empty_mask_rows`.
        count_empty = not validation_enabled() and not torch.compiler.is_compiling()
        empty_rows: list[Tensor] = [~head_masks[op_name].any(-1)] if count_empty else []
        actions: dict[str, Tensor] = {op_name: op}
        log_probs: dict[str, Tensor] = {op_name: gather_log_prob(op_log_probs, op)}
        entropies: dict[str, Tensor] = {op_name: normalised_entropy(op_log_probs, head_masks[op_name])}

        # Heads one by one: the pointer (its mask may come from slot_by_op) and any head
        # whose canonical action depends on its mask.
        packed = ctx.padded_heads
        for head in space.heads:
            name = head.name
            if name == op_name or name in packed.names:
                continue
            by_op = slot_by_op if name == space.pointer_head else None
            canonical = canonicalize_head(head, head_masks[name], op, by_op)
            if count_empty:
                empty_rows.append(~canonical.any(-1))
            label = _head_label(name, for_chosen_op=True, slot_by_op=by_op is not None)
            check_logits_and_mask(logits[name], canonical, name=label)
            head_log_probs = masked_log_probs(logits[name], canonical, floors.get(name))
            actions[name] = decide(
                head_log_probs, None if given_actions is None else given_actions[name]
            )
            # Sampled from head_log_probs or checked by _check_actions: in range either way,
            # so log_prob_of's range check (a host sync per head) would only repeat work.
            log_probs[name] = gather_log_prob(head_log_probs, actions[name])
            entropies[name] = normalised_entropy(head_log_probs, canonical)

        # The other heads together, padded side by side: the same maths in a few kernels.
        if packed.names:
            packed_logits = packed.pack(logits)  # [B, T, K, W]
            canonical = packed.canonicalize(packed.pack(head_masks) & packed.real, op)
            if count_empty:
                empty_rows.append(~canonical.any(-1))  # [B, T, K]
            if validation_enabled():
                for k, (name, n) in enumerate(zip(packed.names, packed.sizes)):
                    check_logits_and_mask(
                        packed_logits[..., k, :n], canonical[..., k, :n],
                        name=_head_label(name, for_chosen_op=True),
                    )
            head_floors = [floors.get(name) for name in packed.names]
            if len(set(head_floors)) == 1:
                packed_log_probs = masked_log_probs(packed_logits, canonical, head_floors[0])
            else:  # different floors per head: row by row, the same formula
                packed_log_probs = torch.stack(
                    [
                        masked_log_probs(packed_logits[..., k, :], canonical[..., k, :], floor)
                        for k, floor in enumerate(head_floors)
                    ],
                    dim=-2,
                )
            given = (
                None
                if given_actions is None
                else torch.stack([given_actions[name] for name in packed.names], dim=-1)
            )
            chosen = decide(packed_log_probs, given)  # [B, T, K]
            packed_lp = gather_log_prob(packed_log_probs, chosen)  # [B, T, K]
            packed_entropy = normalised_entropy(packed_log_probs, canonical)  # [B, T, K]
            for name, a, lp, h in zip(
                packed.names, chosen.unbind(-1), packed_lp.unbind(-1), packed_entropy.unbind(-1)
            ):
                actions[name], log_probs[name], entropies[name] = a, lp, h

        if empty_rows:
            self.empty_mask_rows.add_(sum(rows.sum() for rows in empty_rows))
        # Outputs keyed in the action space's order.
        names = space.head_names
        actions = {n: actions[n] for n in names}
        log_probs = {n: log_probs[n] for n in names}
        entropies = {n: entropies[n] for n in names}
        if given_actions is not None and validation_enabled():
            counts = torch.stack([(~torch.isfinite(lp)).sum() for lp in log_probs.values()])
            masked = dict(zip(log_probs, counts.tolist()))  # one host sync for every head
            bad = {n: c for n, c in masked.items() if c}
            if bad:
                raise ValueError(
                    f"actions include choices that their (canonicalised) masks forbid, "
                    f"count per head: {bad}; pass the masks stored at rollout"
                )
        return actions, log_probs, entropies

    def _floors(self, probability_floor: ProbabilityFloor, ctx: SlotContext) -> dict[str, float]:
        if probability_floor is None:
            return {}
        if isinstance(probability_floor, Mapping):
            unknown = sorted(set(probability_floor) - set(ctx.action_space.head_names))
            if unknown:
                raise ValueError(
                    f"probability_floor names unknown heads {unknown}; heads are "
                    f"{list(ctx.action_space.head_names)}"
                )
            floors = {k: float(v) for k, v in probability_floor.items()}
        else:
            floors = {name: float(probability_floor) for name in ctx.action_space.head_names}
        for name, value in floors.items():
            if not (0.0 <= value < 1.0) or math.isnan(value):
                raise ValueError(
                    f"probability_floor for head {name!r} is {value}, expected a value in [0, 1)"
                )
        return floors

    # ------------------------------------------------------------------ input checks
    def _check_observation(
        self,
        state: Tensor,
        blueprint_indices: Tensor | None,
        active_mask: Tensor | None,
        ctx: SlotContext,
        allow_2d: bool,
        name: str = "state",
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Validate and return ``state [B, T, D]``, ``blueprint_indices [B, T, N]``, active."""
        if not isinstance(state, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(state).__name__}")
        ranks = "[B, D] or [B, T, D]" if allow_2d else "[B, T, D]"
        # Errors quote the shapes the caller passed, before a 2-D call gains its time axis.
        given_state_shape = tuple(state.shape)
        given_blueprint_shape = (
            tuple(blueprint_indices.shape) if isinstance(blueprint_indices, Tensor) else ()
        )
        two_d = state.dim() == 2 and allow_2d
        if two_d:
            state = state.unsqueeze(1)
            if isinstance(blueprint_indices, Tensor) and blueprint_indices.dim() == 2:
                blueprint_indices = blueprint_indices.unsqueeze(1)
            if isinstance(active_mask, Tensor) and active_mask.dim() == 2:
                active_mask = active_mask.unsqueeze(1)
        if state.dim() != 3:
            raise ValueError(f"{name} has shape {describe_shape(state)}, expected {ranks}")
        B, T, D = state.shape
        if T == 0:
            raise ValueError(
                f"{name} has shape {describe_shape(state)} (T=0), expected at least one time step"
            )
        param = next(self.parameters())
        if state.device != param.device:
            raise ValueError(
                f"{name} is on device {state.device}, expected the network's device {param.device}"
            )
        if not state.is_floating_point():
            raise ValueError(
                f"{name} has dtype {state.dtype}, expected a floating dtype "
                f"({param.dtype}); integer observations are rejected, not converted"
            )
        # Dtype rule: never convert. Outside autocast the state has the parameters' dtype;
        # under autocast also the autocast dtype (any other dtype would fail deep inside,
        # e.g. float64 in a bf16 matmul).
        if state.dtype != param.dtype:
            device_type = state.device.type
            if not torch.is_autocast_enabled(device_type):
                raise ValueError(
                    f"{name} has dtype {state.dtype} but the network's parameters are "
                    f"{param.dtype}; convert with {name}.to({param.dtype}) (or run under autocast)"
                )
            autocast_dtype = torch.get_autocast_dtype(device_type)
            if state.dtype != autocast_dtype:
                raise ValueError(
                    f"{name} has dtype {state.dtype}; under {autocast_dtype} autocast it must "
                    f"be the parameters' {param.dtype} or {autocast_dtype}"
                )
        if D != ctx.layout.state_dim:
            raise ValueError(
                f"{name} has shape {describe_shape(state)}: feature size {D} does not match "
                f"state_dim={ctx.layout.state_dim} (base_dim={ctx.layout.base_dim} + "
                f"{ctx.num_slots} slots x slot_dim={ctx.layout.slot_dim})"
            )
        N = ctx.num_slots
        if blueprint_indices is None:
            if active_mask is None:
                raise ValueError("pass blueprint_indices, or an explicit active_mask without them")
            blueprint_indices = torch.full((B, T, N), -1, dtype=torch.long, device=state.device)
        if not isinstance(blueprint_indices, Tensor):
            raise ValueError(
                f"blueprint_indices must be a torch.Tensor, got {type(blueprint_indices).__name__}"
            )
        if blueprint_indices.shape != (B, T, N):
            expected = f"{(B, N)} ([B, N]" if two_d else f"{(B, T, N)} ([B, T, N]"
            raise ValueError(
                f"blueprint_indices has shape {given_blueprint_shape}, expected {expected} "
                f"with N={N} slots, matching {name} {given_state_shape})"
            )
        if blueprint_indices.dtype != torch.long:
            raise ValueError(
                f"blueprint_indices has dtype {blueprint_indices.dtype}, expected torch.int64"
            )
        if blueprint_indices.device != state.device:
            raise ValueError(
                f"blueprint_indices is on device {blueprint_indices.device}, expected {name}'s "
                f"device {state.device}"
            )
        if active_mask is not None:
            if not isinstance(active_mask, Tensor):
                raise ValueError(
                    f"active_mask must be a torch.Tensor, got {type(active_mask).__name__}"
                )
            if active_mask.shape != (B, T, N):
                raise ValueError(
                    f"active_mask has shape {describe_shape(active_mask)}, expected {(B, T, N)}"
                )
            if active_mask.device != state.device:
                raise ValueError(
                    f"active_mask is on device {active_mask.device}, expected {name}'s device "
                    f"{state.device}"
                )
        active = ctx.layout.active_mask(blueprint_indices, active_mask)  # [B, T, N]
        if validation_enabled():
            bad = ~torch.isfinite(state)
            if bool(bad.any()):
                n_nan = int(torch.isnan(state).sum())
                raise ValueError(
                    f"{name} contains non-finite values: {n_nan} NaN and "
                    f"{int(bad.sum()) - n_nan} inf (of {state.numel()} entries)"
                )
        return state, blueprint_indices, active

    def _collect_masks(
        self,
        ctx: SlotContext,
        B: int,
        T: int,
        device: torch.device,
        masks: Mapping[str, Tensor | None] | None,
        **named: Tensor | None,
    ) -> dict[str, Tensor]:
        """Every head's mask as bool ``[B, T, n]``; None -> all valid, ``[B, n]`` -> over T."""
        by_name: dict[str, Tensor | None] = {k: v for k, v in named.items() if v is not None}
        unused = sorted(f"{k}_mask" for k in by_name if k not in ctx.action_space.sizes)
        if unused:
            raise ValueError(
                f"{', '.join(unused)} given, but the action space has no such head; heads are "
                f"{list(ctx.action_space.head_names)}"
            )
        if masks is not None:
            unknown = sorted(set(masks) - set(ctx.action_space.head_names))
            if unknown:
                raise ValueError(
                    f"masks names unknown heads {unknown}; heads are "
                    f"{list(ctx.action_space.head_names)}"
                )
            by_name.update(masks)
        out: dict[str, Tensor] = {}
        for name in ctx.action_space.head_names:
            n = ctx.action_space.sizes[name]
            mask = by_name.get(name)
            if mask is None:
                out[name] = torch.ones(B, T, n, dtype=torch.bool, device=device)
                continue
            arg = f"{name}_mask"
            if not isinstance(mask, Tensor):
                raise ValueError(f"{arg} must be a torch.Tensor, got {type(mask).__name__}")
            if mask.dtype != torch.bool:
                raise ValueError(
                    f"{arg} has dtype {mask.dtype}, expected torch.bool (True = valid)"
                )
            if mask.device != device:
                raise ValueError(f"{arg} is on device {mask.device}, expected the state's {device}")
            if mask.dim() == 2 and mask.shape == (B, n):
                mask = mask.unsqueeze(1).expand(B, T, n)
            elif mask.shape != (B, T, n):
                raise ValueError(
                    f"{arg} has shape {describe_shape(mask)}, expected {(B, T, n)} or {(B, n)} "
                    f"(head {name!r} has {n} choices)"
                )
            out[name] = mask
        return out

    def _check_slot_by_op(
        self, slot_by_op: Tensor | None, ctx: SlotContext, B: int, T: int
    ) -> Tensor | None:
        if slot_by_op is None:
            return None
        num_ops, N = self.num_ops, ctx.num_slots
        if not isinstance(slot_by_op, Tensor):
            raise ValueError(
                f"slot_by_op_mask must be a torch.Tensor, got {type(slot_by_op).__name__}"
            )
        if slot_by_op.dtype != torch.bool:
            raise ValueError(f"slot_by_op_mask has dtype {slot_by_op.dtype}, expected torch.bool")
        if slot_by_op.device != ctx.row_ids.device:
            raise ValueError(
                f"slot_by_op_mask is on device {slot_by_op.device}, expected the network's "
                f"{ctx.row_ids.device}"
            )
        if slot_by_op.shape == (B, num_ops, N):
            return slot_by_op.unsqueeze(1).expand(B, T, num_ops, N)
        if slot_by_op.shape == (B, T, num_ops, N):
            return slot_by_op
        raise ValueError(
            f"slot_by_op_mask has shape {describe_shape(slot_by_op)}, expected {(B, num_ops, N)} or "
            f"{(B, T, num_ops, N)} ([B, num_ops={num_ops}, N={N}])"
        )

    def _check_actions(
        self, actions: Mapping[str, Tensor], ctx: SlotContext, B: int, T: int, device: torch.device
    ) -> dict[str, Tensor]:
        if not isinstance(actions, Mapping):
            raise ValueError(
                f"actions must be a mapping head name -> int64 [B, T], got {type(actions).__name__}"
            )
        missing = [n for n in ctx.action_space.head_names if n not in actions]
        if missing:
            raise KeyError(
                f"actions is missing heads {missing}; expected {list(ctx.action_space.head_names)}"
            )
        out: dict[str, Tensor] = {}
        for name in ctx.action_space.head_names:
            action = actions[name]
            if not isinstance(action, Tensor):
                raise ValueError(
                    f"actions[{name!r}] must be a torch.Tensor (int64 [B, T]), got "
                    f"{type(action).__name__}"
                )
            if action.device != device:
                raise ValueError(
                    f"actions[{name!r}] is on device {action.device}, expected the states' {device}"
                )
            if action.dim() == 1 and T == 1 and action.shape[0] == B:
                action = action.unsqueeze(1)
            if action.shape != (B, T):
                raise ValueError(
                    f"actions[{name!r}] has shape {describe_shape(action)}, expected {(B, T)}"
                )
            if action.dtype != torch.long:
                raise ValueError(
                    f"actions[{name!r}] has dtype {action.dtype}, expected torch.int64"
                )
            out[name] = as_autograd_input(action)
        if validation_enabled():
            sizes = ctx.action_space.sizes
            any_out_of_range = torch.stack(
                [((action < 0) | (action >= sizes[name])).any() for name, action in out.items()]
            )
            # One host sync for every head; the values are read back only for an error.
            for (name, action), has_bad in zip(out.items(), any_out_of_range.tolist()):
                if has_bad:
                    n = sizes[name]
                    bad = sorted(set(action[(action < 0) | (action >= n)].tolist()))[:10]
                    raise ValueError(f"actions[{name!r}] has values {bad} outside [0, {n})")
        return out


def init_actor_critic_weights(network: ActorCriticCore, skip: tuple[nn.Module, ...] = ()) -> None:
    """The one place the networks' weights are initialised.

    Orthogonal (gain sqrt(2), zero bias) for every Linear outside ``skip``. Modules in
    ``skip`` keep their own init: the encoder (Xavier in its attention blocks, PyTorch's
    default for its slot projection) and the LSTM (orthogonal gates; PyTorch's default for
    its input projection, when it has one). Gain 0.01 for the last
    layer of every action head and both value heads, so the initial policy is near uniform
    and initial values near 0; gain 0.1 with zero bias for the contribution predictor's
    last layer.
    """
    skipped = {id(p) for module in skip for p in module.parameters()}
    for module in network.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in skipped:
            nn.init.orthogonal_(module.weight, gain=math.sqrt(2))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def last_linear(module: nn.Module) -> nn.Linear:
        output_layer = getattr(module, "output_layer", None)
        if isinstance(output_layer, nn.Linear):
            return output_layer
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        return linears[-1]

    for name in network.action_space.head_names:
        nn.init.orthogonal_(last_linear(network.head_module(name)).weight, gain=0.01)
    for value_module in (network.state_value_head, network.q_head):
        nn.init.orthogonal_(last_linear(value_module).weight, gain=0.01)
    contribution_out = last_linear(network.contribution_predictor)
    nn.init.orthogonal_(contribution_out.weight, gain=0.1)
    if contribution_out.bias is not None:
        nn.init.zeros_(contribution_out.bias)
