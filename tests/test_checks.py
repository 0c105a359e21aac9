"""Error messages of checks restated in #13 (item 1): each names the argument, what it got
and what was expected, and no check was loosened."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from slotformer import (
    CheckpointError,
    ObservationLayout,
    ResidualLSTM,
    compute_attention_stats,
    create_policy,
    load_checkpoint,
    mask_logits,
    masked_log_probs,
    normalised_entropy,
    save_checkpoint,
)
from slotformer.viz import attention_heatmap_image, render_attention_heatmap


def _message(exc: type[BaseException], fn: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- telemetry
def _uniform_maps(heads: int = 1) -> list[torch.Tensor]:
    return [torch.full((1, 1, heads, 3, 3), 1 / 3)]


def test_attention_inputs_name_what_they_got_and_expected() -> None:
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    assert "slot_active_mask must be [B, T, N] with at least one (batch, time) position; got " \
        "shape (1, 0, 2)" in _message(
            ValueError, compute_attention_stats, _uniform_maps(), mask[:, :0], ("a", "b"))
    assert "slot_active_mask must be a torch.Tensor, got list" in _message(
        ValueError, compute_attention_stats, _uniform_maps(), [[[True, True]]], ("a", "b"))
    message = _message(ValueError, compute_attention_stats, _uniform_maps(), mask, ("a", 1))
    assert "slot_ids must be a sequence of N = 2 str" in message and "('a', 1)" in message
    assert "slot_ids" in _message(ValueError, compute_attention_stats, _uniform_maps(), mask, "ab")
    assert "attention_maps[0] is on device meta, expected cpu" in _message(
        ValueError, compute_attention_stats, [torch.ones(1, 1, 1, 3, 3, device="meta")], mask,
        ("a", "b"))
    assert "attention_maps[1] must be a torch.Tensor, got list" in _message(
        ValueError, compute_attention_stats, [*_uniform_maps(), [0.5]], mask, ("a", "b"))
    message = _message(
        ValueError, compute_attention_stats, _uniform_maps() + _uniform_maps(heads=2), mask,
        ("a", "b"))
    assert "attention_maps[1] has shape (1, 1, 2, 3, 3), expected (1, 1, 1, 3, 3)" in message
    assert "same shape" in message
    assert "got (1, 1, 0, 3, 3)" in _message(
        ValueError, compute_attention_stats, [torch.ones(1, 1, 0, 3, 3)], mask, ("a", "b"))


# ---------------------------------------------------------------- viz
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", True])
def test_heatmap_and_image_reject_non_finite_or_non_numbers(bad: object) -> None:
    for draw in (lambda m: render_attention_heatmap(m, ["a", "b"]), attention_heatmap_image):
        message = _message(ValueError, draw, [[0.5, bad], [0.5, 0.5]])
        assert message == f"matrix entries must be finite numbers; got {bad!r}"
    if isinstance(bad, float):  # a flat list of floats passes the structure check first
        assert "finite numbers" in _message(ValueError, attention_heatmap_image, [0.5, bad])
    assert "finite" in _message(ValueError, attention_heatmap_image, torch.tensor([0.5, math.inf]))


def test_heatmap_and_image_reject_empty_matrices_and_bad_arguments() -> None:
    empties: tuple[list[float], torch.Tensor] = ([], torch.zeros(0))
    expected = "N >= 1; got 1 row(s) of lengths [0]"
    for empty in empties:
        assert expected in _message(ValueError, attention_heatmap_image, empty)
        assert expected in _message(ValueError, render_attention_heatmap, empty, [])
    for cell_px in (0, -1, 1.5, True):
        assert "cell_px must be a positive int" in _message(
            ValueError, attention_heatmap_image, [0.5], cell_px=cell_px)
    assert "labels must have one entry per slot (a sequence of N = 2 str); got 'ab'" in _message(
        ValueError, render_attention_heatmap, [0.5, 0.5], "ab")
    for thresholds in ((0.5, 0.2), (0.5, math.nan, 0.1), (0.1, 0.2, 0.3)):
        message = _message(
            ValueError, render_attention_heatmap, [0.5], ["a"], thresholds=thresholds)
        assert "thresholds must be three finite, non-increasing numbers" in message
        assert repr(thresholds) in message


# ---------------------------------------------------------------- layers
def test_residual_lstm_x_device_and_sizes() -> None:
    lstm = ResidualLSTM(8, 8)
    assert "x is on device meta, expected cpu" in _message(
        ValueError, lstm, torch.zeros(2, 3, 8, device="meta"))
    assert "x has dtype torch.int64, expected a floating dtype" in _message(
        ValueError, lstm, torch.zeros(2, 3, 8, dtype=torch.long))
    assert "got (2, 0, 8)" in _message(ValueError, lstm, torch.zeros(2, 0, 8))
    hidden = lstm.initial_hidden(2)
    assert "hidden c has dtype torch.int64, expected a floating dtype" in _message(
        ValueError, lstm, torch.zeros(2, 3, 8), (hidden[0], hidden[1].long()))


# ---------------------------------------------------------------- config
def test_active_mask_checks_whichever_argument_decides() -> None:
    layout = ObservationLayout(num_slots=3, slot_dim=31)
    # An explicit mask decides activity: blueprint indices of another width are not read.
    explicit = torch.ones(2, 3, dtype=torch.bool)
    assert layout.active_mask(torch.zeros(2, 5, dtype=torch.long), explicit) is explicit
    assert "active_mask has shape (2, 5), expected (2, 3) (last dimension N=3)" in _message(
        ValueError, layout.active_mask, torch.zeros(2, 3, dtype=torch.long),
        torch.ones(2, 5, dtype=torch.bool))
    assert "blueprint_indices has shape (), expected (3,) (last dimension N=3)" in _message(
        ValueError, layout.active_mask, torch.tensor(0))


# ---------------------------------------------------------------- distributions
def test_mask_message_states_every_expected_and_actual_property() -> None:
    message = _message(
        ValueError, mask_logits, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool, device="meta"))
    assert "mask for logits must be torch.bool (True = valid) with exactly the logits' shape " \
        "(2, 3) on their device cpu, got torch.bool (2, 3) on meta" in message
    assert "got dtype torch.float32 and shape ()" in _message(
        ValueError, masked_log_probs, torch.tensor(0.0), None)
    for bad in (1.0, -0.1, "0.1", True):
        assert f"min_prob must be a Python float in [0, 1) or None, got {bad!r}" in _message(
            ValueError, masked_log_probs, torch.zeros(2, 3), None, bad)
    log_probs = masked_log_probs(torch.zeros(2, 3), None)
    assert "mask has shape (2, 2), expected (2, 3)" in _message(
        ValueError, normalised_entropy, log_probs, torch.ones(2, 2, dtype=torch.bool))
    assert "mask has dtype torch.float32, expected torch.bool" in _message(
        ValueError, normalised_entropy, log_probs, torch.ones(2, 3))


# ---------------------------------------------------------------- checkpoint
def test_checkpoint_errors_start_with_the_path(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "policy.pt", create_policy("lstm", lstm_hidden_dim=16))
    payload = torch.load(path, weights_only=True)
    for key, value, fragment in (
        ("slot_ids", [1, 2], "has slot_ids=[1, 2], expected a list of str"),
        ("config", [1], "has config of type list, expected a dict of constructor arguments"),
        ("state_dict", {"w": 1}, "has a state_dict that is not a dict of tensors"),
        ("format_version", 0, "has format_version=0, expected a positive int (<= 1)"),
    ):
        broken = tmp_path / f"{key}.pt"
        torch.save({**payload, key: value}, broken)
        message = _message(CheckpointError, load_checkpoint, broken)
        assert message.startswith(f"{str(broken)!r} {fragment}"), message
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in payload.items() if k != "slot_ids"}, missing)
    assert _message(CheckpointError, load_checkpoint, missing).startswith(
        f"{str(missing)!r} lacks entries ['slot_ids']")
