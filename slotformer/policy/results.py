"""What a policy bundle returns: one frozen record per call kind.

Every head-keyed dict uses the action space's head names (``"slot"``, ``"blueprint"``, ...,
``"op"``). Shapes: ``B`` batch, ``T`` time, ``N`` slots, ``n`` a head's choices,
``H`` recurrent width.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from slotformer.networks.core import Hidden


@dataclass(frozen=True, slots=True)
class ActionResult:
    """One rollout step (`PolicyBundle.get_action`). Every tensor is ``[B]`` unless noted.

    Attributes:
        action: int64 action per head name.
        log_prob: fp32 log-prob of each head's action (exactly 0 for a head irrelevant to
            the chosen op).
        value: the network's selected baseline (``value_baseline``: Q(s, op) or V(s)).
        hidden: the recurrent state after this step.
        op_logits: masked op logits ``[B, num_ops]`` when asked for, else None.
        head_entropies: normalised entropy per head name, fp32 in [0, 1].

    Example:
        >>> import torch
        >>> r = ActionResult({"op": torch.zeros(2, dtype=torch.long)},
        ...                  {"op": torch.zeros(2)}, torch.zeros(2), None)
        >>> r.action["op"].shape, r.op_logits is None
        (torch.Size([2]), True)
    """

    action: dict[str, Tensor]
    log_prob: dict[str, Tensor]
    value: Tensor
    hidden: Hidden | None
    op_logits: Tensor | None = None
    head_entropies: dict[str, Tensor] | None = None


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Stored actions re-scored for an update (`PolicyBundle.evaluate_actions`).

    Tensors are ``[B, T]`` (``[B]`` when the call's features were 2-D) unless noted.

    Attributes:
        log_prob: fp32 log-prob per head name (differentiable).
        value: the network's selected baseline (Q(s, stored op) or V(s)).
        entropy: normalised entropy per head name.
        hidden: the recurrent state at the end of the sequences.
        pred_contributions: auxiliary per-slot contribution predictions ``[B, T, N]``
            (``[B, N]`` for 2-D features).
        q_value: Q(s, stored op).
        state_value: V(s). Train it too when ``value`` is Q: under DDP every parameter
            must receive a gradient.

    Example:
        >>> import torch
        >>> r = EvalResult({"op": torch.zeros(2, 3)}, torch.zeros(2, 3), {"op": torch.zeros(2, 3)}, None)
        >>> r.value.shape, r.q_value is None
        (torch.Size([2, 3]), True)
    """

    log_prob: dict[str, Tensor]
    value: Tensor
    entropy: dict[str, Tensor]
    hidden: Hidden | None
    pred_contributions: Tensor | None = None
    q_value: Tensor | None = None
    state_value: Tensor | None = None


@dataclass(frozen=True, slots=True)
class ForwardResult:
    """A plain forward pass (`PolicyBundle.forward`).

    Attributes:
        logits: masked logits per head name, ``[B, T, n]`` (``[B, n]`` for 2-D features).
        value: the network's selected baseline ``[B, T]`` (``[B]`` for 2-D features); with
            ``value_baseline="q"`` it is Q at an op sampled from the op head.
        hidden: the recurrent state after the sequence.

    Example:
        >>> import torch
        >>> r = ForwardResult({"op": torch.zeros(2, 3, 6)}, torch.zeros(2, 3), None)
        >>> r.logits["op"].shape
        torch.Size([2, 3, 6])
    """

    logits: dict[str, Tensor]
    value: Tensor
    hidden: Hidden | None
