"""Slots and observations: which slots exist, where they sit, and how a flat state splits.

`SlotConfig` names the slots in action order and places each on the grid; `ObservationLayout`
splits the contract's flat observation into a base block and per-slot blocks.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor

from slotformer.validation import check_positive_int, expect

DEFAULT_BASE_DIM = 23
"""Features in the base (global) block of the default observation layout."""

DEFAULT_SLOT_DIM = 31
"""Features per slot in the current default layout (an older layout used 39; both work)."""

_CANONICAL_ID = re.compile(r"^r(\d+)c(\d+)$")


def check_base_dim(base_dim: object) -> None:
    """A ``ValueError`` naming ``base_dim`` unless it is a non-negative int."""
    if not isinstance(base_dim, int) or base_dim < 0:
        raise ValueError(f"base_dim must be a non-negative int, got {base_dim!r}")


def _grid_positions(slot_ids: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """``(row, col)`` parsed from canonical ids, else ``(0, index)`` for every slot."""
    parsed = [_CANONICAL_ID.match(s) for s in slot_ids]
    if all(m is not None for m in parsed):
        pos = tuple((int(m.group(1)), int(m.group(2))) for m in parsed if m is not None)
        if len(set(pos)) == len(pos):
            return pos
    return tuple((0, i) for i in range(len(slot_ids)))


@dataclass(frozen=True)
class SlotConfig:
    """The slots of a grid, in action order.

    Args:
        slot_ids: one id per slot; the index of an id is its slot-head action index. Canonical
            ids are ``r{row}c{col}``; if any id is not canonical (or two ids share a
            position), every slot is placed on row 0 at column = its index.

    Example:
        >>> cfg = SlotConfig.for_grid(2, 2)
        >>> cfg.slot_ids, cfg.num_slots, cfg.positions[3]
        (('r0c0', 'r0c1', 'r1c0', 'r1c1'), 4, (1, 1))
    """

    slot_ids: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)
    # Set in __post_init__, not a cached_property: before Python 3.12 its __get__ takes an
    # RLock, which torch.compile(fullgraph=True) cannot trace.
    _positions: tuple[tuple[int, int], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )
    num_slots: int = field(init=False, repr=False, compare=False, hash=False)
    """N, the number of slots."""

    def __post_init__(self) -> None:
        ids = self.slot_ids
        if isinstance(ids, str) or not isinstance(ids, tuple | list) or not ids:
            raise ValueError(
                f"slot_ids must be a non-empty tuple of str, got {type(ids).__name__}: {ids!r}"
            )
        ids = tuple(ids)
        bad = [s for s in ids if not isinstance(s, str) or not s]
        if bad:
            raise ValueError(f"slot_ids must be non-empty strings, got {bad!r}")
        duplicates = sorted(s for s, count in Counter(ids).items() if count > 1)
        if duplicates:
            raise ValueError(f"slot_ids must be unique, duplicated: {duplicates}")
        object.__setattr__(self, "slot_ids", ids)
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(ids)})
        object.__setattr__(self, "_positions", _grid_positions(ids))
        object.__setattr__(self, "num_slots", len(ids))

    @classmethod
    def default(cls) -> SlotConfig:
        """Three slots in one row: ``r0c0, r0c1, r0c2`` (the first user's contract)."""
        return cls.for_grid(1, 3)

    @classmethod
    def for_grid(cls, rows: int, cols: int) -> SlotConfig:
        """A ``rows x cols`` grid with ids ``r{row}c{col}`` in row-major order."""
        if rows < 1 or cols < 1:
            raise ValueError(f"rows and cols must be >= 1, got rows={rows}, cols={cols}")
        return cls(tuple(f"r{r}c{c}" for r in range(rows) for c in range(cols)))

    def slot_id_for_index(self, index: int) -> str:
        """The id of the slot at action index ``index``."""
        if not 0 <= index < self.num_slots:
            raise ValueError(
                f"slot index {index} is out of range for {self.num_slots} slots "
                f"(expected 0..{self.num_slots - 1})"
            )
        return self.slot_ids[index]

    def index_for_slot_id(self, slot_id: str) -> int:
        """The action index of ``slot_id``."""
        try:
            return self._index[slot_id]
        except KeyError:
            known = list(self.slot_ids)
            raise ValueError(f"unknown slot id {slot_id!r}; known ids: {known}") from None

    @property
    def positions(self) -> tuple[tuple[int, int], ...]:
        """``(row, col)`` of each slot (see the class docstring)."""
        return self._positions

    @property
    def num_rows(self) -> int:
        return 1 + max(r for r, _ in self.positions)

    @property
    def num_cols(self) -> int:
        return 1 + max(c for _, c in self.positions)

    def position_ids(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Row and column ids for the positional encoding, each int64 ``[N]``."""
        rows = torch.tensor([r for r, _ in self.positions], dtype=torch.long, device=device)
        cols = torch.tensor([c for _, c in self.positions], dtype=torch.long, device=device)
        return rows, cols


@dataclass(frozen=True)
class ObservationLayout:
    """Where the base block and each slot block sit in the flat observation vector.

    The flat state is ``[base_dim + N * slot_dim]``: the base block (``base_dim`` features,
    default 23) first, then slot ``k`` (``slot_dim`` features) at ``base_dim + k * slot_dim``.

    Example:
        >>> layout = ObservationLayout.infer(state_dim=116, num_slots=3)
        >>> layout.slot_dim
        31
        >>> base, slots = layout.split(torch.zeros(2, 5, 116))
        >>> tuple(base.shape), tuple(slots.shape)
        ((2, 5, 23), (2, 5, 3, 31))
    """

    num_slots: int
    slot_dim: int
    base_dim: int = DEFAULT_BASE_DIM

    def __post_init__(self) -> None:
        for name in ("num_slots", "slot_dim"):
            check_positive_int(name, getattr(self, name))
        check_base_dim(self.base_dim)

    @classmethod
    def infer(
        cls, state_dim: int, num_slots: int, base_dim: int = DEFAULT_BASE_DIM
    ) -> ObservationLayout:
        """Infer ``slot_dim = (state_dim - base_dim) / num_slots``; it must be a positive int."""
        check_positive_int("num_slots", num_slots)
        slot_total = state_dim - base_dim
        if slot_total <= 0 or slot_total % num_slots != 0:
            raise ValueError(
                f"state_dim={state_dim} does not fit base_dim={base_dim} plus {num_slots} "
                f"equal slot blocks: (state_dim - base_dim) / num_slots = "
                f"({state_dim} - {base_dim}) / {num_slots} = {slot_total / num_slots:g}, "
                f"expected a positive integer (e.g. state_dim={base_dim + num_slots * DEFAULT_SLOT_DIM} "
                f"for {DEFAULT_SLOT_DIM} features per slot)"
            )
        return cls(num_slots=num_slots, slot_dim=slot_total // num_slots, base_dim=base_dim)

    @property
    def state_dim(self) -> int:
        """D = base_dim + N * slot_dim."""
        return self.base_dim + self.num_slots * self.slot_dim

    def split(self, state: Tensor, name: str = "state") -> tuple[Tensor, Tensor]:
        """Split ``state [..., D]`` into views ``base [..., base_dim]`` and
        ``slots [..., N, slot_dim]``."""
        expect(name, state, shape=(*state.shape[:-1], self.state_dim),
               hint=f" (last dimension state_dim={self.state_dim} = base_dim={self.base_dim} + "
               f"{self.num_slots} slots x slot_dim={self.slot_dim})")
        base = state[..., : self.base_dim]  # [..., base_dim]
        slots = state[..., self.base_dim :].unflatten(-1, (self.num_slots, self.slot_dim))
        return base, slots  # [..., N, slot_dim]

    def active_mask(
        self, blueprint_indices: Tensor | None, active_mask: Tensor | None = None
    ) -> Tensor:
        """Which slots are active, bool ``[..., N]``: an explicit ``active_mask`` as given, else
        ``blueprint_indices >= 0`` (activity never comes from thresholding a feature)."""
        if active_mask is None:
            if blueprint_indices is None:
                raise ValueError("pass blueprint_indices or an explicit active_mask")
            name, given = "blueprint_indices", blueprint_indices
        else:
            name, given = "active_mask", active_mask
        expect(name, given, dtype=None if active_mask is None else torch.bool,
               shape=(*given.shape[:-1], self.num_slots),
               hint=f" (last dimension N={self.num_slots})")
        return given if active_mask is not None else given >= 0
