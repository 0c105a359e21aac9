"""Optional TensorBoard adapter for attention statistics (extra ``slotformer[tb]``).

``tensorboard`` is imported only when :func:`create_summary_writer` is called (``import
slotformer`` stays light); :func:`log_attention` takes any :class:`ScalarImageWriter`.

Example::

    from slotformer.tensorboard import create_summary_writer, log_attention

    writer = create_summary_writer("runs/exp1")
    log_attention(writer, stats, step=update_index)
    writer.flush()
"""

from __future__ import annotations

import importlib.util
from typing import Any, Protocol

from slotformer.telemetry import AttentionStats
from slotformer.viz import attention_figure, attention_heatmap_image


class ScalarImageWriter(Protocol):
    """What :func:`log_attention` needs from a writer (``SummaryWriter`` satisfies it)."""

    def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = ...) -> Any: ...

    def add_image(
        self, tag: str, img_tensor: Any, global_step: Any = ..., walltime: Any = ..., dataformats: str = ...
    ) -> Any: ...


def create_summary_writer(log_dir: str | None = None, **kwargs: Any) -> Any:
    """``torch.utils.tensorboard.SummaryWriter(log_dir, **kwargs)``, importing TensorBoard only
    now (``ImportError`` naming the ``tb`` extra without it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError("slotformer.tensorboard needs the tensorboard package: "
                          "pip install 'slotformer[tb]'") from error
    return SummaryWriter(log_dir=log_dir, **kwargs)


def log_attention(
    writer: ScalarImageWriter, stats: AttentionStats, step: int, tag: str = "attention", *,
    cell_px: int = 8, figure: bool | None = None,
) -> None:
    """Write ``{tag}/entropy_mean``, ``{tag}/entropy_min`` and one ``{tag}/slot_mass/{slot_id}``
    per slot (CLS → slot mass, last layer) as scalars at ``step``, and the ``[N, N]`` slot-slot
    matrix as the image ``{tag}/slot_slot`` (:func:`slotformer.viz.attention_heatmap_image`,
    ``cell_px`` pixels per cell).

    ``figure`` also writes ``{tag}/slot_slot_labelled`` with the writer's ``add_figure``
    (:func:`slotformer.viz.attention_figure`); None = when matplotlib is installed and the
    writer has ``add_figure``; True requires both.

    Example::

        log_attention(writer, network.get_attention_stats(), step=42)
    """
    if not isinstance(stats, AttentionStats):
        raise TypeError(f"stats must be AttentionStats; got {type(stats).__name__}")
    if isinstance(step, bool) or not isinstance(step, int):
        raise ValueError(f"step must be an int; got {step!r}")
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag must be a non-empty str; got {tag!r}")
    writer.add_scalar(f"{tag}/entropy_mean", float(stats.entropy_mean), step)
    writer.add_scalar(f"{tag}/entropy_min", float(stats.entropy_min), step)
    for slot_id, mass in zip(stats.slot_ids, stats.slot_distribution):
        writer.add_scalar(f"{tag}/slot_mass/{slot_id}", float(mass), step)
    if stats.slot_slot:
        image = attention_heatmap_image(stats.slot_slot, cell_px=cell_px)  # [3, N*px, N*px]
        writer.add_image(f"{tag}/slot_slot", image, step, dataformats="CHW")
        if figure is None:
            figure = hasattr(writer, "add_figure") and importlib.util.find_spec(
                "matplotlib") is not None
        if figure:
            if not hasattr(writer, "add_figure"):
                raise ValueError(f"figure=True needs a writer with add_figure; "
                                 f"{type(writer).__name__} has none")
            labelled = attention_figure(stats.slot_slot, stats.slot_ids,
                                        title=f"{tag}: last layer, step {step}")
            writer.add_figure(f"{tag}/slot_slot_labelled", labelled, step)


__all__ = ["ScalarImageWriter", "create_summary_writer", "log_attention"]
