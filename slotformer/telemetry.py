"""Attention telemetry as plain data: statistics, a diagnostics payload and hooks.

The Slot Transformer encoder can return one ``[B, T, heads, N+1, N+1]`` attention map per
layer: queries as rows, keys as columns, CLS first, inactive slots masked as keys (exactly 0
weight). :func:`compute_attention_stats` (the one place that reads tensor values back to the
host, only when asked) summarises them as JSON-serialisable :class:`AttentionStats`.

Example::

    import torch
    from slotformer.telemetry import compute_attention_stats

    attn = torch.full((1, 1, 1, 3, 3), 1 / 3)           # 1 layer, uniform over CLS + 2 slots
    active = torch.ones(1, 1, 2, dtype=torch.bool)
    stats = compute_attention_stats([attn], active, ("r0c0", "r0c1"))
    stats.entropy_mean                                   # 1.0: uniform rows are maximally diffuse
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from slotformer.validation import describe_shape, expect, validation_enabled

# Tolerances of the validation-gated value checks (maps may come from bf16/fp16 attention).
_MASKED_KEY_TOLERANCE, _ROW_SUM_TOLERANCE = 1e-3, 1e-2

_NetworkT = TypeVar("_NetworkT")
TelemetryHook = Callable[[Any, "AttentionStats"], object]
"""A hook receives ``(network, stats)``; its return value is ignored."""


@dataclass(frozen=True)
class AttentionStats:
    """Summary of one captured set of attention maps (:func:`compute_attention_stats`).

    Attributes:
        entropy_mean: mean normalised attention entropy over batch, time, heads, layers and
            the valid query rows (CLS and active slots). Each row's entropy is divided by
            ``ln(number of valid keys)``, so 0 = one-hot, 1 = uniform; a row with a single
            valid key counts 0.
        entropy_min: the smallest of those row entropies (the sharpest row).
        slot_distribution: length N; last-layer attention mass each slot receives from the
            CLS query, averaged over batch, time and heads (inactive slots: 0).
        slot_slot: ``[N][N]``; last-layer attention from query slot (row) to key slot (col),
            averaged over heads and the (batch, time) positions where the query slot is
            active (a never-active slot's row is zeros). Rows sum to at most 1 (rest: CLS).
        slot_ids: the slot ids, in action-index order.
        network_type: always ``"transformer"`` (only attention networks produce these).
    """

    entropy_mean: float
    entropy_min: float
    slot_distribution: list[float]
    slot_slot: list[list[float]]
    slot_ids: tuple[str, ...]
    network_type: str = "transformer"

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy (lists are copied, ``slot_ids`` becomes a list)."""
        return {"network_type": self.network_type, "entropy_mean": self.entropy_mean,
                "entropy_min": self.entropy_min, "slot_distribution": list(self.slot_distribution),
                "slot_slot": [list(row) for row in self.slot_slot], "slot_ids": list(self.slot_ids)}


def _validate_attention_inputs(
    attention_maps: Sequence[Tensor], slot_active_mask: Tensor, slot_ids: Sequence[str]
) -> tuple[list[Tensor], tuple[str, ...]]:
    """Metadata checks (always) and value checks (when validation is enabled)."""
    expect("slot_active_mask", slot_active_mask, dtype=torch.bool, hint=" (bool [B, T, N])")
    if slot_active_mask.dim() != 3 or 0 in slot_active_mask.shape[:2]:
        raise ValueError("slot_active_mask must be [B, T, N] with at least one (batch, time) "
                         f"position; got shape {describe_shape(slot_active_mask)}")
    batch, steps, num_slots = slot_active_mask.shape
    ids = () if isinstance(slot_ids, str) or not isinstance(slot_ids, Sequence) else tuple(slot_ids)
    if len(ids) != num_slots or not all(isinstance(slot_id, str) for slot_id in ids):
        raise ValueError(f"slot_ids must be a sequence of N = {num_slots} str (slot_active_mask "
                         f"is {describe_shape(slot_active_mask)}); got {slot_ids!r}")
    is_list = isinstance(attention_maps, Sequence) and not isinstance(attention_maps, Tensor)
    maps = list(attention_maps) if is_list else []
    if not maps:
        got = "an empty sequence" if is_list else type(attention_maps).__name__
        raise ValueError("attention_maps must be a list with one [B, T, heads, N+1, N+1] tensor "
                         f"per layer, for at least one layer; got {got}")
    for layer, layer_map in enumerate(maps):
        expect(f"attention_maps[{layer}]", layer_map, floating=True, device=slot_active_mask.device)
    first = maps[0]
    heads = first.shape[2] if first.dim() == 5 else 0
    if heads == 0 or first.shape != (batch, steps, heads, num_slots + 1, num_slots + 1):
        raise ValueError(f"attention_maps[0] must be [B={batch}, T={steps}, heads, N+1="
                         f"{num_slots + 1}, N+1={num_slots + 1}] (from slot_active_mask "
                         f"{describe_shape(slot_active_mask)}); got {describe_shape(first)}")
    for layer, layer_map in enumerate(maps[1:], start=1):
        expect(f"attention_maps[{layer}]", layer_map, shape=first.shape,
               hint=" (all attention maps must have the same shape)")
    if validation_enabled():
        key_invalid = ~slot_active_mask  # [B, T, N]
        for layer, layer_map in enumerate(maps):
            attn = layer_map.detach().to(torch.float32)  # [B, T, H, N+1, N+1]
            row_error = (attn.sum(-1) - 1).abs().max().item()
            masked_weight = attn[..., 1:] * key_invalid[:, :, None, None, :]
            worst = masked_weight.max().item() if masked_weight.numel() else 0.0
            if not bool(torch.isfinite(attn).all()):
                problem = "contains NaN or inf"
            elif bool((attn < 0).any()):
                problem = f"contains negative weights (min {attn.min().item():g})"
            elif row_error > _ROW_SUM_TOLERANCE:
                problem = f"rows must sum to 1 (softmax over keys); worst row is off by {row_error:g}"
            elif worst > _MASKED_KEY_TOLERANCE:
                problem = (f"gives weight {worst:g} to an inactive slot key; inactive slots "
                           "must be masked as keys (weight 0)")
            else:
                continue
            raise ValueError(f"attention_maps[{layer}] {problem}")
    return maps, ids


def compute_attention_stats(
    attention_maps: Sequence[Tensor], slot_active_mask: Tensor, slot_ids: Sequence[str]
) -> AttentionStats:
    """Summarise per-layer attention maps into an :class:`AttentionStats` (plain floats).

    Only the rows of CLS and the *active* slots count for the entropies (an empty grid's rows
    describe nothing). Computed in fp32 under ``torch.no_grad()``, read back in one host sync.

    Args:
        attention_maps: one floating ``[B, T, heads, N+1, N+1]`` tensor per layer, all the
            same shape (CLS first, rows = queries, columns = keys).
        slot_active_mask: bool ``[B, T, N]``, True = active slot.
        slot_ids: N slot ids (the action-index order).

    ``ValueError`` on wrong types, dtypes or shapes, and (with validation on) on non-finite or
    negative weights, rows not summing to 1 or weight on inactive keys.

    Example:
        >>> import torch
        >>> attn = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(1, 1, 1, 2, 2)
        >>> mask = torch.ones(1, 1, 1, dtype=torch.bool)
        >>> compute_attention_stats([attn], mask, ("r0c0",)).slot_distribution
        [0.0]
    """
    maps, ids = _validate_attention_inputs(attention_maps, slot_active_mask, slot_ids)
    num_slots = len(ids)
    with torch.no_grad():
        active = slot_active_mask.to(torch.float32)  # [B, T, N]
        token_valid = torch.cat([torch.ones_like(active[..., :1]), active], dim=-1)  # [B, T, N+1]
        log_num_keys = torch.log(token_valid.sum(-1))[:, :, None, None]  # [B, T, 1, 1], >= ln 1
        has_choice = log_num_keys > 0  # a single valid key has no entropy to normalise
        query_valid = token_valid.bool()[:, :, None, :]  # [B, T, 1, N+1]
        row_entropies = []
        for layer_map in maps:  # only valid keys count: [B, T, H, N+1, N+1]
            attn = layer_map.detach().to(torch.float32) * token_valid[:, :, None, None, :]
            entropy = -torch.special.xlogy(attn, attn).sum(-1)  # [B, T, H, N+1]
            normalised = torch.where(
                has_choice, entropy / log_num_keys.clamp_min(1e-12), torch.zeros_like(entropy)
            ).clamp(0.0, 1.0)  # fp rounding can step just outside [0, 1]
            row_entropies.append(normalised[query_valid.expand_as(normalised)])  # [rows]
        all_rows = torch.cat(row_entropies)  # [rows over all layers], never empty (CLS rows)
        last = maps[-1].detach().to(torch.float32)  # [B, T, H, N+1, N+1]
        key_active = active[:, :, None, :]  # [B, T, 1, N]
        slot_distribution = (last[:, :, :, 0, 1:] * key_active).mean(dim=(0, 1, 2))  # [N]
        slot_to_slot = (last[:, :, :, 1:, 1:] * key_active[:, :, :, None, :]).mean(2)  # [B, T, N, N]
        query_active = active[..., None]  # [B, T, N, 1]
        row_sums = (slot_to_slot * query_active).sum(dim=(0, 1))  # [N, N]
        row_counts = query_active.sum(dim=(0, 1)).clamp_min(1.0)  # [N, 1]
        slot_slot = row_sums / row_counts  # [N, N]; never-active rows are 0 / 1 = 0

        packed = torch.cat([all_rows.mean()[None], all_rows.min()[None], slot_distribution,
                            slot_slot.flatten()]).cpu()  # one host sync for everything
    values = [float(v) for v in packed.tolist()]
    flat = values[2 + num_slots :]
    return AttentionStats(
        entropy_mean=values[0], entropy_min=values[1], slot_distribution=values[2 : 2 + num_slots],
        slot_slot=[flat[row * num_slots : (row + 1) * num_slots] for row in range(num_slots)],
        slot_ids=ids,
    )


def policy_diagnostics(network_or_bundle: object) -> dict[str, object]:
    """Diagnostics payload for a PPO update: ``{"network_type", "attention_entropy_mean",
    "attention_entropy_min", "slot_attention_distribution"}``, JSON-serialisable.

    ``network_or_bundle`` is a network or a bundle with a ``.network``, of a registered
    ``network_type`` (`list_policies`). The attention keys are None without a
    ``get_attention_stats()`` or when it returns None (see :func:`capture_attention`).

    Example::

        with capture_attention(policy):
            policy.evaluate_actions(...)
        diagnostics.update(policy_diagnostics(policy))
    """
    network = getattr(network_or_bundle, "network", network_or_bundle)  # a bundle's, or itself
    network_type = getattr(network, "network_type", None)
    if network_type is None:
        network_type = getattr(network_or_bundle, "network_type", None)
    from slotformer.policy.registry import list_policies  # late: the policy layer imports us

    if network_type not in list_policies():
        raise ValueError(f"network_or_bundle must expose a registered network_type "
                         f"{list_policies()} (on itself or on its .network); got "
                         f"{network_type!r} from {type(network).__name__}")
    diagnostics: dict[str, object] = {"network_type": network_type, **dict.fromkeys(
        ("attention_entropy_mean", "attention_entropy_min", "slot_attention_distribution"))}
    get_stats = getattr(network, "get_attention_stats", None)
    stats = get_stats() if callable(get_stats) else None
    if stats is None:
        return diagnostics
    if not isinstance(stats, AttentionStats):
        raise TypeError(f"{type(network).__name__}.get_attention_stats() must return "
                        f"AttentionStats or None; got {type(stats).__name__}")
    return {**diagnostics, "attention_entropy_mean": float(stats.entropy_mean),
            "attention_entropy_min": float(stats.entropy_min),
            "slot_attention_distribution": [float(v) for v in stats.slot_distribution]}


class TelemetryHookHandle:
    """Handle returned by :meth:`TelemetryHooks.register`: ``remove()`` (idempotent) or leaving
    it as a context manager unregisters the hook, as ``torch.utils.hooks.RemovableHandle``.

    Example::

        hooks = TelemetryHooks()
        with hooks.register(lambda network, stats: print(stats.entropy_mean)):
            ...  # hook active here
    """

    def __init__(self, hooks_dict: dict[int, TelemetryHook], hook_id: int) -> None:
        self._hooks_dict = hooks_dict
        self.id = hook_id

    def remove(self) -> None:
        """Unregister the hook; calling it again does nothing."""
        self._hooks_dict.pop(self.id, None)

    def __enter__(self) -> TelemetryHookHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class TelemetryHooks:
    """An ordered registry of ``hook(network, stats)`` callables that a network embeds.

    Example:
        >>> hooks = TelemetryHooks()
        >>> seen = []
        >>> handle = hooks.register(lambda network, stats: seen.append(stats))
        >>> hooks.has_hooks
        True
        >>> hooks.call(None, "stats")
        >>> seen
        ['stats']
        >>> handle.remove()
        >>> hooks.has_hooks
        False
    """

    def __init__(self) -> None:
        self._hooks: dict[int, TelemetryHook] = {}
        self._next_id = itertools.count()

    def register(self, hook: TelemetryHook) -> TelemetryHookHandle:
        """Add ``hook``; it is called after the hooks registered before it."""
        if not callable(hook):
            raise TypeError(f"hook must be callable as hook(network, stats); got {hook!r}")
        handle = TelemetryHookHandle(self._hooks, next(self._next_id))
        self._hooks[handle.id] = hook
        return handle

    @property
    def has_hooks(self) -> bool:
        """True when at least one hook is registered (cheap: no tensor work)."""
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def call(self, network: object, stats: AttentionStats) -> None:
        """Call every hook with ``(network, stats)`` in registration order; errors propagate."""
        for hook in list(self._hooks.values()):  # a snapshot: a hook may remove itself
            hook(network, stats)


_MISSING = object()


@contextmanager
def capture_attention(network: _NetworkT) -> Iterator[_NetworkT]:
    """Set ``capture_attention = True`` on a network (or a bundle's ``.network``) for a block
    and yield the object passed in; after it, restore the old value (or none, for the LSTM).

    Example::

        with capture_attention(policy) as captured:
            captured.evaluate_actions(...)
        stats = policy.network.get_attention_stats()
    """
    target = getattr(network, "network", network)
    previous = getattr(target, "capture_attention", _MISSING)
    setattr(target, "capture_attention", True)  # noqa: B010 - mypy: target is an object
    try:
        yield network
    finally:
        if previous is _MISSING:
            delattr(target, "capture_attention")
        else:
            setattr(target, "capture_attention", previous)  # noqa: B010


__all__ = ["AttentionStats", "TelemetryHook", "TelemetryHookHandle", "TelemetryHooks",
           "capture_attention", "compute_attention_stats", "policy_diagnostics"]

