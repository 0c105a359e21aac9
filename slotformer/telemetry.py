"""Attention telemetry as plain data: statistics, a diagnostics payload and hooks.

The Slot Transformer encoder can return one attention map per layer, each
``[B, T, heads, N+1, N+1]`` with queries as rows and keys as columns in CLS-first order
(index 0 = CLS, 1..N = slots). Inactive slots are masked as keys (they receive exactly 0
weight) and every query row attends to CLS plus the active slots.

This module turns those maps into a small, JSON-serialisable :class:`AttentionStats`, builds
the diagnostics dict a PPO loop ships to its own telemetry (:func:`policy_diagnostics`), and
provides the hook plumbing the networks embed (:class:`TelemetryHooks`). Nothing here runs on
the hot path: :func:`compute_attention_stats` is the one place that reads tensor values back to
the host, and it is only called when the caller asked for diagnostics.

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
from types import TracebackType
from typing import Any, TypeVar

import torch
from torch import Tensor

from slotformer.validation import describe_shape, expect, validation_enabled

# Tolerances of the (validation-gated) sanity checks on attention maps. Maps may come from
# bf16/fp16 attention, so row sums are only checked loosely.
_MASKED_KEY_TOLERANCE = 1e-3
_ROW_SUM_TOLERANCE = 1e-2

_NetworkT = TypeVar("_NetworkT")
TelemetryHook = Callable[[Any, "AttentionStats"], object]
"""A hook receives ``(network, stats)``; its return value is ignored."""


@dataclass(frozen=True)
class AttentionStats:
    """Summary of one captured set of attention maps (see :func:`compute_attention_stats`).

    Attributes:
        entropy_mean: mean normalised attention entropy over batch, time, heads, layers and
            the valid query rows (CLS and active slots). Each row's entropy is divided by
            ``ln(number of valid keys)`` (CLS + active slots), so 0 = one-hot, 1 = uniform;
            a row with a single valid key counts 0.
        entropy_min: the smallest of those normalised row entropies (the sharpest row).
        slot_distribution: length N; attention mass each slot receives from the CLS query in
            the last layer, averaged over batch, time and heads. Inactive slots get 0. The sum
            is ``1 - mean mass CLS keeps on itself``.
        slot_slot: ``[N][N]``; last-layer attention from query slot (row) to key slot (col),
            averaged over heads and over the (batch, time) positions where the *query* slot is
            active. A slot that is never active has an all-zero row. Rows sum to at most 1 (the
            rest goes to CLS).
        slot_ids: the slot ids, in action-index order.
        network_type: always ``"transformer"`` (only attention networks produce these).

    Example::

        stats = compute_attention_stats(maps, active_mask, slot_config.slot_ids)
        json.dumps(stats.to_dict())
    """

    entropy_mean: float
    entropy_min: float
    slot_distribution: list[float]
    slot_slot: list[list[float]]
    slot_ids: tuple[str, ...]
    network_type: str = "transformer"

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable copy (lists are copied, ``slot_ids`` becomes a list)."""
        return {
            "network_type": self.network_type,
            "entropy_mean": self.entropy_mean,
            "entropy_min": self.entropy_min,
            "slot_distribution": list(self.slot_distribution),
            "slot_slot": [list(row) for row in self.slot_slot],
            "slot_ids": list(self.slot_ids),
        }


