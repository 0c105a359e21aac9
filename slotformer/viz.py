"""Plain-text views of attention for status lines and TUIs, a heatmap image tensor, and a
labelled matplotlib figure (:func:`attention_figure`, with the ``plot`` extra).

Every view uses the **raw** attention weights (a max-normalised map would look equally sharp
whether the largest weight were 0.3 or 0.99), so frames stay comparable over training.

Example:
    >>> print(render_attention_heatmap([[0.6, 0.3], [0.05, 0.9]], ["r0c0", "r0c1"]))
         r0c0 r0c1
    r0c0  ██   ▓▓
    r0c1  ··   ██
    ██ >= 0.5  ▓▓ >= 0.25  ░░ >= 0.1  ·· < 0.1  (raw attention weights)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor

from slotformer.validation import check_positive_int, describe_shape

MatrixLike = Union[Tensor, Sequence[float], Sequence[Sequence[float]]]
"""An ``[N, N]`` or ``[N]`` matrix: a Tensor, a list of floats or a nested list."""

WIDE_GLYPHS: tuple[str, str, str, str] = ("██", "▓▓", "░░", "··")
"""Cell glyphs from high to minimal attention (two characters per cell)."""
COMPACT_GLYPHS: tuple[str, str, str, str] = ("█", "▓", "░", "·")
"""The same scale with one character per cell, for wide grids."""
COMPACT_ABOVE_SLOTS = 16
"""Grids with more slots than this render in compact mode unless ``compact=False``."""

_BADGES = {"lstm": "🔄 LSTM", "transformer": "⚡ XFMR"}
_KEY_LINE_WIDTH = 80


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_rows(matrix: MatrixLike) -> tuple[list[list[float]], bool]:
    """Float rows of a non-empty ``[N]`` or square ``[N, N]`` of finite numbers, and is it 1-D."""
    if isinstance(matrix, Tensor):
        if matrix.dim() not in (1, 2) or matrix.is_complex() or matrix.dtype == torch.bool:
            raise ValueError(f"matrix must be [N, N] or [N] of real numbers; got shape "
                             f"{describe_shape(matrix)} and dtype {matrix.dtype}")
        items: list[Any] = matrix.detach().to("cpu", torch.float64).tolist()
        one_dim = matrix.dim() == 1
    else:
        is_list = isinstance(matrix, Sequence) and not isinstance(matrix, str | bytes)
        items = list(matrix) if is_list else []
        nested = all(isinstance(item, Sequence) and not isinstance(item, str) for item in items)
        one_dim = not items or not nested
        if not is_list or (one_dim and not all(_is_number(item) for item in items)):
            raise ValueError(
                "matrix must be a Tensor, a list of numbers ([N]) or a list of lists of numbers "
                f"([N, N]); got {repr(matrix) if is_list else type(matrix).__name__}"
            )
    rows = [items] if one_dim else [list(row) for row in items]
    for value in (value for row in rows for value in row):
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"matrix entries must be finite numbers; got {value!r}")
    widths = sorted({len(row) for row in rows})
    # A 2-D matrix without rows fails the square check before rows[0] is read.
    if (not one_dim and widths != [len(rows)]) or not rows[0]:
        raise ValueError(f"matrix must be a square [N, N] or an [N], N >= 1; got {len(rows)} "
                         f"row(s) of lengths {widths}")
    return [[float(value) for value in row] for row in rows], one_dim


def _validate_thresholds(thresholds: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(t) for t in thresholds)
    finite = len(values) == 3 and all(math.isfinite(t) for t in values)
    if not finite or not values[0] >= values[1] >= values[2]:
        raise ValueError("thresholds must be three finite, non-increasing numbers (high >= mid "
                         f">= low); got {thresholds!r}")
    return values[0], values[1], values[2]


def _glyph_index(value: float, thresholds: tuple[float, float, float]) -> int:
    return next((index for index, cut in enumerate(thresholds) if value >= cut), 3)


def _label_key(labels: Sequence[str]) -> list[str]:
    """``key: 0=r0c0 1=r0c1 ...`` wrapped to a terminal width."""
    lines: list[str] = []
    line = "key:"
    for index, label in enumerate(labels):
        entry = f"{index}={label}"
        if len(line) + 1 + len(entry) > _KEY_LINE_WIDTH and line.strip():
            lines.append(line)
            line = "    "
        line = f"{line} {entry}"
    lines.append(line)
    return lines


def render_attention_heatmap(
    matrix: MatrixLike, labels: Sequence[str], *, title: str | None = None,
    compact: bool | None = None, thresholds: Sequence[float] = (0.5, 0.25, 0.1),
) -> str:
    """Render an attention matrix as a plain-text heatmap (no ANSI codes, no trailing spaces
    or newline).

    Each raw value maps to ``>= high`` → ``██``, ``>= mid`` → ``▓▓``, ``>= low`` → ``░░``, else
    ``··``. Rows are queries and columns keys, both labelled with slot ids; a 1-D vector (e.g.
    ``AttentionStats.slot_distribution``) is one unlabelled row. Compact mode uses one character
    per cell (``█ ▓ ░ ·``), a column ruler of indices (tens above units) and a ``key:`` line
    mapping indices to labels: 64 slots fit about 80 columns.

    Args:
        matrix: ``[N, N]`` or ``[N]`` finite values, as a Tensor, a list or a nested list.
        labels: N slot ids, for the rows and columns (or the key in compact mode).
        title: optional first line.
        compact: force compact (True) or wide (False) cells; None picks compact for N > 16.
        thresholds: ``(high, mid, low)`` non-increasing cut-offs.

    Example:
        >>> print(render_attention_heatmap([0.7, 0.2, 0.1], ["a", "b", "c"]))
         a  b  c
         ██ ░░ ░░
        ██ >= 0.5  ▓▓ >= 0.25  ░░ >= 0.1  ·· < 0.1  (raw attention weights)
    """
    rows, one_dim = _as_rows(matrix)
    num_slots = len(rows[0])
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != num_slots:
        raise ValueError(f"labels must have one entry per slot (a sequence of N = {num_slots} "
                         f"str); got {labels!r}")
    label_list = [str(label) for label in labels]
    high, mid, low = cutoffs = _validate_thresholds(thresholds)
    use_compact = num_slots > COMPACT_ABOVE_SLOTS if compact is None else bool(compact)
    row_labels = [""] if one_dim else label_list
    label_width = max(len(label) for label in row_labels)
    lines: list[str] = [] if title is None else [title]
    if use_compact:  # a column ruler (tens above units), cells of one character
        glyphs, sep, before, after = COMPACT_GLYPHS, " ", "", ""
        indent = " " * (label_width + 1)
        if num_slots > 10:
            lines.append(indent + "".join(str(i // 10) if i >= 10 else " " for i in range(num_slots)))
        lines.append(indent + "".join(str(i % 10) for i in range(num_slots)))
    else:  # labelled columns, the glyph centred in its column
        cell_width = max(2, *(len(label) for label in label_list))
        pad = cell_width - 2
        glyphs, sep, before, after = WIDE_GLYPHS, "", " " * (1 + pad // 2), " " * (pad - pad // 2)
        lines.append(" " * label_width + "".join(f" {label:^{cell_width}}" for label in label_list))
    for row_label, row in zip(row_labels, rows):
        cells = "".join(before + glyphs[_glyph_index(v, cutoffs)] + after for v in row)
        lines.append(f"{row_label:<{label_width}}{sep}{cells}")
    lines.append(f"{glyphs[0]} >= {high:g}  {glyphs[1]} >= {mid:g}  {glyphs[2]} >= {low:g}  "
                 f"{glyphs[3]} < {low:g}  (raw attention weights)")
    if use_compact:
        lines.extend(_label_key(label_list))
    return "\n".join(line.rstrip() for line in lines)


def network_badge(network_type: str) -> str:
    """Short status-line badge for a network type: ``"🔄 LSTM"`` or ``"⚡ XFMR"``.

    Example:
        >>> network_badge("transformer")
        '⚡ XFMR'
    """
    badge = _BADGES.get(network_type) if isinstance(network_type, str) else None
    if badge is None:
        raise ValueError(f"network_type must be one of {tuple(_BADGES)}; got {network_type!r}")
    return badge


def attention_heatmap_image(matrix: MatrixLike, *, cell_px: int = 8) -> Tensor:
    """An RGB image of an ``[N, N]`` or ``[N]`` matrix for TensorBoard: float32
    ``[3, rows * cell_px, N * cell_px]`` (CHW) in [0, 1], on the CPU.

    Raw values (clamped to [0, 1]) go through a black → red → yellow → white ramp (brighter =
    more attention), each cell ``cell_px`` pixels square; a 1-D vector is one row of cells.

    Example:
        >>> attention_heatmap_image([[1.0, 0.0], [0.5, 0.5]], cell_px=4).shape
        torch.Size([3, 8, 8])
    """
    check_positive_int("cell_px", cell_px)
    rows, _ = _as_rows(matrix)
    values = torch.tensor(rows, dtype=torch.float32).clamp(0.0, 1.0)  # [R, N]
    # "hot" ramp: red rises first, then green, then blue; monotone in brightness.
    rgb = torch.stack([(3 * values - channel).clamp(0, 1) for channel in range(3)])  # [3, R, N]
    return rgb.repeat_interleave(cell_px, dim=1).repeat_interleave(cell_px, dim=2)


def attention_figure(
    matrix: MatrixLike, labels: Sequence[str], *, title: str | None = None,
    annotate: bool | None = None,
) -> Any:
    """A labelled slot-slot attention heatmap as a matplotlib ``Figure``, not registered with
    pyplot (needs the ``plot`` extra, else ``ImportError``).

    Rows are query slots and columns key slots, labelled with slot ids; the colour scale is the
    raw weight on a fixed 0..1 range, with a colour bar. Pass it to
    ``SummaryWriter.add_figure`` (:func:`slotformer.tensorboard.log_attention` does) or save
    it with ``figure.savefig("attention.png")``.

    Args:
        matrix: ``[N, N]`` values (``AttentionStats.slot_slot``), Tensor or nested list.
        labels: N slot ids (``AttentionStats.slot_ids``).
        title: optional title.
        annotate: write each weight in its cell; None = only for N <= 12.

    Example:
        >>> fig = attention_figure([[0.6, 0.3], [0.05, 0.9]], ["r0c0", "r0c1"])
        >>> [label.get_text() for label in fig.axes[0].get_yticklabels()]
        ['r0c0', 'r0c1']
    """
    rows, one_dim = _as_rows(matrix)
    n = len(rows[0])
    if one_dim or len(labels) != n:
        got = f"a vector of {n}" if one_dim else f"[{n}, {n}]"
        raise ValueError(f"matrix must be [N, N] (query x key slots) and labels must name its N "
                         f"slots; got {got} and {len(labels)} labels")
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError('attention_figure needs matplotlib: pip install "slotformer[plot]"') from error
    side = min(2.0 + 0.45 * n, 12.0)
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(rows, cmap="magma", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(n), list(labels), rotation=90 if n > 6 else 0)
    axes.set_yticks(range(n), list(labels))
    axes.set(xlabel="key slot (attended to)", ylabel="query slot")
    if title:
        axes.set_title(title)
    if annotate if annotate is not None else n <= 12:
        for r, row in enumerate(rows):  # dark text on the colour map's bright end
            for c, value in enumerate(row):
                axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8,
                          color="black" if value > 0.6 else "white")
    figure.colorbar(image, ax=axes, label="attention weight (raw, 0..1)")
    return figure


__all__ = ["COMPACT_GLYPHS", "WIDE_GLYPHS", "MatrixLike", "attention_figure",
           "attention_heatmap_image", "network_badge", "render_attention_heatmap"]
