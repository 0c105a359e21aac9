"""What the networks and the policy bundles return: one vocabulary for both.

* per-head dicts are plural and keyed by head name: ``actions``, ``log_probs``, ``entropies``;
* per-step tensors are singular: ``value`` (the baseline ``value_baseline`` selects),
  ``state_value`` (V(s)), ``q_value`` (Q(s, op)), ``sampled_op``, ``op_logits``,
  ``pred_contributions``; ``hidden`` is the recurrent state ``(h, c)``.

`ActionResult` is one rollout step (a network's or a bundle's ``get_action``); `EvalResult`
re-scores stored actions (``evaluate_actions``); `ForwardResult` is a bundle's plain forward.
The reference network's names stay available: ``GetActionResult`` and
``EvaluateActionsResult`` are these classes, ``ActionResult.values`` and
``.head_entropies`` read ``value`` and ``entropies``, and an `EvalResult` unpacks as the
contract's 6-tuple (`EvalResult.to_tuple`).

Shapes: ``B`` batch, ``T`` time, ``N`` slots, ``n`` a head's choices, ``H`` recurrent width.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from slotformer.networks.inputs import Hidden


def _renamed(old: str, new: str, owner: str) -> None:
    warnings.warn(
        f"{owner}.{old} is deprecated and will be removed in the next release; use .{new}",
        DeprecationWarning,
        stacklevel=3,
    )


def _assign(
    record: object,
    fields: dict[str, Any],
    deprecated: dict[str, Any],
    renames: dict[str, str],
    required: tuple[str, ...],
) -> None:
    """Set a frozen record's ``fields``, taking deprecated keyword names (``renames``: old ->
    new, each with a warning) from ``deprecated``."""
    owner = type(record).__name__
    for old, value in deprecated.items():
        new = renames.get(old)
        if new is None:
            raise TypeError(f"{owner} got an unexpected keyword argument {old!r}")
        warnings.warn(
            f"{owner}({old}=...) is deprecated and will be removed in the next release; "
            f"use {new}=",
            DeprecationWarning,
            stacklevel=3,
        )
        if fields[new] is not None:
            raise TypeError(f"{owner} got both {old}= and {new}=")
        fields[new] = value
    missing = [name for name in required if fields[name] is None]
    if missing:
        raise TypeError(f"{owner} needs {missing}")
    for name, value in fields.items():
        object.__setattr__(record, name, value)


@dataclass(frozen=True, init=False)
class ActionResult:
    """One rollout step. Every tensor is ``[B]`` unless noted.

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

    def __init__(
        self,
        actions: dict[str, Tensor] | None = None,
        log_probs: dict[str, Tensor] | None = None,
        value: Tensor | None = None,
        hidden: Hidden | None = None,
        op_logits: Tensor | None = None,
        entropies: dict[str, Tensor] | None = None,
        sampled_op: Tensor | None = None,
        **deprecated: Any,
    ) -> None:
        fields = {
            "actions": actions, "log_probs": log_probs, "value": value, "hidden": hidden,
            "op_logits": op_logits, "entropies": entropies, "sampled_op": sampled_op,
        }
        renames = {"action": "actions", "log_prob": "log_probs", "values": "value",
                   "head_entropies": "entropies"}
        _assign(self, fields, deprecated, renames, ("actions", "log_probs", "value"))

    # The reference network's names (drop-in): not deprecated.
    @property
    def values(self) -> Tensor:
        """``value`` under the reference network's name."""
        return self.value

    @property
    def head_entropies(self) -> dict[str, Tensor] | None:
        """``entropies`` under the reference network's name."""
        return self.entropies

    # The bundles' first names: deprecated.
    @property
    def action(self) -> dict[str, Tensor]:
        """Deprecated: use ``actions``."""
        _renamed("action", "actions", "ActionResult")
        return self.actions

    @property
    def log_prob(self) -> dict[str, Tensor]:
        """Deprecated: use ``log_probs``."""
        _renamed("log_prob", "log_probs", "ActionResult")
        return self.log_probs


@dataclass(frozen=True, init=False)
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

    def __init__(
        self,
        log_probs: dict[str, Tensor] | None = None,
        value: Tensor | None = None,
        entropies: dict[str, Tensor] | None = None,
        hidden: Hidden | None = None,
        pred_contributions: Tensor | None = None,
        q_value: Tensor | None = None,
        state_value: Tensor | None = None,
        **deprecated: Any,
    ) -> None:
        fields = {
            "log_probs": log_probs, "value": value, "entropies": entropies, "hidden": hidden,
            "pred_contributions": pred_contributions, "q_value": q_value,
            "state_value": state_value,
        }
        renames = {"log_prob": "log_probs", "entropy": "entropies"}
        _assign(self, fields, deprecated, renames, ("log_probs", "value", "entropies"))

    def to_tuple(self) -> tuple[Any, ...]:
        """The contract's ``(log_probs, value, entropies, hidden, pred_contributions,
        q_value)``."""
        return (
            self.log_probs, self.value, self.entropies, self.hidden, self.pred_contributions,
            self.q_value,
        )

    # The reference network returns the 6-tuple: unpacking and indexing work as on it.
    def __iter__(self) -> Iterator[Any]:
        return iter(self.to_tuple())

    def __getitem__(self, index: int) -> Any:
        return self.to_tuple()[index]

    def __len__(self) -> int:
        return 6

    @property
    def log_prob(self) -> dict[str, Tensor]:
        """Deprecated: use ``log_probs``."""
        _renamed("log_prob", "log_probs", "EvalResult")
        return self.log_probs

    @property
    def entropy(self) -> dict[str, Tensor]:
        """Deprecated: use ``entropies``."""
        _renamed("entropy", "entropies", "EvalResult")
        return self.entropies


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
    hidden: Hidden | None = field(default=None)


@dataclass(frozen=True)
class TrunkIntermediates:
    """What a network's trunk computed on the way, returned as data when asked
    (``forward(..., return_intermediates=True)``); statistics are computed from it outside
    the model (`slotformer.telemetry.compute_attention_stats`).

    Attributes:
        attention: per encoder block, attention weights ``[B, T, heads, N+1, N+1]`` (rows =
            queries, columns = keys, CLS first); empty for a network without attention.
        active: slot activity ``[B, T, N]`` (True = active) of the call.
        slot_ids: the grid's slot ids, in slot order.

    Example:
        >>> import torch
        >>> from slotformer import SlotTransformerActorCritic, compute_attention_stats
        >>> net = SlotTransformerActorCritic(embed_dim=16, lstm_hidden_dim=16, head_hidden=16)
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