def _validate_attention_inputs(
    attention_maps: Sequence[Tensor], slot_active_mask: Tensor, slot_ids: Sequence[str]
) -> tuple[list[Tensor], tuple[str, ...]]:
    """Metadata checks (always) and value checks (when validation is enabled)."""
    expect("slot_active_mask", slot_active_mask, dtype=torch.bool, hint=" (bool [B, T, N])")
    if slot_active_mask.dim() != 3 or 0 in slot_active_mask.shape[:2]:
        raise ValueError(
            "slot_active_mask must be [B, T, N] with at least one (batch, time) position; "
            f"got shape {describe_shape(slot_active_mask)}"
        )
    batch, steps, num_slots = slot_active_mask.shape

    ids = () if isinstance(slot_ids, str) or not isinstance(slot_ids, Sequence) else tuple(slot_ids)
    if len(ids) != num_slots or not all(isinstance(slot_id, str) for slot_id in ids):
        raise ValueError(
            f"slot_ids must be a sequence of N = {num_slots} str (slot_active_mask is "
            f"{describe_shape(slot_active_mask)}); got {slot_ids!r}"
        )

    if isinstance(attention_maps, Tensor) or not isinstance(attention_maps, Sequence):
        raise ValueError(
            "attention_maps must be a list with one [B, T, heads, N+1, N+1] tensor per layer; "
            f"got {type(attention_maps).__name__}"
        )
    maps = list(attention_maps)
    if not maps:
        raise ValueError("attention_maps must hold at least one layer; got an empty sequence")
    for layer, layer_map in enumerate(maps):
        expect(f"attention_maps[{layer}]", layer_map, floating=True, device=slot_active_mask.device)
    first = maps[0]
    heads = first.shape[2] if first.dim() == 5 else 0
    if heads == 0 or first.shape != (batch, steps, heads, num_slots + 1, num_slots + 1):
        raise ValueError(
            f"attention_maps[0] must be [B={batch}, T={steps}, heads, N+1={num_slots + 1}, "
            f"N+1={num_slots + 1}] (from slot_active_mask {describe_shape(slot_active_mask)}); "
            f"got {describe_shape(first)}"
        )
    for layer, layer_map in enumerate(maps[1:], start=1):
        expect(
            f"attention_maps[{layer}]", layer_map, shape=first.shape,
            hint=" (all attention maps must have the same shape)",
        )

    if validation_enabled():
        with torch.no_grad():
            key_invalid = ~slot_active_mask  # [B, T, N]
            for layer, layer_map in enumerate(maps):
                name = f"attention_maps[{layer}]"
                attn = layer_map.detach().to(torch.float32)  # [B, T, H, N+1, N+1]
                if not bool(torch.isfinite(attn).all()):
                    raise ValueError(f"{name} contains NaN or inf")
                if bool((attn < 0).any()):
                    raise ValueError(f"{name} contains negative weights (min {attn.min().item():g})")
                row_error = (attn.sum(-1) - 1).abs().max().item()
                if row_error > _ROW_SUM_TOLERANCE:
                    raise ValueError(
                        f"{name} rows must sum to 1 (softmax over keys); worst row is off by "
                        f"{row_error:g}"
                    )
                masked_weight = attn[..., 1:] * key_invalid[:, :, None, None, :]
                worst = masked_weight.max().item() if masked_weight.numel() else 0.0
                if worst > _MASKED_KEY_TOLERANCE:
                    raise ValueError(
                        f"{name} gives weight {worst:g} to an inactive slot key; inactive slots "
                        "must be masked as keys (weight 0)"
                    )
    return maps, ids


