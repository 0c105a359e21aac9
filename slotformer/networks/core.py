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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace, PaddedHeads, _relevance, canonicalize_head
from slotformer.config import ObservationLayout, SlotConfig
from slotformer.distributions import (  # the unchecked forms: the boundary checked the inputs
    LOG_PROB_MIN,
    _masked_log_probs,
    _normalised_entropy,
    check_logit_values,
    gather_log_prob,
    greedy_actions,
    mask_logits,
    sample_actions,
)
from slotformer.layers.lstm import ResidualLSTM
from slotformer.networks.configs import (
    VALUE_BASELINES,
    ActorCriticConfig,
)
from slotformer.networks.inputs import (
    Hidden,
    PolicyInputs,
    ProbabilityFloor,
    SlotContext,
    as_autograd_input,
    read_inputs,
)
from slotformer.networks.results import (
    ActionResult,
    EvalResult,
    EvaluateActionsResult,
    GetActionResult,
    TrunkIntermediates,
)
from slotformer.validation import describe_shape, expect, validation_enabled

# Names that lived here before the split stay importable from this module.
__all__ = [
    "VALUE_BASELINES",
    "ActionResult",
    "ActorCriticConfig",
    "ActorCriticCore",
    "EvalResult",
    "EvaluateActionsResult",
    "GetActionResult",
    "Hidden",
    "ProbabilityFloor",
    "SlotContext",
    "TrunkOutput",
    "as_autograd_input",
    "init_actor_critic_weights",
]


# Head name -> the reference network's attribute for its size.
_SIZE_ATTRIBUTES = {
    "blueprint": "num_blueprints",
    "style": "num_styles",
    "tempo": "num_tempo",
    "alpha_target": "num_alpha_targets",
    "alpha_speed": "num_alpha_speeds",
    "alpha_curve": "num_alpha_curves",
}


@dataclass
class TrunkOutput:
    """What a network's trunk hands to the shared core."""

    temporal: Tensor  # [B, T, H]: the recurrent core's output (``lstm_out``): V and Q read it
    hidden: Hidden
    slot_repr: Tensor | None = None  # [B, T, N, D] for networks with per-slot representations
    intermediates: TrunkIntermediates | None = None  # when asked for


def _head_label(name: str, for_chosen_op: bool = False, slot_by_op: bool = False) -> str:
    """How value-check errors name a head: its logits and the argument its mask came from."""
    if slot_by_op:
        return f"{name}_logits (mask: slot_by_op_mask at the chosen op)"
    suffix = " for the chosen op" if for_chosen_op else ""
    return f"{name}_logits (mask: {name}_mask{suffix})"


