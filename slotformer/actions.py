"""The factored action space: head specs, op relevance, canonical actions, mask canonicalisation.

An action is one choice per head. One head is the **op** (what to do); its choice decides
which other heads matter. A head that is irrelevant to the chosen op is forced to a single
canonical action by turning its mask row one-hot, so its log-prob is exactly 0 and its
normalised entropy exactly 0, and PPO gets no gradient noise from choices that do nothing.
One head is the **pointer** over slots; its size is the grid's slot count N.

The policy step (`slotformer.policy_step`) applies this at rollout and at update alike;
`canonicalize_masks` gives the same masks per head.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from slotformer.validation import expect


@dataclass(frozen=True)
class HeadSpec:
    """One categorical action head.

    Args:
        name: the head's name; outputs are keyed ``"{name}_logits"`` and masks by ``name``.
        size: number of choices (for the pointer head: the slot count N).
        relevant_ops: the ops for which this head's choice matters; ``None`` = every op.
        canonical_action: the action forced when the head is irrelevant; ``None`` = the first
            valid index of the head's mask (the slot pointer's).
    """

    name: str
    size: int
    relevant_ops: frozenset[int] | None = None
    canonical_action: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("HeadSpec.name must be a non-empty string")
        if self.size < 1:
            raise ValueError(f"head {self.name!r}: size must be >= 1, got {self.size}")
        if self.relevant_ops is not None:
            object.__setattr__(self, "relevant_ops", frozenset(int(o) for o in self.relevant_ops))
        if self.canonical_action is not None:
            # A plain int, not an IntEnum member: under torch.compile, `tensor == IntEnum`
            # fails to trace (dynamo cannot dispatch the enum's comparison).
            object.__setattr__(self, "canonical_action", int(self.canonical_action))
        if self.canonical_action is not None and not 0 <= self.canonical_action < self.size:
            raise ValueError(
                f"head {self.name!r}: canonical_action={self.canonical_action} is outside "
                f"[0, {self.size})"
            )


@dataclass(frozen=True)
class ActionSpace:
    """An ordered set of factored heads, with one op head and (optionally) one slot pointer.

    Args:
        heads: the heads in output order.
        op_head: name of the head whose choice conditions relevance and Q(s, op).
        pointer_head: name of the head that points at a slot (size = N), or ``None``.

    Example:
        >>> space = ActionSpace.default(num_slots=4)
        >>> space.head_names[0], space.sizes["slot"], space.num_ops
        ('slot', 4, 6)
    """

    heads: tuple[HeadSpec, ...]
    op_head: str = "op"
    pointer_head: str | None = "slot"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        names = [h.name for h in self.heads]
        sizes = {h.name: h.size for h in self.heads}
        object.__setattr__(self, "head_names", tuple(names))
        object.__setattr__(self, "sizes", MappingProxyType(sizes))
        object.__setattr__(self, "num_ops", sizes.get(self.op_head, 0))
        object.__setattr__(self, "num_slots", sizes.get(self.pointer_head or "", None))
        # The policy step's packing of these heads, per device (`PackedHeads.of`): on the
        # instance, so that torch.compile reads it without hashing the space.
        object.__setattr__(self, "_packed", {})
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        for role, name in (("op_head", self.op_head), ("pointer_head", self.pointer_head)):
            if name is not None and name not in names:
                raise ValueError(f"{role}={name!r} is not one of the heads {names}")
        op = self.heads[names.index(self.op_head)]
        if op.relevant_ops is not None:
            raise ValueError(f"the op head {self.op_head!r} must be relevant for every op")
        for head in self.heads:
            if head.relevant_ops is not None:
                bad = sorted(o for o in head.relevant_ops if not 0 <= o < op.size)
                if bad:
                    raise ValueError(
                        f"head {head.name!r}: relevant_ops {bad} are outside the op head's "
                        f"range [0, {op.size})"
                    )

    # Pickled (copied, sent to a worker) as its three fields; the rest is derived again.
    def __getstate__(self) -> dict[str, Any]:
        return {"heads": self.heads, "op_head": self.op_head, "pointer_head": self.pointer_head}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    @classmethod
    def default(cls, num_slots: int = 3) -> ActionSpace:
        """The compatibility contract's eight heads (DESIGN.md), with a slot pointer of size N:
        `slotformer.presets.seed_lifecycle.seed_lifecycle_action_space`."""
        from slotformer.presets.seed_lifecycle import seed_lifecycle_action_space

        return seed_lifecycle_action_space(num_slots)

    def to_dict(self) -> dict[str, Any]:
        """This space as plain data (dicts, lists, str, int, None), e.g. for a checkpoint
        loaded with ``weights_only`` or a JSON/YAML config; `from_dict` reads it back.

        ``relevant_ops`` is a sorted list of op indices (None = every op) and
        ``canonical_action`` an int (None = the first valid index of the head's mask).

        Example:
            >>> space = ActionSpace(
            ...     heads=(HeadSpec("op", 3), HeadSpec("target", 4, {1, 2}),
            ...            HeadSpec("tool", 4, {1}, canonical_action=0)),
            ...     op_head="op", pointer_head="target")
            >>> data = space.to_dict()
            >>> data["heads"][2]
            {'name': 'tool', 'size': 4, 'relevant_ops': [1], 'canonical_action': 0}
            >>> ActionSpace.from_dict(data) == space
            True
        """
        heads = [
            {"name": head.name, "size": int(head.size),
             "relevant_ops": None if head.relevant_ops is None else sorted(head.relevant_ops),
             "canonical_action": head.canonical_action}
            for head in self.heads
        ]
        return {"heads": heads, "op_head": self.op_head, "pointer_head": self.pointer_head}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionSpace:
        """The space `to_dict` wrote (checked: the same rules as the constructor's).

        Raises:
            ValueError: ``data`` is not such a dict (an unknown or missing key, a value of
                the wrong type, or a space the constructor refuses); the message names it.

        Example:
            >>> ActionSpace.from_dict(ActionSpace.default(5).to_dict()) == ActionSpace.default(5)
            True
        """
        where = "ActionSpace.from_dict"
        _check_keys(where, data, required={"heads", "op_head"}, optional={"pointer_head"})
        heads = data["heads"]
        _check_field(where, "heads", heads, isinstance(heads, list | tuple) and bool(heads),
                     "a non-empty list")
        specs = []
        for index, head in enumerate(heads):
            at = f"{where}: heads[{index}]"
            _check_keys(
                at, head, required={"name", "size"}, optional={"relevant_ops", "canonical_action"}
            )
            name, size = head["name"], head["size"]
            relevant, canonical = head.get("relevant_ops"), head.get("canonical_action")
            _check_field(at, "name", name, isinstance(name, str), "a str")
            at = f"{at} ({name!r})"
            _check_field(at, "size", size, _is_int(size), "an int")
            _check_field(at, "relevant_ops", relevant, relevant is None or (
                isinstance(relevant, list | tuple) and all(_is_int(o) for o in relevant)
            ), "a list of ints or None")
            _check_field(at, "canonical_action", canonical,
                         canonical is None or _is_int(canonical), "an int or None")
            specs.append(
                HeadSpec(name, size, None if relevant is None else frozenset(relevant), canonical)
            )
        op_head, pointer_head = data["op_head"], data.get("pointer_head")
        _check_field(where, "op_head", op_head, isinstance(op_head, str), "a str")
        _check_field(where, "pointer_head", pointer_head,
                     pointer_head is None or isinstance(pointer_head, str), "a str or None")
        return cls(heads=tuple(specs), op_head=op_head, pointer_head=pointer_head)

    # Derived once, in __post_init__ (plain attributes: no call on the hot path, and
    # torch.compile(fullgraph=True) reads them without tracing a property).
    head_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    sizes: Mapping[str, int] = field(init=False, repr=False, compare=False)
    """Number of choices per head name (read-only)."""
    num_ops: int = field(init=False, repr=False, compare=False)
    num_slots: int | None = field(init=False, repr=False, compare=False)
    """The pointer head's size (N), or None without a pointer head."""

    def head(self, name: str) -> HeadSpec:
        """The spec of head ``name``."""
        for head in self.heads:
            if head.name == name:
                return head
        raise KeyError(f"unknown head {name!r}; heads are {list(self.head_names)}")

    def check_head_names(self, argument: str, names: Iterable[str], hint: str = "") -> None:
        """Raise ``ValueError`` naming ``argument`` if ``names`` (its keys) hold a head this
        space lacks."""
        unknown = sorted(set(names) - set(self.head_names))
        if unknown:
            raise ValueError(f"{argument} names unknown heads {unknown}; heads are "
                             f"{list(self.head_names)}{hint}")

    def with_num_slots(self, num_slots: int) -> ActionSpace:
        """The same space with the pointer head resized to ``num_slots`` (another grid)."""
        if self.pointer_head is None:
            raise ValueError("this action space has no pointer head to resize")
        if num_slots == self.num_slots:
            return self
        heads = tuple(
            replace(h, size=num_slots) if h.name == self.pointer_head else h for h in self.heads
        )
        return replace(self, heads=heads)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(where: str, key: str, value: object, ok: bool, expected: str) -> None:
    """Unless ``ok``, a ``ValueError`` naming ``where``'s ``key``, its value and what it must be."""
    if not ok:
        raise ValueError(f"{where}: {key!r} must be {expected}, got {value!r}")


def _check_keys(where: str, data: object, required: set[str], optional: set[str]) -> None:
    """``data`` is a mapping with every ``required`` key and no key outside both sets."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a dict, got {type(data).__name__}")
    missing = sorted(required - set(data))
    unknown = sorted(set(data) - required - optional)
    if missing or unknown:
        raise ValueError(
            f"{where} has keys {sorted(data)}: missing {missing}, unknown {unknown}; "
            f"expected {sorted(required)} and optionally {sorted(optional)}"
        )


def canonicalize_masks(
    action_space: ActionSpace,
    masks: Mapping[str, Tensor],
    ops: Tensor,
    slot_by_op: Tensor | None = None,
) -> dict[str, Tensor]:
    """Masks conditioned on the chosen ops: irrelevant heads become one-hot canonical.

    The policy step's own canonicalisation (`slotformer.policy_step`), per head.

    Args:
        action_space: the heads and their relevance table.
        masks: a bool mask ``[..., n]`` (True = valid) for every head, all with the same
            leading shape as ``ops``. ``[B, n]`` and ``[B, T, n]`` both work.
        ops: the chosen op per row, int64 ``[...]``.
        slot_by_op: optional bool ``[..., num_ops, N]``; when given, the pointer head's mask
            for a relevant op is ``slot_by_op[..., op, :]`` (it replaces the slot mask).

    Returns:
        A new dict with the same keys; the op head's mask is passed through unchanged.
        For an irrelevant head the row is one-hot on its canonical action; for the pointer
        head (canonical ``None``) on the first valid index of its own (base) mask.

    Example:
        >>> space = ActionSpace.default(num_slots=3)
        >>> masks = {h.name: torch.ones(2, h.size, dtype=torch.bool) for h in space.heads}
        >>> from slotformer.presets.seed_lifecycle import Op
        >>> out = canonicalize_masks(space, masks, torch.tensor([Op.WAIT, Op.GERMINATE]))
        >>> out["blueprint"][0].nonzero().flatten().tolist(), int(out["blueprint"][1].sum())
        ([0], 13)
    """
    from slotformer.policy_step import PackedHeads

    missing = [n for n in action_space.head_names if n not in masks]
    if missing:
        raise KeyError(f"masks is missing heads {missing}; expected {list(action_space.head_names)}")
    expect("ops", ops, dtype=torch.long)
    if slot_by_op is not None:
        # Without this check a transposed [..., N, num_ops] tensor gathers silently wrong rows.
        if action_space.num_slots is None:
            raise ValueError("slot_by_op was given but the action space has no pointer head")
        expect("slot_by_op", slot_by_op, dtype=torch.bool,
               shape=(*ops.shape, action_space.num_ops, action_space.num_slots),
               hint=" (ops shape + (num_ops, N))")
    for head in action_space.heads:
        expect(f"mask for head {head.name!r}", masks[head.name], dtype=torch.bool,
               shape=(*ops.shape, head.size),
               hint=" (ops shape + head size)")
    packed = PackedHeads.of(action_space, ops.device)
    canonical = packed.canonical_masks(packed.pack(masks) & packed.real, ops, slot_by_op)
    out = {name: row[..., :n] for name, n, row in zip(packed.names, packed.sizes,
                                                        canonical.unbind(-2))}
    out[action_space.op_head] = masks[action_space.op_head]
    return {name: out[name] for name in action_space.head_names}
