"""The shared actor-critic core: everything right of the trunk, one implementation.

A network supplies only its trunk, slot head and contribution predictor. The boundary
(`slotformer.networks.inputs`) checks a call's arguments once; the heads' logits go through
the public policy step (`slotformer.policy_step`), the same function at rollout, at update
and in every adapter; V(s) and Q(s, op) are computed here.

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

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace
from slotformer.config import ObservationLayout, SlotConfig
from slotformer.distributions import (
    MASKED_LOGIT_VALUE,
    _masked_log_probs,
    check_logits_and_mask,
    sample_actions,
)
from slotformer.layers.heads import init_weights
from slotformer.layers.lstm import ResidualLSTM
from slotformer.networks.configs import ActorCriticConfig
from slotformer.networks.inputs import (
    Hidden,
    PolicyInputs,
    ProbabilityFloor,
    SlotContext,
    read_inputs,
)
from slotformer.networks.results import ActionResult, EvalResult, TrunkIntermediates
from slotformer.policy_step import PackedHeads, floor_cannot_hold, policy_step
from slotformer.validation import describe_shape, expect, validation_enabled

# Head name -> the reference network's attribute for its size.
_SIZE_ATTRIBUTES = {"blueprint": "num_blueprints", "style": "num_styles", "tempo": "num_tempo",
                    "alpha_target": "num_alpha_targets", "alpha_speed": "num_alpha_speeds",
                    "alpha_curve": "num_alpha_curves"}


@dataclass
class TrunkOutput:
    """What a network's trunk hands to the shared core."""

    temporal: Tensor  # [B, T, H]: the recurrent core's output (``lstm_out``): V and Q read it
    hidden: Hidden
    slot_repr: Tensor | None = None  # [B, T, N, D] for networks with per-slot representations
    intermediates: TrunkIntermediates | None = None  # when asked for