class ActorCriticCore(nn.Module, ABC):
    """Base class of the actor-critic networks. Subclasses implement the trunk and slot head.

    Args:
        config: the network's hyper-parameters (its subclass of `ActorCriticConfig`);
            ``state_dim`` None is filled in for ``slot_config``.
        slot_config: the slots (default: 3 in one row).
        action_space: the factored heads (default: the contract's eight heads).
    """

    network_type: ClassVar[str]
    supports_slot_config_override: ClassVar[bool] = False
    # The reference network's size attributes; each is set when the action space has that
    # head (`head_sizes` has every head's size under any name).
    num_slots: int
    num_ops: int
    num_blueprints: int
    num_styles: int
    num_tempo: int
    num_alpha_targets: int
    num_alpha_speeds: int
    num_alpha_curves: int

    def __init__(
        self,
        config: ActorCriticConfig,
        slot_config: SlotConfig | None,
        action_space: ActionSpace | None = None,
    ) -> None:
        super().__init__()
        self.slot_config = slot_config if slot_config is not None else SlotConfig.default()
        num_slots = self.slot_config.num_slots
        self.config = config.for_slots(self.slot_config)
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
        assert self.config.state_dim is not None
        self.layout = self._layout(self.config, num_slots)
        self.state_dim = self.config.state_dim
        self.lstm_hidden_dim = config.lstm_hidden_dim
        self.lstm_layers = config.lstm_layers
        self.value_baseline = config.value_baseline
        self.num_ops = self.action_space.num_ops
        # The reference network's size attributes, for the heads this action space has
        # (`head_sizes` holds every head's, under any names).
        self.num_slots = num_slots
        for head, attribute in _SIZE_ATTRIBUTES.items():
            if head in self.action_space.sizes:
                setattr(self, attribute, self.action_space.sizes[head])
        self._contexts: dict[tuple[tuple[str, ...], str], SlotContext] = {}
        # Mask rows with no valid action met while validation was off (each fell back to
        # action 0; see masked_log_probs): a device counter, so counting costs no host sync.
        self.register_buffer("empty_mask_rows", torch.zeros((), dtype=torch.long), persistent=False)
        self.empty_mask_rows: Tensor

    def _layout(self, config: ActorCriticConfig, num_slots: int) -> ObservationLayout | None:
        """Where the base block and the slots sit in the flat observation: from ``slot_dim``
        when given, else inferred from ``state_dim``; None for a network that reads the
        vector whole (the flat LSTM) when it is not ``base_dim + N * slot_dim``."""
        assert config.state_dim is not None
        if config.slot_dim is not None:
            layout = ObservationLayout(num_slots, config.slot_dim, config.base_dim)
            if layout.state_dim != config.state_dim:
                raise ValueError(
                    f"state_dim={config.state_dim} does not match base_dim={config.base_dim} + "
                    f"{num_slots} slots x slot_dim={config.slot_dim} = {layout.state_dim}"
                )
            return layout
        try:
            return ObservationLayout.infer(config.state_dim, num_slots, config.base_dim)
        except ValueError:
            if self.needs_layout:
                raise
            return None

    # ------------------------------------------------------------------ subclass hooks
    # Whether the trunk reads the base block and the slots apart (the Slot Transformer) or
    # the flat vector whole (the flat LSTM, which then takes any state_dim).
    needs_layout: ClassVar[bool] = True
    # Modules every subclass builds (the shared core reads them by these names); the
    # auxiliary heads are None when the config switches them off.
    lstm: ResidualLSTM
    state_value_head: nn.Module
    q_head: nn.Module | None
    contribution_predictor: nn.Module | None

    @abstractmethod
    def _trunk(self, inputs: PolicyInputs, return_intermediates: bool = False) -> TrunkOutput:
        """Observation ``inputs.state [B, T, D]`` -> temporal representation and recurrent
        state (and `TrunkIntermediates` when asked)."""

    @abstractmethod
    def _slot_logits(self, trunk: TrunkOutput) -> Tensor:
        """Raw pointer logits ``[B, T, N]`` (no masking)."""

    @abstractmethod
    def _contributions(self, trunk: TrunkOutput, stop_gradient: bool) -> Tensor:
        """Per-slot contribution predictions ``[B, T, N]`` (only called when the network
        has a contribution predictor)."""

    # ------------------------------------------------------------------ head sizes
    @property
    def head_sizes(self) -> dict[str, int]:
        """Number of choices per head name (any action space)."""
        return self.action_space.sizes

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
            layout = (
                None
                if self.layout is None
                else ObservationLayout(config.num_slots, self.layout.slot_dim, self.layout.base_dim)
            )
            ctx = SlotContext(
                slot_config=config,
                layout=layout,
                state_dim=self.state_dim if layout is None else layout.state_dim,
                action_space=action_space,
                row_ids=row_ids,
                col_ids=col_ids,
                padded_heads=padded_heads,
            )
            self._contexts[key] = ctx
        return ctx

    def _read(self, state: object, blueprint_indices: object, **kwargs: Any) -> PolicyInputs:
        """The boundary: this call's arguments checked and normalised (`read_inputs`)."""
        ctx = self.slot_context(kwargs.pop("slot_config", None))
        return read_inputs(ctx, next(self.parameters()), state, blueprint_indices, **kwargs)

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
        sample_op: bool = False,
        generator: torch.Generator | None = None,
        return_intermediates: bool = False,
        episode_starts: Tensor | None = None,
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
            sample_op: draw ``sampled_op`` from the floored op distribution (with
                ``generator``, or the global RNG). By default it is the most likely op and
                forward consumes no randomness.
            generator: RNG for ``sample_op``.
            return_intermediates: also return what the trunk computed on the way (the
                transformer's attention maps) as ``"intermediates"``, a `TrunkIntermediates`.
            episode_starts: bool ``[B, T]``, True where a new episode begins at that step:
                the recurrent state is zeroed before it.

        Returns:
            dict with ``"{head}_logits"`` ``[B, T, n]`` (base masks applied with
            ``MASKED_LOGIT_VALUE``), ``value``, ``state_value``, ``q_value`` ``[B, T]``,
            ``lstm_out`` ``[B, T, H]``, ``sampled_op`` ``[B, T]`` (the op Q is evaluated
            at) and ``hidden`` (and ``intermediates`` when asked).
        """
        inputs = self._read(
            state, blueprint_indices, hidden=hidden, masks=masks, slot_config=slot_config,
            active_mask=active_mask, probability_floor=probability_floor,
            episode_starts=episode_starts,
            named_masks=dict(
                slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
                alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
                alpha_curve=alpha_curve_mask, op=op_mask,
            ),
        )
        trunk, logits = self._trunk_and_logits(inputs, return_intermediates)
        op_log_probs = self._op_log_probs(logits, inputs)
        op = (
            sample_actions(op_log_probs, generator=generator)
            if sample_op
            else greedy_actions(op_log_probs)
        )  # [B, T]
        value, state_value, q_value = self._values(trunk, op)
        out: dict[str, Any] = {
            f"{name}_logits": mask_logits(logits[name], inputs.masks[name])
            for name in inputs.ctx.action_space.head_names
        }
        out.update(
            value=value,
            state_value=state_value,
            q_value=q_value,
            lstm_out=trunk.temporal,
            sampled_op=op,
            hidden=trunk.hidden,
        )
        if return_intermediates:
            out["intermediates"] = trunk.intermediates
        return out

    @torch.inference_mode()
    def get_action(
        self,
        state: Tensor,
        blueprint_indices: Tensor | None,
        hidden: Hidden | None = None,
        slot_mask: Tensor | None = None,
        slot_by_op_mask: Tensor | None = None,
        blueprint_mask: Tensor | None = None,
        style_mask: Tensor | None = None,
        tempo_mask: Tensor | None = None,
        alpha_target_mask: Tensor | None = None,
        alpha_speed_mask: Tensor | None = None,
        alpha_curve_mask: Tensor | None = None,
        op_mask: Tensor | None = None,
        deterministic: bool = False,
        return_op_logits: bool = False,
        probability_floor: ProbabilityFloor = None,
        *,
        masks: Mapping[str, Tensor | None] | None = None,
        slot_config: SlotConfig | None = None,
        active_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        episode_starts: Tensor | None = None,
    ) -> ActionResult:
        """Choose one action per environment (one rollout step), under inference mode.

        Args:
            state: ``[B, D]`` or ``[B, 1, D]`` (T must be 1), or a `SlotObservation`.
            blueprint_indices: ``[B, N]`` or ``[B, 1, N]`` int64 or int32, -1 = empty slot.
            hidden: recurrent state from the previous step (None = zeros).
            slot_mask ... op_mask: bool ``[B, n]`` or ``[B, 1, n]``; None = all valid.
            slot_by_op_mask: bool ``[B, num_ops, N]``: the slot mask to use for each op
                (it replaces ``slot_mask`` for the chosen op). Fifth, as in the reference.
            deterministic: take each head's most likely action instead of sampling.
            return_op_logits: also return the masked op logits ``[B, num_ops]``.
            probability_floor: as in `forward`.
            generator: optional RNG for sampling.
            episode_starts: bool ``[B]``: environments whose episode begins at this step
                (their ``hidden`` is zeroed first).

        Returns:
            `ActionResult` (also known as ``GetActionResult``); every tensor is ``[B]``.
        """
        inputs = self._read(
            state, blueprint_indices, allow_2d=True, one_step=True, hidden=hidden, masks=masks,
            slot_config=slot_config, active_mask=active_mask, slot_by_op=slot_by_op_mask,
            probability_floor=probability_floor, episode_starts=episode_starts,
            named_masks=dict(
                slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
                alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
                alpha_curve=alpha_curve_mask, op=op_mask,
            ),
        )
        trunk, logits = self._trunk_and_logits(inputs)
        actions, log_probs, entropies = self._policy(logits, inputs, deterministic, generator)
        op_name = inputs.ctx.action_space.op_head
        op = actions[op_name]
        if self.value_baseline == "v":  # Q is not returned here: V(s) alone
            value = self.state_value_head(trunk.temporal).squeeze(-1)
        else:
            value, _, _ = self._values(trunk, op)
        op_logits = (
            mask_logits(logits[op_name], inputs.masks[op_name])[:, 0] if return_op_logits else None
        )
        return ActionResult(
            actions={k: v[:, 0] for k, v in actions.items()},
            log_probs={k: v[:, 0] for k, v in log_probs.items()},
            value=value[:, 0],
            hidden=trunk.hidden,
            op_logits=op_logits,
            entropies={k: v[:, 0] for k, v in entropies.items()},
            sampled_op=op[:, 0],
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
        episode_starts: Tensor | None = None,
    ) -> EvalResult:
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
            episode_starts: bool ``[B, T]``, True where a new episode begins at that step:
                the recurrent state is zeroed before it, so a sequence may cross episode
                boundaries (SB3's ``episode_starts``, CleanRL's ``done``, TorchRL's
                ``is_init``). Log-probs, values and gradients then equal those of the parts
                scored as separate sequences from zero state (within fp32 rounding).

        Returns:
            `EvalResult` (also known as ``EvaluateActionsResult``); it unpacks as the
            contract's ``log_probs, value, entropies, hidden, pred_contributions,
            q_value`` (`EvalResult.to_tuple`), and ``.state_value`` is V(s).
        """
        inputs = self._read(
            states, blueprint_indices, name="states", hidden=hidden, masks=masks,
            slot_config=slot_config, active_mask=active_mask, slot_by_op=slot_by_op_mask,
            actions=actions, probability_floor=probability_floor, episode_starts=episode_starts,
            named_masks=dict(
                slot=slot_mask, blueprint=blueprint_mask, style=style_mask, tempo=tempo_mask,
                alpha_target=alpha_target_mask, alpha_speed=alpha_speed_mask,
                alpha_curve=alpha_curve_mask, op=op_mask,
            ),
        )
        assert inputs.actions is not None
        trunk, logits = self._trunk_and_logits(inputs)
        _, log_probs, entropies = self._policy(logits, inputs, False, None)
        op = inputs.actions[inputs.ctx.action_space.op_head]
        value, state_value, q_value = self._values(trunk, op)
        return EvalResult(
            log_probs=log_probs,
            value=value,
            entropies=entropies,
            hidden=trunk.hidden,
            pred_contributions=(
                None
                if self.contribution_predictor is None
                else self._contributions(trunk, stop_gradient=aux_stop_gradient)
            ),
            q_value=q_value,
            state_value=state_value,
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
        if self.contribution_predictor is None:
            raise ValueError(
                f"{type(self).__name__} was built with use_contribution_head=False: it has no "
                "contribution predictor"
            )
        inputs = self._read(
            state, blueprint_indices, allow_2d=True, hidden=hidden, with_masks=False,
            slot_config=slot_config, active_mask=active_mask,
        )
        trunk = self._trunk(inputs)
        contributions = self._contributions(trunk, stop_gradient=stop_gradient)
        return contributions[:, 0] if isinstance(state, Tensor) and state.dim() == 2 else contributions

    # ------------------------------------------------------------------ shared machinery
    def _trunk_and_logits(
        self, inputs: PolicyInputs, return_intermediates: bool = False
    ) -> tuple[TrunkOutput, dict[str, Tensor]]:
        """The trunk and every head's raw logits ``[B, T, n]``."""
        trunk = self._trunk(inputs, return_intermediates)
        return trunk, self._head_logits(trunk, inputs.ctx)

    def _head_logits(self, trunk: TrunkOutput, ctx: SlotContext) -> dict[str, Tensor]:
        logits: dict[str, Tensor] = {}
        for name in ctx.action_space.head_names:
            if name == ctx.action_space.pointer_head:
                logits[name] = self._slot_logits(trunk)  # [B, T, N]
            else:
                logits[name] = self.head_module(name)(trunk.temporal)  # [B, T, n]
        return logits

    def _values(self, trunk: TrunkOutput, op: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``value`` (the one ``value_baseline`` selects), V(s) and Q(s, op) (None without a
        Q head), each ``[B, T]``."""
        state_value = self.state_value_head(trunk.temporal).squeeze(-1)
        q_value = None if self.q_head is None else self._q(trunk.temporal, op)
        value = q_value if self.value_baseline == "q" and q_value is not None else state_value
        return value, state_value, q_value

    def _q(self, features: Tensor, op: Tensor) -> Tensor:
        """Q(s, op) ``[...]`` from ``features [..., H]``, detached from the trunk: Q is an
        auxiliary head, so its loss trains the Q head's own parameters only (as the
        reference network's ``_compute_q``)."""
        assert self.q_head is not None
        features = features.detach()
        # A comparison, not F.one_hot: one_hot range-checks its input (a host sync on GPU).
        ops = torch.arange(self.num_ops, device=op.device)
        op_one_hot = (op.unsqueeze(-1) == ops).to(features.dtype)  # [..., O]
        return self.q_head(torch.cat([features, op_one_hot], dim=-1)).squeeze(-1)

    def compute_state_value(self, features: Tensor) -> Tensor:
        """V(s) ``[...]`` from the recurrent output ``features [..., H]`` (``forward``'s
        ``"lstm_out"``), with full gradient into the trunk (it is the critic).

        Example:
            >>> from slotformer import FactoredRecurrentActorCritic
            >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=32)
            >>> out = net(torch.randn(2, 1, 116), torch.full((2, 1, 3), -1))
            >>> torch.allclose(net.compute_state_value(out["lstm_out"]), out["state_value"])
            True
        """
        self._check_features(features)
        return self.state_value_head(features).squeeze(-1)

    def compute_q(self, features: Tensor, op: Tensor) -> Tensor:
        """Q(s, op) ``[...]`` for any op, from the recurrent output ``features [..., H]``
        (``forward``'s ``"lstm_out"``) and int64 ``op [...]``.

        ``features`` is detached: Q is an auxiliary (telemetry) head whose loss trains only
        its own parameters, as in the reference network. Q of every op at once:
        ``compute_q(lstm_out.expand(O, ...), arange(O)...)``.

        Raises:
            ValueError: the network was built with ``use_q_head=False``, or bad shapes.

        Example:
            >>> from slotformer import FactoredRecurrentActorCritic
            >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=32)
            >>> lstm_out = net(torch.randn(1, 1, 116), torch.full((1, 1, 3), -1))["lstm_out"]
            >>> ops = torch.arange(net.num_ops).view(-1, 1)          # [O, 1]
            >>> net.compute_q(lstm_out.expand(net.num_ops, 1, -1), ops).shape
            torch.Size([6, 1])
        """
        if self.q_head is None:
            raise ValueError(
                f"{type(self).__name__} was built with use_q_head=False: it has no Q head"
            )
        self._check_features(features)
        expect(
            "op", op, dtype=torch.long, device=features.device, shape=tuple(features.shape[:-1]),
            hint=" (features' shape without its last dimension)",
        )
        return self._q(features, op)

    def _check_features(self, features: Tensor) -> None:
        expect("features", features, floating=True, hint=" (forward's lstm_out)")
        expect("features", features, device=next(self.parameters()).device)
        if features.dim() < 1 or features.shape[-1] != self.lstm_hidden_dim:
            raise ValueError(
                f"features has shape {describe_shape(features)}, expected [..., "
                f"lstm_hidden_dim={self.lstm_hidden_dim}] (forward's lstm_out)"
            )

    # The reference network's names for the two value computations.
    _compute_state_value = compute_state_value
    _compute_q = compute_q

    def _op_log_probs(self, logits: Mapping[str, Tensor], inputs: PolicyInputs) -> Tensor:
        """The op head's floored fp32 log-probs ``[B, T, num_ops]`` under its base mask."""
        op_name = inputs.ctx.action_space.op_head
        mask = inputs.masks[op_name]
        if validation_enabled():
            check_logit_values(logits[op_name], mask, name=_head_label(op_name))
        return _masked_log_probs(
            logits[op_name], mask, inputs.floors.get(op_name, 0.0), self.config.floor_mode
        )

    def _policy(
        self,
        logits: Mapping[str, Tensor],
        inputs: PolicyInputs,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """The one path from logits to actions, log-probs and entropies (rollout and update).

        The op is decided first (sampled, argmax or the stored one), every other head's mask
        is canonicalised for it, then each head's floored fp32 distribution scores its
        action. The inputs were checked at the boundary: only value checks run here, and
        only while validation is on.
        """
        space = inputs.ctx.action_space
        op_name = space.op_head
        head_masks, floors, given_actions = inputs.masks, inputs.floors, inputs.actions
        slot_by_op = inputs.slot_by_op
        check_values = validation_enabled()

        def decide(head_log_probs: Tensor, given: Tensor | None) -> Tensor:
            """The given actions, else the argmax or a sample of ``head_log_probs``."""
            if given is not None:
                return given
            if deterministic:
                return greedy_actions(head_log_probs)
            return sample_actions(head_log_probs, generator=generator)

        op_log_probs = self._op_log_probs(logits, inputs)
        op = decide(op_log_probs, None if given_actions is None else given_actions[op_name])
        # With validation off an empty mask row is not an error: it falls back to action 0
        # (masked_log_probs) and is counted in `empty_mask_rows`.
        count_empty = not check_values and not torch.compiler.is_compiling()
        empty_rows: list[Tensor] = [~head_masks[op_name].any(-1)] if count_empty else []
        actions: dict[str, Tensor] = {op_name: op}
        log_probs: dict[str, Tensor] = {op_name: gather_log_prob(op_log_probs, op)}
        entropies: dict[str, Tensor] = {op_name: _normalised_entropy(op_log_probs, head_masks[op_name])}

        # Heads one by one: the pointer (its mask may come from slot_by_op) and any head
        # whose canonical action depends on its mask.
        packed = inputs.ctx.padded_heads
        for head in space.heads:
            name = head.name
            if name == op_name or name in packed.names:
                continue
            by_op = slot_by_op if name == space.pointer_head else None
            canonical = canonicalize_head(head, head_masks[name], op, by_op)
            if count_empty:
                empty_rows.append(~canonical.any(-1))
            if check_values:
                label = _head_label(name, for_chosen_op=True, slot_by_op=by_op is not None)
                check_logit_values(logits[name], canonical, name=label)
            head_log_probs = _masked_log_probs(
                logits[name], canonical, floors.get(name, 0.0), self.config.floor_mode
            )
            actions[name] = decide(
                head_log_probs, None if given_actions is None else given_actions[name]
            )
            # Sampled from head_log_probs or checked by _check_actions: in range either way,
            # so log_prob_of's range check (a host sync per head) would only repeat work.
            log_probs[name] = gather_log_prob(head_log_probs, actions[name])
            relevant = _relevance(head, op) if given_actions is not None else None
            if relevant is not None:
                # An irrelevant head's choice did nothing: it scores 0 whatever was stored
                # (the rollout stored the canonical action, whose log-prob is exactly 0).
                log_probs[name] = torch.where(relevant, log_probs[name], 0.0)
            entropies[name] = _normalised_entropy(head_log_probs, canonical)

        # The other heads together, padded side by side: the same maths in a few kernels.
        if packed.names:
            packed_logits = packed.pack(logits)  # [B, T, K, W]
            canonical = packed.canonicalize(packed.pack(head_masks) & packed.real, op)
            if count_empty:
                empty_rows.append(~canonical.any(-1))  # [B, T, K]
            if check_values:
                for k, (name, n) in enumerate(zip(packed.names, packed.sizes)):
                    check_logit_values(
                        packed_logits[..., k, :n], canonical[..., k, :n],
                        name=_head_label(name, for_chosen_op=True),
                    )
            head_floors = [floors.get(name, 0.0) for name in packed.names]
            if len(set(head_floors)) == 1:
                packed_log_probs = _masked_log_probs(
                    packed_logits, canonical, head_floors[0], self.config.floor_mode
                )
            else:  # different floors per head: row by row, the same formula
                packed_log_probs = torch.stack(
                    [
                        _masked_log_probs(
                            packed_logits[..., k, :], canonical[..., k, :], floor,
                            self.config.floor_mode,
                        )
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
            if given is not None:  # irrelevant heads score 0 whatever was stored (see above)
                packed_lp = torch.where(packed.relevance[op], packed_lp, 0.0)
            packed_entropy = _normalised_entropy(packed_log_probs, canonical)  # [B, T, K]
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
        if given_actions is not None and check_values:
            counts = torch.stack([(~torch.isfinite(lp)).sum() for lp in log_probs.values()])
            masked = dict(zip(log_probs, counts.tolist()))  # one host sync for every head
            bad = {n: c for n, c in masked.items() if c}
            if bad:
                raise ValueError(
                    f"actions include choices that their masks forbid (for the stored op), "
                    f"count per head: {bad}; pass the masks stored at rollout"
                )
        if given_actions is not None:
            # With validation off a forbidden stored action (a relevant head's) gets a
            # finite log-prob, LOG_PROB_MIN, not -inf: the PPO ratio stays finite and no
            # gradient flows through it. A valid action keeps its log-prob, however small.
            log_probs = {
                n: torch.where(lp == float("-inf"), LOG_PROB_MIN, lp) for n, lp in log_probs.items()
            }
        return actions, log_probs, entropies


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
        if value_module is not None:
            nn.init.orthogonal_(last_linear(value_module).weight, gain=0.01)
    if network.contribution_predictor is not None:
        contribution_out = last_linear(network.contribution_predictor)
        nn.init.orthogonal_(contribution_out.weight, gain=0.1)
        if contribution_out.bias is not None:
            nn.init.zeros_(contribution_out.bias)