def compute_attention_stats(
    attention_maps: Sequence[Tensor], slot_active_mask: Tensor, slot_ids: Sequence[str]
) -> AttentionStats:
    """Summarise per-layer attention maps into an :class:`AttentionStats`.

    Query rows counted for the entropy statistics are CLS and the *active* slots: inactive
    slots still produce rows (their representation feeds the pointer head), but the
    diagnostic question is how sharply the entities that exist attend, and an empty grid
    would otherwise dominate the mean with rows that describe nothing. Keys beyond CLS and the
    active slots carry zero weight by contract and are excluded from the entropy. Everything is
    computed in fp32 under ``torch.no_grad()``; the results are read back with one host sync.

    Args:
        attention_maps: one tensor per layer, each ``[B, T, heads, N+1, N+1]``, CLS first,
            rows = queries, columns = keys, floating dtype, all the same shape.
        slot_active_mask: bool ``[B, T, N]``, True = active slot.
        slot_ids: N slot ids (the action-index order).

    Returns:
        AttentionStats with plain Python floats and lists.

    Raises:
        ValueError: on wrong types, dtypes or shapes (always), and on non-finite or negative
            weights, rows not summing to 1 or weight on inactive keys (when validation is on).

    Example::

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
        cls_column = torch.ones_like(active[..., :1])  # [B, T, 1]
        token_valid = torch.cat([cls_column, active], dim=-1)  # [B, T, N+1], CLS never masked
        num_valid_keys = token_valid.sum(-1)  # [B, T], >= 1
        log_num_keys = torch.log(num_valid_keys)[:, :, None, None]  # [B, T, 1, 1]
        has_choice = log_num_keys > 0  # a single valid key has no entropy to normalise
        query_valid = token_valid.bool()[:, :, None, :]  # [B, T, 1, N+1]

        row_entropies = []
        for layer_map in maps:
            attn = layer_map.detach().to(torch.float32)  # [B, T, H, N+1, N+1]
            attn = attn * token_valid[:, :, None, None, :]  # only valid keys count
            entropy = -torch.special.xlogy(attn, attn).sum(-1)  # [B, T, H, N+1]
            normalised = torch.where(
                has_choice, entropy / log_num_keys.clamp_min(1e-12), torch.zeros_like(entropy)
            ).clamp(0.0, 1.0)  # fp rounding can step just outside [0, 1]
            row_entropies.append(normalised[query_valid.expand_as(normalised)])  # [rows]
        all_rows = torch.cat(row_entropies)  # [rows over all layers], never empty (CLS rows)

        last = maps[-1].detach().to(torch.float32)  # [B, T, H, N+1, N+1]
        key_active = active[:, :, None, :]  # [B, T, 1, N]
        cls_to_slots = last[:, :, :, 0, 1:] * key_active  # [B, T, H, N]
        slot_distribution = cls_to_slots.mean(dim=(0, 1, 2))  # [N]

        slot_to_slot = (last[:, :, :, 1:, 1:] * key_active[:, :, :, None, :]).mean(2)  # [B, T, N, N]
        query_active = active[..., None]  # [B, T, N, 1]
        row_sums = (slot_to_slot * query_active).sum(dim=(0, 1))  # [N, N]
        row_counts = query_active.sum(dim=(0, 1)).clamp_min(1.0)  # [N, 1]
        slot_slot = row_sums / row_counts  # [N, N]; never-active rows are 0 / 1 = 0

        packed = torch.cat(
            [all_rows.mean()[None], all_rows.min()[None], slot_distribution, slot_slot.flatten()]
        ).cpu()  # one host sync for everything
    values = packed.tolist()
    distribution = values[2 : 2 + num_slots]
    matrix_flat = values[2 + num_slots :]
    matrix = [matrix_flat[row * num_slots : (row + 1) * num_slots] for row in range(num_slots)]
    return AttentionStats(
        entropy_mean=float(values[0]),
        entropy_min=float(values[1]),
        slot_distribution=[float(v) for v in distribution],
        slot_slot=[[float(v) for v in row] for row in matrix],
        slot_ids=ids,
    )


def _resolve_network(network_or_bundle: object) -> object:
    """A policy bundle exposes its network as ``.network``; a network is used as is."""
    return getattr(network_or_bundle, "network", network_or_bundle)


def policy_diagnostics(network_or_bundle: object) -> dict[str, object]:
    """Diagnostics payload for a PPO update: network type and attention statistics.

    The result holds only str, float, list and None, so ``json.dumps`` accepts it. The
    attention keys are None for the LSTM, and for a transformer whose
    ``get_attention_stats()`` returns None (nothing captured yet; see :func:`capture_attention`).

    Args:
        network_or_bundle: a network, or a policy bundle with a ``.network`` attribute. Its
            ``network_type`` must be a registered policy type (`list_policies`: the built-in
            ones and any registered with `register_policy`); a network may have a callable
            ``get_attention_stats()`` returning :class:`AttentionStats` or None.

    Returns:
        ``{"network_type", "attention_entropy_mean", "attention_entropy_min",
        "slot_attention_distribution"}``.

    Example::

        with capture_attention(policy):
            policy.evaluate_actions(...)
        diagnostics.update(policy_diagnostics(policy))
    """
    network = _resolve_network(network_or_bundle)
    network_type = getattr(network, "network_type", None)
    if network_type is None:
        network_type = getattr(network_or_bundle, "network_type", None)
    # Late import: the registry lives in the policy layer, which imports this module.
    from slotformer.policy.registry import list_policies

    if network_type not in list_policies():
        raise ValueError(
            f"network_or_bundle must expose a registered network_type {list_policies()} (on "
            f"itself or on its .network); got {network_type!r} from {type(network).__name__}"
        )
    diagnostics: dict[str, object] = {
        "network_type": network_type,
        "attention_entropy_mean": None,
        "attention_entropy_min": None,
        "slot_attention_distribution": None,
    }
    get_stats = getattr(network, "get_attention_stats", None)
    if not callable(get_stats):
        return diagnostics
    stats = get_stats()
    if stats is None:
        return diagnostics
    if not isinstance(stats, AttentionStats):
        raise TypeError(
            f"{type(network).__name__}.get_attention_stats() must return AttentionStats or None; "
            f"got {type(stats).__name__}"
        )
    diagnostics["attention_entropy_mean"] = float(stats.entropy_mean)
    diagnostics["attention_entropy_min"] = float(stats.entropy_min)
    diagnostics["slot_attention_distribution"] = [float(v) for v in stats.slot_distribution]
    return diagnostics


class TelemetryHookHandle:
    """Handle returned by :meth:`TelemetryHooks.register`; ``remove()`` unregisters the hook.

    Like ``torch.utils.hooks.RemovableHandle``: ``remove()`` is idempotent, and the handle is a
    context manager that removes the hook on exit.

    Args:
        hooks_dict: the registry dict the hook lives in.
        hook_id: the hook's key in that dict.

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