# The reference network's per-head mask arguments, in its order (``slot_mask`` ... ``op_mask``).
CONTRACT_MASKS = ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed",
                  "alpha_curve", "op")


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
    # Whether the trunk reads the base block and the slots apart (the Slot Transformer) or
    # the flat vector whole (the flat LSTM, which then takes any state_dim).
    needs_layout: ClassVar[bool] = True
    config: ActorCriticConfig
    # The reference network's size attributes; each is set when the action space has that
    # head (`action_space.sizes` has every head's size under any name).
    num_slots: int
    num_ops: int
    num_blueprints: int
    num_styles: int
    num_tempo: int
    num_alpha_targets: int
    num_alpha_speeds: int
    num_alpha_curves: int
    # Modules every subclass builds (the shared core reads them by these names); the
    # auxiliary heads are None when the config switches them off.
    lstm: ResidualLSTM
    state_value_head: nn.Module
    q_head: nn.Module | None
    contribution_predictor: nn.Module | None

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
        self.layout = self._layout(num_slots)
        self.num_slots, self.num_ops = num_slots, self.action_space.num_ops
        for head, attribute in _SIZE_ATTRIBUTES.items():
            if head in self.action_space.sizes:
                setattr(self, attribute, self.action_space.sizes[head])
        self._contexts: dict[tuple[tuple[str, ...], str], SlotContext] = {}
        # Mask rows with no valid action met while validation was off (each fell back to
        # action 0; see masked_log_probs): a device counter, so counting costs no host sync.
        self.register_buffer("empty_mask_rows", torch.zeros((), dtype=torch.long), persistent=False)
        self.empty_mask_rows: Tensor

    # The reference network's attributes, read from the config.
    @property
    def state_dim(self) -> int:
        """D, the flat observation width."""
        assert self.config.state_dim is not None  # for_slots filled it in
        return self.config.state_dim

    @property
    def lstm_hidden_dim(self) -> int:
        """H, the recurrent core's width."""
        return self.config.lstm_hidden_dim

    @property
    def lstm_layers(self) -> int:
        return self.config.lstm_layers  # the reference network's attribute

    @property
    def value_baseline(self) -> str:
        """What ``value`` holds: ``"v"`` (V(s)) or ``"q"`` (Q(s, op))."""
        return self.config.value_baseline

    def _layout(self, num_slots: int) -> ObservationLayout | None:
        """The observation's layout (``slot_dim``'s, else inferred; None if none fits)."""
        c = self.config
        if c.slot_dim is not None:
            layout = ObservationLayout(num_slots, c.slot_dim, c.base_dim)
            if layout.state_dim != self.state_dim:
                raise ValueError(
                    f"state_dim={self.state_dim} does not match base_dim={c.base_dim} + "
                    f"{num_slots} slots x slot_dim={c.slot_dim} = {layout.state_dim}"
                )
            return layout
        try:
            return ObservationLayout.infer(self.state_dim, num_slots, c.base_dim)
        except ValueError:
            if self.needs_layout:
                raise
            return None

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def _trunk(self, inputs: PolicyInputs, return_intermediates: bool = False) -> TrunkOutput:
        """``inputs`` -> temporal representation ``[B, T, H]`` and recurrent state."""

    @abstractmethod
    def _slot_logits(self, trunk: TrunkOutput) -> Tensor:
        """Raw pointer logits ``[B, T, N]``."""

    @abstractmethod
    def _contributions(self, trunk: TrunkOutput, stop_gradient: bool) -> Tensor:
        """Per-slot contribution predictions ``[B, T, N]``."""

    def head_module(self, name: str) -> nn.Module:
        """The module producing head ``name``'s logits (attribute ``{name}_head``)."""
        module: nn.Module = getattr(self, f"{name}_head")
        return module

    # ------------------------------------------------------------------ public API
    def get_initial_hidden(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> Hidden:
        """Zero recurrent state ``(h, c)``, each ``[lstm_layers, batch_size, H]``."""
        parameter = next(self.parameters())
        return self.lstm.initial_hidden(batch_size, device=device or parameter.device,
                                        dtype=parameter.dtype)

    def slot_context(self, slot_config: SlotConfig | None = None) -> SlotContext:
        """The grid for a call: the constructor's, or another one where the network allows
        (checked once per grid, then cached)."""
        config = self.slot_config if slot_config is None else slot_config
        device = next(self.parameters()).device
        key = (config.slot_ids, str(device))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = self._new_context(config, device)
        return ctx

    def _new_context(self, config: SlotConfig, device: torch.device) -> SlotContext:
        if config != self.slot_config and not self.supports_slot_config_override:
            raise ValueError(
                f"{type(self).__name__} is fixed to its constructor's {self.slot_config.num_slots} "
                f"slots {list(self.slot_config.slot_ids)}; got slot_config with "
                f"{config.num_slots} slots {list(config.slot_ids)}. Only "
                f"SlotTransformerActorCritic runs on another grid."
            )
        # The context outlives the call, which is usually get_action (under inference mode):
        # position ids made there would be inference tensors, and every later differentiable
        # call (evaluate_actions) would fail when the positional embedding saves them.
        action_space = self.action_space.with_num_slots(config.num_slots)
        with torch.inference_mode(False):
            row_ids, col_ids = config.position_ids(device)
        layout = None if self.layout is None else ObservationLayout(
            config.num_slots, self.layout.slot_dim, self.layout.base_dim)
        return SlotContext(
            slot_config=config, layout=layout, action_space=action_space,
            state_dim=self.state_dim if layout is None else layout.state_dim,
            packed=PackedHeads.of(action_space, device), row_ids=row_ids, col_ids=col_ids,
            num_slot_types=self.config.num_slot_types, num_slots=config.num_slots,
            hidden_size=(self.lstm_layers, self.lstm_hidden_dim))

    def _read(self, state: object, blueprint_indices: object, head_masks: tuple = (), *,
              slot_config: SlotConfig | None = None, **kwargs: Any) -> PolicyInputs:
        """The boundary: the call's arguments checked once (`read_inputs`); ``head_masks``,
        the contract's ``slot_mask`` ... ``op_mask`` in order, join the ``masks`` dict."""
        named = dict(zip(CONTRACT_MASKS, head_masks, strict=False))
        return read_inputs(self.slot_context(slot_config), next(self.parameters()), state,
                           blueprint_indices, named_masks=named, **kwargs)

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
            state: ``[B, T, D]`` (one step ``[B, D]``: the outputs drop their T axis), or a
                `SlotObservation`.
            blueprint_indices: int64 ``[B, T, N]``, -1 = empty slot (None with
                ``active_mask`` or a `SlotObservation`).
            hidden: ``(h, c)`` each ``[layers, B, H]``; None = zeros.
            slot_mask ... op_mask: bool (True = valid) ``[B, T, n]`` or ``[B, n]``; None = all
                valid. ``masks``: the same by head name (any action space's heads).
            probability_floor: a minimum probability per valid action, a float or per head.
            slot_config: run on another grid (transformer only).
            active_mask: explicit slot activity ``[B, T, N]`` (without blueprint indices).
            sample_op: draw ``sampled_op`` from the floored op distribution (``generator``
                or the global RNG); by default it is the most likely op.
            return_intermediates: also return the trunk's `TrunkIntermediates` (the
                transformer's attention maps) as ``"intermediates"``.
            episode_starts: bool ``[B, T]``: zero the recurrent state before these steps.

        Returns:
            dict with ``"{head}_logits"`` ``[B, T, n]`` (base masks applied with
            ``MASKED_LOGIT_VALUE``), ``value``, ``state_value``, ``q_value`` ``[B, T]``,
            ``lstm_out`` ``[B, T, H]``, ``sampled_op`` ``[B, T]`` (the op Q is evaluated
            at) and ``hidden``.
        """
        masks = None if masks is None else {k: v for k, v in masks.items() if k != "slot_by_op"}
        heads = (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask,
                 alpha_speed_mask, alpha_curve_mask, op_mask)
        inputs = self._read(state, blueprint_indices, heads, hidden=hidden,
                            slot_config=slot_config, active_mask=active_mask,
                            probability_floor=probability_floor, episode_starts=episode_starts,
                            masks=masks)
        trunk, logits = self._trunk_and_logits(inputs, return_intermediates)
        op_name = inputs.ctx.action_space.op_head
        floor = inputs.floors.get(op_name, 0.0)
        if validation_enabled():  # finite op logits, a valid op in every row, a floor that holds
            check_logits_and_mask(logits[op_name], inputs.masks[op_name],
                                  name=f"{op_name}_logits (mask: {op_name}_mask)")
            if floor and (rows := int((inputs.masks[op_name].sum(-1) * floor > 1.0).sum())):
                raise floor_cannot_hold(op_name, floor, rows)
        op_log_probs = _masked_log_probs(logits[op_name], inputs.masks[op_name], floor,
                                         self.config.floor_mode)
        op = sample_actions(op_log_probs, generator) if sample_op else op_log_probs.argmax(-1)
        value, state_value, q_value = self._values(trunk, op)
        out: dict[str, Any] = {
            f"{name}_logits": logits[name].masked_fill(~inputs.masks[name], MASKED_LOGIT_VALUE)
            for name in inputs.ctx.action_space.head_names
        }
        out.update(value=value, state_value=state_value, q_value=q_value,
                   lstm_out=trunk.temporal, sampled_op=op)
        if inputs.squeeze:
            out = {k: None if v is None else v[:, 0] for k, v in out.items()}
        out["hidden"] = trunk.hidden
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

        Args (as `forward`'s, for one step):
            state: ``[B, D]`` or ``[B, 1, D]``, or a `SlotObservation`.
            blueprint_indices: ``[B, N]`` or ``[B, 1, N]`` int64 or int32.
            slot_by_op_mask: bool ``[B, num_ops, N]``: the slot mask to use for each op (it
                replaces ``slot_mask`` for the chosen op); fifth, as in the reference.
                ``masks["slot_by_op"]`` holds it too (a policy bundle's masks dict).
            deterministic: take each head's most likely action instead of sampling.
            return_op_logits: also return the masked op logits ``[B, num_ops]``.
            generator: RNG for sampling.
            episode_starts: bool ``[B]``: environments whose episode begins at this step.

        Returns:
            `ActionResult` (also known as ``GetActionResult``); every tensor is ``[B]``.
        """
        heads = (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask,
                 alpha_speed_mask, alpha_curve_mask, op_mask)
        inputs = self._read(state, blueprint_indices, heads, hidden=hidden,
                            slot_config=slot_config, active_mask=active_mask,
                            probability_floor=probability_floor, episode_starts=episode_starts,
                            one_step=True, masks=masks, slot_by_op=slot_by_op_mask)
        trunk, logits = self._trunk_and_logits(inputs)
        step = self._policy_step(logits, inputs, deterministic=deterministic, generator=generator)
        op_name = inputs.ctx.action_space.op_head
        op = step.actions[op_name]
        if self.value_baseline == "v":  # Q is not needed: V(s) alone
            value = self.state_value_head(trunk.temporal).squeeze(-1)
        else:
            value = self._values(trunk, op)[0]
        op_logits = None
        if return_op_logits:
            op_logits = logits[op_name][:, 0].masked_fill(~inputs.masks[op_name][:, 0],
                                                          MASKED_LOGIT_VALUE)
        return ActionResult(
            actions={k: v[:, 0] for k, v in step.actions.items()},
            log_probs={k: v[:, 0] for k, v in step.log_probs.items()},
            value=value[:, 0],
            hidden=trunk.hidden,
            op_logits=op_logits,
            entropies={k: v[:, 0] for k, v in step.entropies.items()},
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

        The stored op canonicalises the other heads and is the op of Q(s, op). Deterministic
        in train mode on the policy and value path (only the auxiliary contribution
        predictor may have dropout, and the encoder with ``encoder_dropout > 0``).

        Args (as `forward`'s and `get_action`'s):
            states: ``[B, T, D]`` (one step ``[B, D]``: the results drop their T axis).
            actions: int64 ``[B, T]`` per head name (every head).
            slot_mask ... op_mask, slot_by_op_mask, masks: the masks stored at rollout
                (``slot_by_op_mask`` ``[B, num_ops, N]`` or ``[B, T, num_ops, N]``).
            hidden: the recurrent state at the start of the sequences (None = zeros).
            aux_stop_gradient: detach the contribution predictor's input, so the auxiliary
                task does not shape the shared representation.
            episode_starts: bool ``[B, T]``: the state is zeroed before these steps, so a
                sequence may cross episode ends (SB3's ``episode_starts``, CleanRL's ``done``,
                TorchRL's ``is_init``); it then scores like its pieces scored apart.

        Returns:
            `EvalResult` (also known as ``EvaluateActionsResult``); it unpacks as the
            contract's ``log_probs, value, entropies, hidden, pred_contributions,
            q_value`` (`EvalResult.to_tuple`), and ``.state_value`` is V(s).
        """
        heads = (slot_mask, blueprint_mask, style_mask, tempo_mask, alpha_target_mask,
                 alpha_speed_mask, alpha_curve_mask, op_mask)
        inputs = self._read(states, blueprint_indices, heads, hidden=hidden,
                            slot_config=slot_config, active_mask=active_mask,
                            probability_floor=probability_floor, episode_starts=episode_starts,
                            name="states", masks=masks, slot_by_op=slot_by_op_mask,
                            actions=actions)
        assert inputs.actions is not None
        trunk, logits = self._trunk_and_logits(inputs)
        step = self._policy_step(logits, inputs)
        op = inputs.actions[inputs.ctx.action_space.op_head]
        value, state_value, q_value = self._values(trunk, op)
        contributions = (
            None if self.contribution_predictor is None
            else self._contributions(trunk, stop_gradient=aux_stop_gradient)
        )
        if not inputs.squeeze:
            return EvalResult(step.log_probs, value, step.entropies, trunk.hidden, contributions,
                              q_value, state_value)

        def first(x: Any) -> Any:  # one step without its T axis: the results drop it too
            return {k: t[:, 0] for k, t in x.items()} if isinstance(x, dict) else (
                None if x is None else x[:, 0])

        return EvalResult(first(step.log_probs), first(value), first(step.entropies),
                          trunk.hidden, first(contributions), first(q_value), first(state_value))

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
            raise ValueError(f"{type(self).__name__} was built with use_contribution_head=False")
        inputs = self._read(state, blueprint_indices, hidden=hidden, slot_config=slot_config,
                            active_mask=active_mask, with_masks=False)
        contributions = self._contributions(self._trunk(inputs), stop_gradient=stop_gradient)
        return contributions[:, 0] if inputs.squeeze else contributions

    # ------------------------------------------------------------------ shared machinery
    def _trunk_and_logits(
        self, inputs: PolicyInputs, return_intermediates: bool = False
    ) -> tuple[TrunkOutput, dict[str, Tensor]]:
        """The trunk and every head's raw logits ``[B, T, n]``."""
        trunk = self._trunk(inputs, return_intermediates)
        pointer = inputs.ctx.action_space.pointer_head
        logits = {
            name: self._slot_logits(trunk) if name == pointer
            else self.head_module(name)(trunk.temporal)
            for name in inputs.ctx.action_space.head_names
        }
        return trunk, logits

    def _policy_step(self, logits: Mapping[str, Tensor], inputs: PolicyInputs, *,
                     deterministic: bool = False, generator: torch.Generator | None = None) -> Any:
        """`slotformer.policy_step.policy_step` on this call's masks, floors and actions;
        counts the empty mask rows met while validation is off."""
        step = policy_step(
            inputs.ctx.packed, logits, inputs.masks, inputs.slot_by_op, actions=inputs.actions,
            deterministic=deterministic, floors=inputs.floors,
            floor_mode=self.config.floor_mode, generator=generator,
        )
        if step.empty_rows is not None:
            self.empty_mask_rows.add_(step.empty_rows)
        return step

    def _values(self, trunk: TrunkOutput, op: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``value`` (the one ``value_baseline`` selects), V(s) and Q(s, op) (None without a
        Q head), each ``[B, T]``."""
        state_value = self.state_value_head(trunk.temporal).squeeze(-1)
        q_value = None if self.q_head is None else self._q(trunk.temporal, op)
        value = q_value if self.value_baseline == "q" and q_value is not None else state_value
        return value, state_value, q_value

    def _q(self, lstm_out: Tensor, op: Tensor) -> Tensor:
        """Q(s, op) ``[...]`` from ``lstm_out [..., H]``, detached from the trunk."""
        assert self.q_head is not None
        lstm_out = lstm_out.detach()
        # A comparison, not F.one_hot: one_hot range-checks its input (a host sync on GPU).
        ops = torch.arange(self.num_ops, device=op.device)
        op_one_hot = (op.unsqueeze(-1) == ops).to(lstm_out.dtype)  # [..., O]
        return self.q_head(torch.cat([lstm_out, op_one_hot], dim=-1)).squeeze(-1)

    def compute_state_value(self, lstm_out: Tensor) -> Tensor:
        """V(s) ``[...]`` from the recurrent output ``lstm_out [..., H]`` (``forward``'s
        ``"lstm_out"``), with full gradient into the trunk (it is the critic).

        Example:
            >>> from slotformer import FactoredRecurrentActorCritic
            >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=32)
            >>> out = net(torch.randn(2, 1, 116), torch.full((2, 1, 3), -1))
            >>> torch.allclose(net.compute_state_value(out["lstm_out"]), out["state_value"])
            True
        """
        self._check_lstm_out(lstm_out)
        return self.state_value_head(lstm_out).squeeze(-1)

    def compute_q(self, lstm_out: Tensor, op: Tensor) -> Tensor:
        """Q(s, op) ``[...]`` for any int64 ``op [...]``, from ``lstm_out [..., H]``
        (detached: Q is an auxiliary head whose loss trains only its own parameters, as in
        the reference network). Raises ``ValueError`` without a Q head, or for bad shapes.

        Example:
            >>> from slotformer import FactoredRecurrentActorCritic
            >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=32)
            >>> lstm_out = net(torch.randn(1, 1, 116), torch.full((1, 1, 3), -1))["lstm_out"]
            >>> ops = torch.arange(net.num_ops).view(-1, 1)          # [O, 1]
            >>> net.compute_q(lstm_out.expand(net.num_ops, 1, -1), ops).shape
            torch.Size([6, 1])
        """
        if self.q_head is None:
            raise ValueError(f"{type(self).__name__} was built with use_q_head=False: no Q head")
        self._check_lstm_out(lstm_out)
        expect(
            "op", op, dtype=torch.long, device=lstm_out.device, shape=tuple(lstm_out.shape[:-1]),
            hint=" (lstm_out's shape without its last dimension)",
        )
        return self._q(lstm_out, op)

    def _check_lstm_out(self, lstm_out: Tensor) -> None:
        expect("lstm_out", lstm_out, floating=True, device=next(self.parameters()).device)
        if lstm_out.dim() < 1 or lstm_out.shape[-1] != self.lstm_hidden_dim:
            raise ValueError(
                f"lstm_out has shape {describe_shape(lstm_out)}, expected [..., "
                f"lstm_hidden_dim={self.lstm_hidden_dim}] (forward's lstm_out)"
            )

    # The reference network's names for the two value computations.
    _compute_state_value = compute_state_value
    _compute_q = compute_q


def init_actor_critic_weights(network: ActorCriticCore, skip: tuple[nn.Module, ...] = ()) -> None:
    """The one place the networks' weights are initialised (`slotformer.layers.heads.init_weights`
    on its heads, value heads and contribution predictor)."""
    init_weights(
        network, skip, [network.head_module(n) for n in network.action_space.head_names],
        [m for m in (network.state_value_head, network.q_head) if m is not None],
        network.contribution_predictor,
    )


COMPILE_PREFIX = "_orig_mod."
"""What ``torch.compile`` puts in front of every key of a compiled module's state dict."""


def without_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the ``_orig_mod.`` prefix stripped when every key carries it (a
    ``torch.compile``'d module's); otherwise a copy as it is."""
    if state_dict and all(key.startswith(COMPILE_PREFIX) for key in state_dict):
        return {key[len(COMPILE_PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)
