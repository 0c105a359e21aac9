"""The policy step: from head logits and masks to actions, log-probs and entropies.

One pure function, `policy_step`, turns the raw logits of a factored action space into one
action per head, in the order the action space's relevance table needs:

1. the **op** head is decided first (sampled, the most likely, or the stored one);
2. every other head's mask is **canonicalised** for that op: the pointer head's mask becomes
   ``slot_by_op[op]`` when given, and a head irrelevant to the op is forced to one canonical
   action (its row becomes one-hot), so it adds exactly 0 to the log-prob and the entropy;
3. each head is scored by its floored fp32 masked distribution (`slotformer.distributions`).

The networks' ``get_action`` and ``evaluate_actions`` call it, and so do the TorchRL and RLlib
adapters: rollout, update and every engine score an action with the same code. The heads other
than the op are laid side by side in one padded ``[..., K, W]`` tensor (`PackedHeads`), so the
step costs a fixed number of kernels whatever the number of heads.

`expected_entropy` and `factored_kl` give the entropy and the KL divergence of the whole
factored distribution, with the op marginalised analytically: every op's canonicalised masks
at once, no loop over ops or heads.

Shapes: ``[...]`` any leading shape (``[B]``, ``[B, T]``), ``n`` a head's size, ``O`` ops,
``N`` slots, ``K`` heads other than the op, ``W`` the widest of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.distributions import (
    LOG_PROB_MIN,
    InvalidStateMachineError,
    _masked_log_probs,
    _normalised_entropy,
    gather_log_prob,
    sample_actions,
)
from slotformer.validation import describe_shape, expect, validation_enabled

Floors = Mapping[str, float]
"""A minimum probability per valid action, by head name (absent = no floor)."""
ProbabilityFloor = float | Mapping[str, float] | None
"""A minimum probability per valid action: one float for every head, or per head name."""


def floors_by_head(space: ActionSpace, probability_floor: ProbabilityFloor) -> dict[str, float]:
    """``probability_floor`` as a floor per head name (heads without one are absent).

    Raises:
        ValueError: an unknown head name, or a value outside ``[0, 1)``.

    Example:
        >>> floors_by_head(ActionSpace.default(3), {"op": 0.05})
        {'op': 0.05}
    """
    if probability_floor is None:
        return {}
    if isinstance(probability_floor, Mapping):
        space.check_head_names("probability_floor", probability_floor)
        floors = {k: float(v) for k, v in probability_floor.items()}
    else:
        floors = dict.fromkeys(space.head_names, float(probability_floor))
    for head, value in floors.items():
        if not 0.0 <= value < 1.0:  # also rejects NaN
            raise ValueError(
                f"probability_floor for head {head!r} is {value}, expected a value in [0, 1)")
    return floors


def first_valid_index(mask: Tensor) -> Tensor:
    """Index of the first True in each row of ``mask [..., n]`` (0 for an all-False row)."""
    # argmax returns the first maximal index, which for 0/1 values is the first True.
    return mask.to(torch.uint8).argmax(dim=-1)


def select_slot_mask_for_op(slot_by_op: Tensor, ops: Tensor) -> Tensor:
    """The slot mask for each chosen op: ``slot_by_op [..., num_ops, N]`` at ``ops [...]``."""
    index = ops.unsqueeze(-1).unsqueeze(-1).expand(*ops.shape, 1, slot_by_op.shape[-1])
    return slot_by_op.gather(-2, index).squeeze(-2)  # [..., N]


@dataclass(frozen=True)
class PackedHeads:
    """The heads other than the op laid side by side: head ``k`` in row ``k`` of a
    ``[..., K, W]`` tensor, in its first ``sizes[k]`` columns; the rest is padding, always
    masked, so every masked-distribution formula gives the head's own result.

    Attributes:
        space: the action space.
        names: the heads, in action-space order (the op left out).
        sizes: their sizes; ``width`` = W, the largest.
        index: ``[K, W]`` int64: the column of ``cat(per-head tensors)`` for each cell
            (padding points at column 0; `real` masks it).
        real: ``[K, W]`` bool: True on a head's own columns.
        relevance: ``[O, K]`` bool: is head k relevant for op o.
        canonical: ``[K, W]`` bool: one-hot on head k's constant canonical action.
        first_valid: ``[K, 1]`` bool: heads whose canonical action is the first valid index
            of their own mask (the pointer head).
        pointer: ``[K, 1]`` bool: the pointer head's row (where ``slot_by_op`` applies).
    """

    space: ActionSpace
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    width: int
    index: Tensor
    real: Tensor
    relevance: Tensor
    canonical: Tensor
    first_valid: Tensor
    pointer: Tensor

    @classmethod
    def of(cls, space: ActionSpace, device: torch.device | str = "cpu") -> PackedHeads:
        """The packing of ``space`` on ``device`` (built once per space and device)."""
        cache: dict[str, PackedHeads] = space._packed  # type: ignore[attr-defined]
        packed = cache.get(str(device))
        if packed is None:
            # Not inside inference mode: tensors made there cannot be saved for backward,
            # and the cache outlives a rollout.
            with torch.inference_mode(False):
                packed = cache[str(device)] = cls._build(space, torch.device(device))
        return packed

    @classmethod
    def _build(cls, space: ActionSpace, device: torch.device) -> PackedHeads:
        heads = [h for h in space.heads if h.name != space.op_head]
        sizes = [h.size for h in heads]
        width, k = max(sizes, default=1), len(heads)
        offsets = [sum(sizes[:i]) for i in range(k)]

        def table(rows: list[list[bool]] | list[list[int]], dtype: torch.dtype) -> Tensor:
            return torch.tensor(rows, dtype=dtype, device=device).view(len(rows), -1)

        return cls(
            space=space,
            names=tuple(h.name for h in heads),
            sizes=tuple(sizes),
            width=width,
            index=table([[o + j if j < n else 0 for j in range(width)]
                         for o, n in zip(offsets, sizes)], torch.long).view(k, width),
            real=table([[j < n for j in range(width)] for n in sizes], torch.bool).view(k, width),
            relevance=table([[h.relevant_ops is None or op in h.relevant_ops for h in heads]
                             for op in range(space.num_ops)], torch.bool).view(space.num_ops, k),
            canonical=table([[h.canonical_action == j for j in range(width)] for h in heads],
                            torch.bool).view(k, width),
            first_valid=table([[h.canonical_action is None and h.relevant_ops is not None]
                               for h in heads], torch.bool).view(k, 1),
            pointer=table([[h.name == space.pointer_head] for h in heads],
                          torch.bool).view(k, 1),
        )

    def pack(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """``{name: [..., n_k]}`` -> ``[..., K, W]`` (padding cells repeat column 0; combine
        masks with `real`)."""
        flat = torch.cat([tensors[name] for name in self.names], dim=-1)  # [..., sum n_k]
        return flat[..., self.index]  # [..., K, W]

    def with_pointer_mask(self, masks: Tensor, pointer_mask: Tensor | None) -> Tensor:
        """``masks [..., K, W]`` with the pointer head's row replaced by ``pointer_mask``
        ``[..., N]`` (the slots valid for the chosen op; None = keep the row)."""
        if pointer_mask is None:
            return masks
        pad = self.width - pointer_mask.shape[-1]
        if pad:
            pointer_mask = torch.nn.functional.pad(pointer_mask, (0, pad))  # [..., W]
        return torch.where(self.pointer, pointer_mask.unsqueeze(-2), masks)

    def canonical_masks(self, masks: Tensor, ops: Tensor, slot_by_op: Tensor | None) -> Tensor:
        """``masks [..., K, W]`` canonicalised for ``ops [...]``: a relevant head keeps its
        mask (the pointer's becomes ``slot_by_op[op]``), an irrelevant one is one-hot on its
        canonical action."""
        pointer_mask = None if slot_by_op is None else select_slot_mask_for_op(slot_by_op, ops)
        return torch.where(self.relevance[ops].unsqueeze(-1),
                           self.with_pointer_mask(masks, pointer_mask), self.forced(masks))

    def forced(self, masks: Tensor) -> Tensor:
        """Each head's one-hot canonical row ``[..., K, W]``: its constant canonical action,
        or (the pointer) the first valid index of its own mask ``masks [..., K, W]``."""
        first = torch.arange(self.width, device=masks.device) == first_valid_index(
            masks).unsqueeze(-1)  # [..., K, W]
        return torch.where(self.first_valid, first, self.canonical)


@dataclass(frozen=True)
class PolicyStep:
    """What `policy_step` returns, per head name in action-space order, each ``[...]``.

    Attributes:
        actions: int64 chosen (or stored) action.
        log_probs: fp32 log-prob of that action under its canonicalised, floored
            distribution; exactly 0 for a head irrelevant to the op.
        entropies: fp32 entropy normalised by ``ln(num_valid)``, in [0, 1].
        empty_rows: int64 ``[]``: mask rows without any valid action (each fell back to
            action 0), counted only while validation is off (with it on they raise); None
            otherwise.
    """

    actions: dict[str, Tensor]
    log_probs: dict[str, Tensor]
    entropies: dict[str, Tensor]
    empty_rows: Tensor | None = None


def policy_step(
    action_space: ActionSpace | PackedHeads,
    logits: Mapping[str, Tensor],
    masks: Mapping[str, Tensor | None] | None = None,
    slot_by_op: Tensor | None = None,
    *,
    actions: Mapping[str, Tensor] | None = None,
    deterministic: bool = False,
    floors: Floors | None = None,
    floor_mode: str = "clip",
    generator: torch.Generator | None = None,
) -> PolicyStep:
    """Decide (or re-score) one action per head: the op first, the other heads under masks
    canonicalised for it.

    Args:
        action_space: the heads, their relevance to each op and canonical actions (or its
            `PackedHeads`, which the networks build once per grid).
        logits: every head's **unmasked** logits ``[..., n]``, any float dtype.
        masks: head name -> bool ``[..., n]``, True = valid; a missing head or None = all
            valid. Masks the caller built; they are not canonicalised yet.
        slot_by_op: bool ``[..., O, N]``: the valid slots for each op (the pointer head's
            mask once the op is chosen), or None.
        actions: stored int64 actions ``[...]`` per head name, to score instead of choosing
            (the update). A head irrelevant to the stored op scores 0 whatever was stored,
            and a stored action its mask forbids scores `LOG_PROB_MIN` while validation is
            off (with it on it raises).
        deterministic: take each head's most likely action instead of sampling.
        floors: a minimum probability per valid action, by head name.
        floor_mode: ``"clip"`` or ``"mix"`` (`slotformer.distributions.masked_log_probs`).
        generator: RNG for sampling (None = the global RNG).

    Returns:
        `PolicyStep`.

    Raises (validation on, one host sync for all of them):
        ValueError: NaN or inf logits; a stored action its mask forbids; a floor that cannot
            hold (floor x valid actions > 1).
        InvalidStateMachineError: a mask row without any valid action.

    Example:
        >>> space = ActionSpace.default(num_slots=3)
        >>> logits = {h.name: torch.zeros(4, h.size) for h in space.heads}
        >>> step = policy_step(space, logits, slot_by_op=torch.ones(4, 6, 3, dtype=torch.bool))
        >>> step.actions["slot"].shape, step.log_probs["op"].shape
        (torch.Size([4]), torch.Size([4]))
        >>> again = policy_step(space, logits, actions=step.actions)
        >>> torch.allclose(sum(again.log_probs.values()), sum(step.log_probs.values()))
        True
    """
    packed = _packing(action_space, logits)
    action_space = packed.space
    op_name = action_space.op_head
    op_logits = logits[op_name]
    lead, device = op_logits.shape[:-1], op_logits.device
    masks = {} if masks is None else masks
    full = {h.name: _mask_or_all(masks.get(h.name), lead, h.size, device)
            for h in action_space.heads}
    floors = {} if floors is None else floors
    check = validation_enabled()

    def decide(log_probs: Tensor, given: Tensor | None) -> Tensor:
        if given is not None:
            return given
        if deterministic:
            return log_probs.argmax(dim=-1)
        return sample_actions(log_probs, generator=generator)

    # 1. The op.
    op_log_probs = _masked_log_probs(op_logits, full[op_name], floors.get(op_name, 0.0),
                                     floor_mode)  # [..., O]
    op = decide(op_log_probs, None if actions is None else actions[op_name])  # [...]
    # 2. The other heads, side by side, canonicalised for it.
    packed_masks = packed.pack(full) & packed.real  # [..., K, W]
    canonical = packed.canonical_masks(packed_masks, op, slot_by_op)  # [..., K, W]
    head_floors = _head_floors(packed, floors, device)
    log_probs = _masked_log_probs(packed.pack(logits), canonical, head_floors, floor_mode)
    given = None if actions is None else torch.stack([actions[n] for n in packed.names], -1)
    chosen = decide(log_probs, given)  # [..., K]
    scores = gather_log_prob(log_probs, chosen)  # [..., K]
    if given is not None:
        # An irrelevant head's choice did nothing: it scores 0 whatever was stored (the
        # rollout stored its canonical action, whose log-prob is exactly 0).
        scores = torch.where(packed.relevance[op], scores, 0.0)
    entropy = _normalised_entropy(log_probs, canonical)  # [..., K]
    op_score = gather_log_prob(op_log_probs, op)
    if check:
        _check_values(action_space, logits, full, slot_by_op, canonical, packed,
                      op_score, scores, given is not None, floors)
    empty_rows = None
    if not check and not torch.compiler.is_compiling():
        empty_rows = (~full[op_name].any(-1)).sum() + (~canonical.any(-1)).sum()
    if given is not None:
        # Validation off: a forbidden stored action scores LOG_PROB_MIN, not -inf, so a PPO
        # ratio stays finite and no gradient flows through it.
        # A valid action keeps its log-prob, however small.
        op_score = torch.where(op_score == float("-inf"), LOG_PROB_MIN, op_score)
        scores = torch.where(scores == float("-inf"), LOG_PROB_MIN, scores)
    out_actions = dict(zip(packed.names, chosen.unbind(-1)))
    out_scores = dict(zip(packed.names, scores.unbind(-1)))
    out_entropy = dict(zip(packed.names, entropy.unbind(-1)))
    out_actions[op_name], out_scores[op_name] = op, op_score
    out_entropy[op_name] = _normalised_entropy(op_log_probs, full[op_name])
    order = action_space.head_names
    return PolicyStep(
        actions={n: out_actions[n] for n in order},
        log_probs={n: out_scores[n] for n in order},
        entropies={n: out_entropy[n] for n in order},
        empty_rows=empty_rows,
    )


def _packing(space: ActionSpace | PackedHeads, logits: Mapping[str, Tensor]) -> PackedHeads:
    if isinstance(space, PackedHeads):
        return space
    return PackedHeads.of(space, logits[space.op_head].device)


def _mask_or_all(mask: Tensor | None, lead: torch.Size, size: int, device: torch.device) -> Tensor:
    return torch.ones(*lead, size, dtype=torch.bool, device=device) if mask is None else mask


def _head_floors(packed: PackedHeads, floors: Floors, device: torch.device) -> float | Tensor:
    """One floor for every packed head (a float), or one per row ``[K, 1]``."""
    values = [floors.get(name, 0.0) for name in packed.names]
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)


def _mask_label(space: ActionSpace, head: str, slot_by_op: bool) -> str:
    """How errors name a head's mask: the networks' argument and the masks dict's key."""
    if slot_by_op and head == space.pointer_head:
        return "slot_by_op_mask (masks['slot_by_op']) at the chosen op"
    return f"{head}_mask (masks[{head!r}])"


def _check_values(
    space: ActionSpace,
    logits: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    slot_by_op: Tensor | None,
    canonical: Tensor,
    packed: PackedHeads,
    op_score: Tensor,
    scores: Tensor,
    stored: bool,
    floors: Floors,
) -> None:
    """Every value check of a policy step, with one host sync: non-finite logits per head,
    mask rows without a valid action, stored actions their masks forbid, floors that cannot
    hold. The message names the head and the argument."""
    names = space.head_names
    bad_logits = [(~torch.isfinite(logits[n])).sum() for n in names]
    empty = [(~masks[space.op_head].any(-1)).sum(), (~canonical.any(-1)).sum()]
    forbidden = [(op_score == float("-inf")).sum(), (scores == float("-inf")).sum()]
    floor_counts = [
        (masks[n].sum(-1) * floor > 1.0).sum() for n, floor in floors.items() if floor > 0
    ]
    ambiguous = slot_by_op is not None and space.num_ops == space.num_slots
    if slot_by_op is not None and ambiguous:
        # As many slots as ops: a [B, N, num_ops] tensor passes every shape check. Rows of
        # ops the op mask forbids that still allow slots betray it (in Slot Garden, and
        # wherever an op is allowed exactly when it has a target).
        pointer_relevant = packed.relevance[:, packed.names.index(space.pointer_head)]
        floor_counts.append(
            (~masks[space.op_head] & pointer_relevant & slot_by_op.any(-1)).sum())
    counts = torch.stack([*bad_logits, *empty, *forbidden, *floor_counts]).tolist()
    betrayed = counts.pop() if ambiguous else 0
    if betrayed:
        assert slot_by_op is not None
        warnings.warn(
            f"slot_by_op has shape {describe_shape(slot_by_op)}: with as many slots as ops "
            f"({space.num_ops}) its layout cannot be told from its shape, and {betrayed} of its "
            f"rows for ops the op mask forbids allow slots. Check that it is [B, num_ops, N] "
            f"(op first), not [B, N, num_ops].", stacklevel=4)
    bad = {n: c for n, c in zip(names, counts) if c}
    if bad:
        raise ValueError(f"logits must be finite; non-finite values per head: {bad}")
    if counts[len(names)] or counts[len(names) + 1]:
        rows = (~canonical.any(-1)).sum(tuple(range(canonical.dim() - 2))).tolist()  # [K]
        found = [(n, r) for n, r in zip(packed.names, rows) if r]
        if counts[len(names)]:
            found.append((space.op_head, int(counts[len(names)])))
        where = "; ".join(f"{r} row(s) of {_mask_label(space, n, slot_by_op is not None)}"
                          for n, r in found)
        raise InvalidStateMachineError(
            f"mask rows with no valid action (for the chosen op): {where}; every row needs at "
            f"least one True entry"
        )
    if stored and (counts[len(names) + 2] or counts[len(names) + 3]):
        per_head = {n: int(c) for n, c in zip(
            packed.names, (scores == float("-inf")).sum(tuple(range(scores.dim() - 1))).tolist())
            if c}
        if counts[len(names) + 2]:
            per_head[space.op_head] = int(counts[len(names) + 2])
        raise ValueError(
            f"actions include choices that their masks forbid (for the stored op), count per "
            f"head: {per_head}; pass the masks stored at rollout"
        )
    floor_rows = dict(zip((n for n, f in floors.items() if f > 0), counts[len(names) + 4:]))
    for name, rows in floor_rows.items():
        if rows:
            raise floor_cannot_hold(name, floors[name], int(rows))


def floor_cannot_hold(name: str, floor: float, rows: int) -> ValueError:
    """The error for ``rows`` mask rows of head ``name`` with more than ``1 / floor`` valid
    actions (no distribution gives each of them ``floor``)."""
    return ValueError(
        f"probability_floor for head {name!r} is {floor}, but {rows} row(s) of its mask have "
        f"more than 1 / {floor} = {1 / floor:.4g} valid actions: the floor cannot hold (floor x "
        f"valid actions must be <= 1)")


def _all_ops(
    space: ActionSpace | PackedHeads,
    logits: Mapping[str, Tensor],
    masks: Mapping[str, Tensor | None] | None,
    slot_by_op: Tensor | None,
    floors: Floors | None,
    floor_mode: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's log-probs ``[..., O]`` and its mask, and every other head's log-probs and
    canonical masks under every op ``[..., O, K, W]``."""
    packed = _packing(space, logits)
    space = packed.space
    op_name = space.op_head
    op_logits = logits[op_name]
    lead, device = op_logits.shape[:-1], op_logits.device
    masks = {} if masks is None else masks
    full = {h.name: _mask_or_all(masks.get(h.name), lead, h.size, device) for h in space.heads}
    floors = {} if floors is None else floors
    op_log_probs = _masked_log_probs(op_logits, full[op_name], floors.get(op_name, 0.0),
                                     floor_mode)  # [..., O]
    packed_masks = (packed.pack(full) & packed.real).unsqueeze(-3)  # [..., 1, K, W]
    # slot_by_op [..., O, N] holds the pointer's mask under every op: one row per op.
    relevant_masks = packed.with_pointer_mask(packed_masks, slot_by_op)  # [..., O | 1, K, W]
    relevance = packed.relevance.unsqueeze(-1)  # [O, K, 1]
    canonical = torch.where(relevance, relevant_masks, packed.forced(packed_masks))
    head_floors = _head_floors(packed, floors, device)
    log_probs = _masked_log_probs(packed.pack(logits).unsqueeze(-3), canonical, head_floors,
                                  floor_mode)  # [..., O, K, W]
    return op_log_probs, full[op_name], log_probs, canonical


def expected_entropy(
    action_space: ActionSpace | PackedHeads,
    logits: Mapping[str, Tensor],
    masks: Mapping[str, Tensor | None] | None = None,
    slot_by_op: Tensor | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    floors: Floors | None = None,
    floor_mode: str = "clip",
) -> Tensor:
    """The factored distribution's entropy bonus, the op marginalised analytically:
    ``w_op H(op) + sum_o p(o) sum_h w_h H(h | o)``, each head's entropy normalised by
    ``ln(num_valid)`` under the masks canonicalised for op ``o`` (``[...]`` fp32).

    The weights ``p(o)`` carry no gradient: the bonus then trains each head as a PPO loop
    scoring the stored op does (in expectation), and does not pull the op toward ops with
    more relevant heads. ``weights`` (head name -> coefficient, default 1) scale each head's
    term: per-head entropy coefficients.

    Example:
        >>> space = ActionSpace.default(num_slots=3)
        >>> logits = {h.name: torch.zeros(2, h.size) for h in space.heads}
        >>> expected_entropy(space, logits).shape
        torch.Size([2])
    """
    packed = _packing(action_space, logits)
    op_log_probs, op_mask, log_probs, canonical = _all_ops(
        packed, logits, masks, slot_by_op, floors, floor_mode)
    w = {} if weights is None else weights
    per_head = _normalised_entropy(log_probs, canonical)  # [..., O, K]
    if any(w.get(n, 1.0) != 1.0 for n in packed.names):
        per_head = per_head * torch.tensor([w.get(n, 1.0) for n in packed.names],
                                           device=per_head.device)
    heads = (op_log_probs.exp().detach() * per_head.sum(-1)).sum(-1)  # [...]
    op_entropy = _normalised_entropy(op_log_probs, op_mask)
    return w.get(packed.space.op_head, 1.0) * op_entropy + heads


def factored_kl(
    action_space: ActionSpace | PackedHeads,
    logits: Mapping[str, Tensor],
    other_logits: Mapping[str, Tensor],
    masks: Mapping[str, Tensor | None] | None = None,
    slot_by_op: Tensor | None = None,
    *,
    floors: Floors | None = None,
    floor_mode: str = "clip",
) -> Tensor:
    """``KL(p || q)`` of two factored distributions on the same masks (``[...]`` fp32):
    ``KL(op) + sum_o p(o) sum_h KL(h | o)``, exact, every op at once.

    Example:
        >>> space = ActionSpace.default(num_slots=3)
        >>> p = {h.name: torch.randn(2, h.size) for h in space.heads}
        >>> factored_kl(space, p, p).abs().max().item() < 1e-6
        True
    """
    p_op, _, p_heads, canonical = _all_ops(action_space, logits, masks, slot_by_op, floors,
                                           floor_mode)
    q_op, _, q_heads, _ = _all_ops(action_space, other_logits, masks, slot_by_op, floors,
                                   floor_mode)
    op_kl = _kl(p_op, q_op)  # [...]
    heads = _kl(p_heads, q_heads, canonical).sum(-1)  # [..., O]
    return op_kl + (p_op.exp() * heads).sum(-1)


def _kl(p: Tensor, q: Tensor, valid: Tensor | None = None) -> Tensor:
    """``sum p (log p - log q)`` over the last axis of two log-prob tensors; masked entries
    (``-inf`` in both) add 0."""
    valid = p > float("-inf") if valid is None else valid
    diff = (p - q).masked_fill(~valid, 0.0)
    return (p.exp() * diff).sum(-1)


def check_shapes(
    action_space: ActionSpace, logits: Mapping[str, Tensor], masks: Mapping[str, Tensor | None],
    slot_by_op: Tensor | None,
) -> torch.Size:
    """An adapter's boundary: every head's logits and mask ``[..., n]`` with one leading
    shape, ``slot_by_op`` bool ``[..., O, N]``; returns the leading shape.

    Raises:
        ValueError: naming the head or argument, the shape it has and the one expected.
    """
    lead = logits[action_space.op_head].shape[:-1]
    hint = " (the op logits' leading shape + the head's size)"
    for head in action_space.heads:
        expect(f"logits[{head.name!r}]", logits[head.name], shape=(*lead, head.size), hint=hint)
        if masks.get(head.name) is not None:
            expect(f"masks[{head.name!r}]", masks[head.name], dtype=torch.bool,
                   shape=(*lead, head.size), hint=hint + "; True = valid")
    if slot_by_op is not None:
        expect("slot_by_op", slot_by_op, dtype=torch.bool,
               shape=(*lead, action_space.num_ops, action_space.num_slots),
               hint=" (the leading shape + (num_ops, N))")
    return lead