class TelemetryHooks:
    """An ordered registry of ``hook(network, stats)`` callables that a network embeds.

    Example::

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
        hook_id = next(self._next_id)
        self._hooks[hook_id] = hook
        return TelemetryHookHandle(self._hooks, hook_id)

    @property
    def has_hooks(self) -> bool:
        """True when at least one hook is registered (cheap: no tensor work)."""
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def call(self, network: object, stats: AttentionStats) -> None:
        """Call every hook with ``(network, stats)`` in registration order; errors propagate."""
        # A snapshot, so a hook that removes itself (or registers another) is safe.
        for hook in list(self._hooks.values()):
            hook(network, stats)


_MISSING = object()


@contextmanager
def capture_attention(network: _NetworkT) -> Iterator[_NetworkT]:
    """Set ``capture_attention = True`` on a network for a block, then restore the old value.

    A policy bundle is accepted (its ``.network`` is switched). A network without the attribute
    (the LSTM) gets it for the block only and loses it after, so the same code runs for both
    network types.

    Args:
        network: a network or a policy bundle.

    Yields:
        The object passed in.

    Example::

        with capture_attention(policy) as captured:
            captured.evaluate_actions(...)
        stats = policy.network.get_attention_stats()
    """
    target = _resolve_network(network)
    previous = getattr(target, "capture_attention", _MISSING)
    setattr(target, "capture_attention", True)  # noqa: B010 - mypy: target is an object
    try:
        yield network
    finally:
        if previous is _MISSING:
            delattr(target, "capture_attention")
        else:
            setattr(target, "capture_attention", previous)  # noqa: B010


__all__ = [
    "AttentionStats",
    "TelemetryHook",
    "TelemetryHookHandle",
    "TelemetryHooks",
    "capture_attention",
    "compute_attention_stats",
    "policy_diagnostics",
]

