"""What the networks and the policy bundles return: one vocabulary for both.

* per-head dicts are plural and keyed by head name: ``actions``, ``log_probs``, ``entropies``;
* per-step tensors are singular: ``value`` (the baseline ``value_baseline`` selects),
  ``state_value`` (V(s)), ``q_value`` (Q(s, op)), ``sampled_op``, ``op_logits``,
  ``pred_contributions``; ``hidden`` is the recurrent state ``(h, c)``.

The reference network's names stay available: ``GetActionResult`` and
``EvaluateActionsResult`` are `ActionResult` and `EvalResult`, ``ActionResult.values`` and
``.head_entropies`` read ``value`` and ``entropies``, and an `EvalResult` unpacks as the
contract's 6-tuple.

Shapes: ``B`` batch, ``T`` time, ``N`` slots, ``n`` a head's choices, ``H`` recurrent width.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from slotformer.networks.inputs import Hidden


@dataclass(frozen=True)
class ActionResult:
    """One rollout step (``get_action``). Every tensor is ``[B]`` unless noted.

    Attributes:
        actions: int64 action per head name.
        log_probs: fp32 log-prob of each head's action under its canonicalised, floored
            distribution (exactly 0 for a head irrelevant to the chosen op).
        value: the baseline ``value_baseline`` selects (Q(s, op) or V(s)).
        hidden: the recurrent state after this step, ``(h, c)`` each ``[layers, B, H]``.
        op_logits: ``[B, num_ops]`` masked op logits when asked for, else None.
        entropies: normalised entropy per head name, fp32 in [0, 1].
        sampled_op: the chosen op (``actions[op_head]``).

    Example:
        >>> import torch
        >>> r = ActionResult({"op": torch.zeros(2, dtype=torch.long)},
        ...                  {"op": torch.zeros(2)}, torch.zeros(2), None)
        >>> r.actions["op"].shape, r.op_logits is None
        (torch.Size([2]), True)
    """

    actions: dict[str, Tensor]
    log_probs: dict[str, Tensor]
    value: Tensor
    hidden: Hidden | None
    op_logits: Tensor | None = None
    entropies: dict[str, Tensor] | None = None
    sampled_op: Tensor | None = None

    @property
    def values(self) -> Tensor:
        """``value`` under the reference network's name."""
        return self.value

    @property
    def head_entropies(self) -> dict[str, Tensor] | None:
        """``entropies`` under the reference network's name."""
        return self.entropies


@dataclass(frozen=True)
class EvalResult:
    """Stored actions re-scored for an update (``evaluate_actions``).

    Tensors are ``[B, T]`` (a bundle given 2-D features: ``[B]``) unless noted.

    Attributes:
        log_probs: fp32 log-prob per head name (differentiable).
        value: the baseline ``value_baseline`` selects (Q(s, stored op) or V(s)).
        entropies: normalised entropy per head name.
        hidden: the recurrent state at the end of the sequences.
        pred_contributions: auxiliary per-slot contribution predictions ``[B, T, N]``.
        q_value: Q(s, stored op).
        state_value: V(s). Train it too when ``value`` is Q: under DDP every parameter
            must receive a gradient.

    It unpacks and indexes as the contract's 6-tuple ``(log_probs, value, entropies, hidden,
    pred_contributions, q_value)``; `to_tuple` returns it.

    Example:
        >>> import torch
        >>> r = EvalResult({"op": torch.zeros(2, 3)}, torch.zeros(2, 3), {"op": torch.zeros(2, 3)}, None)
        >>> r.value.shape, r.q_value is None, len(r.to_tuple())
        (torch.Size([2, 3]), True, 6)
    """

    log_probs: dict[str, Tensor]
    value: Tensor
    entropies: dict[str, Tensor]
    hidden: Hidden | None
    pred_contributions: Tensor | None = None
    q_value: Tensor | None = None
    state_value: Tensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """The contract's 6-tuple (see `EvalResult`)."""
        return (self.log_probs, self.value, self.entropies, self.hidden, self.pred_contributions,
                self.q_value)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def __getitem__(self, index: int) -> Any:
        return self.to_tuple()[index]

    def __len__(self) -> int:
        return 6


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """A bundle's plain forward pass.

    Attributes:
        logits: masked logits per head name, ``[B, T, n]`` (``[B, n]`` for 2-D features).
        value: the selected baseline ``[B, T]`` (``[B]`` for 2-D features); with
            ``value_baseline="q"`` it is Q at the most likely op.
        hidden: the recurrent state after the sequence.

    Example:
        >>> import torch
        >>> r = ForwardResult({"op": torch.zeros(2, 3, 6)}, torch.zeros(2, 3), None)
        >>> r.logits["op"].shape
        torch.Size([2, 3, 6])
    """

    logits: dict[str, Tensor]
    value: Tensor
    hidden: Hidden | None = None


@dataclass(frozen=True)
class TrunkIntermediates:
    """What a network's trunk computed on the way (``forward(..., return_intermediates=True)``),
    for statistics outside the model (`slotformer.telemetry.compute_attention_stats`).

    Attributes:
        attention: per encoder block, attention weights ``[B, T, heads, N+1, N+1]`` (rows =
            queries, columns = keys, CLS first); empty for a network without attention.
        active: slot activity ``[B, T, N]`` (True = active) of the call.
        slot_ids: the grid's slot ids, in slot order.

    Example:
        >>> import torch
        >>> from slotformer import SlotTransformerActorCritic, TransformerConfig
        >>> from slotformer import compute_attention_stats
        >>> net = SlotTransformerActorCritic(config=TransformerConfig(embed_dim=16, head_hidden=16))
        >>> out = net(torch.randn(1, 2, 116), torch.full((1, 2, 3), 0), return_intermediates=True)
        >>> seen = out["intermediates"]
        >>> len(seen.attention), seen.attention[0].shape
        (2, torch.Size([1, 2, 4, 4, 4]))
        >>> compute_attention_stats(seen.attention, seen.active, seen.slot_ids).slot_ids
        ('r0c0', 'r0c1', 'r0c2')
    """

    attention: tuple[Tensor, ...]
    active: Tensor
    slot_ids: tuple[str, ...]


GetActionResult = ActionResult
"""The reference network's name for `ActionResult`."""
EvaluateActionsResult = EvalResult
"""The reference network's name for `EvalResult`."""
