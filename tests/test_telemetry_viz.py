"""Attention statistics, diagnostics payload, hooks, text heatmap, badge and TensorBoard."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from slotformer.networks.transformer import TransformerConfig
from slotformer.policy import LSTMPolicyBundle
from slotformer.telemetry import (
    AttentionStats,
    TelemetryHookHandle,
    TelemetryHooks,
    capture_attention,
    compute_attention_stats,
    policy_diagnostics,
)
from slotformer.tensorboard import log_attention
from slotformer.validation import validation
from slotformer.viz import attention_heatmap_image, network_badge, render_attention_heatmap

REPO_ROOT = Path(__file__).resolve().parents[1]


def _binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# ---------------------------------------------------------------- compute_attention_stats


def _one_inactive_slot_map() -> tuple[torch.Tensor, torch.Tensor]:
    """N=2, 1 layer, 1 head, B=T=1; slot 1 is inactive (a masked key, weight 0)."""
    attn = torch.tensor(
        [
            [0.50, 0.50, 0.0],  # CLS query: uniform over CLS + slot 0
            [0.25, 0.75, 0.0],  # slot 0 query (active)
            [0.90, 0.10, 0.0],  # slot 1 query (inactive): excluded from the statistics
        ]
    ).reshape(1, 1, 1, 3, 3)
    mask = torch.tensor([[[True, False]]])
    return attn, mask


def test_entropy_stats_match_hand_computed_values() -> None:
    attn, mask = _one_inactive_slot_map()
    stats = compute_attention_stats([attn], mask, ("r0c0", "r0c1"))
    cls_entropy = 1.0  # ln 2 / ln 2
    slot0_entropy = _binary_entropy(0.25) / math.log(2)  # ≈ 0.8113
    assert stats.entropy_mean == pytest.approx((cls_entropy + slot0_entropy) / 2, abs=1e-6)
    assert stats.entropy_min == pytest.approx(slot0_entropy, abs=1e-6)
    assert stats.slot_distribution == pytest.approx([0.5, 0.0], abs=1e-7)
    # Row 0: slot 0 attends 0.75 to itself; row 1 (inactive query) is reported as zeros.
    assert torch.allclose(torch.tensor(stats.slot_slot), torch.tensor([[0.75, 0.0], [0.0, 0.0]]))
    assert stats.slot_ids == ("r0c0", "r0c1")
    assert stats.network_type == "transformer"


def test_single_valid_key_counts_zero_and_averages_over_time_heads_layers() -> None:
    # t=0: both slots active, uniform rows (normalised entropy 1); t=1: empty grid, so the CLS
    # row has a single valid key (entropy 0) and the slot rows are not counted.
    uniform = torch.full((3, 3), 1 / 3)
    cls_only = torch.tensor([[1.0, 0.0, 0.0]] * 3)
    per_time = torch.stack([uniform, cls_only])  # [T, 3, 3]
    layer = per_time[None, :, None].expand(1, 2, 2, 3, 3)  # [B=1, T=2, H=2, 3, 3]
    mask = torch.tensor([[[True, True], [False, False]]])
    stats = compute_attention_stats([layer, layer.clone()], mask, ("a", "b"))
    # Per layer and head: 3 rows with entropy 1 at t=0, 1 row with entropy 0 at t=1.
    assert stats.entropy_mean == pytest.approx(0.75, abs=1e-6)
    assert stats.entropy_min == 0.0
    assert stats.slot_distribution == pytest.approx([1 / 6, 1 / 6], abs=1e-6)
    # Slot rows average only where the query slot is active (t=0).
    assert torch.allclose(torch.tensor(stats.slot_slot), torch.full((2, 2), 1 / 3))


def test_stats_accept_half_precision_and_grad_tensors() -> None:
    attn, mask = _one_inactive_slot_map()
    stats16 = compute_attention_stats([attn.half()], mask, ("r0c0", "r0c1"))
    stats_grad = compute_attention_stats([attn.clone().requires_grad_(True)], mask, ("a", "b"))
    assert stats16.entropy_mean == pytest.approx(stats_grad.entropy_mean, abs=1e-3)
    assert isinstance(stats16.entropy_mean, float)


def _random_maps(
    seed: int, batch: int, steps: int, heads: int, num_slots: int, layers: int, active_prob: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, steps, num_slots, generator=generator) < active_prob
    key_valid = torch.cat([torch.ones(batch, steps, 1, dtype=torch.bool), mask], dim=-1)
    maps = []
    for _ in range(layers):
        scores = torch.randn(batch, steps, heads, num_slots + 1, num_slots + 1, generator=generator)
        scores = scores.masked_fill(~key_valid[:, :, None, None, :], float("-inf"))
        maps.append(scores.softmax(-1))
    return maps, mask


@settings(deadline=None, max_examples=30)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 3),
    steps=st.integers(1, 3),
    heads=st.integers(1, 3),
    num_slots=st.integers(1, 6),
    layers=st.integers(1, 3),
    active_prob=st.floats(0.0, 1.0),
)
def test_stats_invariants_on_random_maps(
    seed: int, batch: int, steps: int, heads: int, num_slots: int, layers: int, active_prob: float
) -> None:
    maps, mask = _random_maps(seed, batch, steps, heads, num_slots, layers, active_prob)
    stats = compute_attention_stats(maps, mask, [f"r0c{i}" for i in range(num_slots)])
    assert 0.0 <= stats.entropy_min <= stats.entropy_mean <= 1.0
    ever_active = mask.any(dim=(0, 1)).tolist()
    for slot, active in enumerate(ever_active):
        if not active:  # inactive slots receive no mass and have no row
            assert stats.slot_distribution[slot] == 0.0
            assert stats.slot_slot[slot] == [0.0] * num_slots
            assert all(row[slot] == 0.0 for row in stats.slot_slot)
    assert sum(stats.slot_distribution) <= 1.0 + 1e-5
    assert all(sum(row) <= 1.0 + 1e-5 for row in stats.slot_slot)
    json.dumps(stats.to_dict())


def test_inactive_slots_get_zero_mass_in_slot_distribution() -> None:
    maps, _ = _random_maps(0, batch=4, steps=3, heads=2, num_slots=4, layers=2, active_prob=1.0)
    mask = torch.zeros(4, 3, 4, dtype=torch.bool)
    mask[..., 0] = True
    mask[..., 2] = True
    maps = [
        m.masked_fill(~torch.cat([torch.ones_like(mask[..., :1]), mask], -1)[:, :, None, None], 0)
        for m in maps
    ]
    maps = [m / m.sum(-1, keepdim=True) for m in maps]
    stats = compute_attention_stats(maps, mask, ["a", "b", "c", "d"])
    assert stats.slot_distribution[1] == 0.0 and stats.slot_distribution[3] == 0.0
    assert stats.slot_distribution[0] > 0.0 and stats.slot_distribution[2] > 0.0


def test_compute_attention_stats_rejects_bad_inputs() -> None:
    attn, mask = _one_inactive_slot_map()
    with pytest.raises(ValueError, match="slot_ids"):
        compute_attention_stats([attn], mask, ("r0c0",))
    with pytest.raises(ValueError, match=r"torch\.bool"):
        compute_attention_stats([attn], mask.float(), ("a", "b"))
    with pytest.raises(ValueError, match=r"\[B, T, N\]"):
        compute_attention_stats([attn], mask[0], ("a", "b"))
    with pytest.raises(ValueError, match=r"attention_maps\[0\] must be"):
        compute_attention_stats([attn[..., :2]], mask, ("a", "b"))
    with pytest.raises(ValueError, match="one \\[B, T, heads"):
        compute_attention_stats(attn, mask, ("a", "b"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one layer"):
        compute_attention_stats([], mask, ("a", "b"))
    with pytest.raises(ValueError, match="floating dtype"):
        compute_attention_stats([attn.long()], mask, ("a", "b"))
    with pytest.raises(ValueError, match="same shape"):
        compute_attention_stats([attn, attn.expand(1, 1, 2, 3, 3)], mask, ("a", "b"))


def test_value_checks_follow_the_validation_switch() -> None:
    attn, mask = _one_inactive_slot_map()
    leaky = attn.clone()
    leaky[..., 0, :] = torch.tensor([0.4, 0.4, 0.2])  # CLS gives weight to the inactive slot
    with pytest.raises(ValueError, match="inactive slot"):
        compute_attention_stats([leaky], mask, ("a", "b"))
    nan_map = attn.clone()
    nan_map[..., 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_attention_stats([nan_map], mask, ("a", "b"))
    with validation(False):  # no value checks (and no sync for them) when switched off
        stats = compute_attention_stats([leaky], mask, ("a", "b"))
    assert stats.slot_distribution[1] == 0.0  # inactive keys are still zeroed


# ---------------------------------------------------------------- policy_diagnostics


def _stats() -> AttentionStats:
    attn, mask = _one_inactive_slot_map()
    return compute_attention_stats([attn], mask, ("r0c0", "r0c1"))


def test_policy_diagnostics_lstm_has_no_attention_keys() -> None:
    lstm = SimpleNamespace(network_type="lstm")
    result = policy_diagnostics(lstm)
    assert result == {
        "network_type": "lstm",
        "attention_entropy_mean": None,
        "attention_entropy_min": None,
        "slot_attention_distribution": None,
    }
    assert json.loads(json.dumps(result)) == result


def test_policy_diagnostics_transformer_bundle_with_stats() -> None:
    stats = _stats()
    network = SimpleNamespace(network_type="transformer", get_attention_stats=lambda: stats)
    bundle = SimpleNamespace(network=network)
    result = policy_diagnostics(bundle)
    assert result["network_type"] == "transformer"
    assert result["attention_entropy_mean"] == stats.entropy_mean
    assert result["attention_entropy_min"] == stats.entropy_min
    assert result["slot_attention_distribution"] == stats.slot_distribution
    assert json.loads(json.dumps(result)) == result


def test_policy_diagnostics_transformer_without_capture_and_bad_objects() -> None:
    nothing_captured = SimpleNamespace(network_type="transformer", get_attention_stats=lambda: None)
    assert policy_diagnostics(nothing_captured)["attention_entropy_mean"] is None
    with pytest.raises(ValueError, match="network_type"):
        policy_diagnostics(SimpleNamespace(network_type="gru"))
    with pytest.raises(ValueError, match="network_type"):
        policy_diagnostics(object())
    wrong = SimpleNamespace(network_type="transformer", get_attention_stats=lambda: {"a": 1})
    with pytest.raises(TypeError, match="AttentionStats"):
        policy_diagnostics(wrong)


def test_attention_stats_to_dict_is_json_round_trippable() -> None:
    payload = _stats().to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["slot_ids"] == ["r0c0", "r0c1"]
    assert set(payload) == {
        "network_type",
        "entropy_mean",
        "entropy_min",
        "slot_distribution",
        "slot_slot",
        "slot_ids",
    }


# ---------------------------------------------------------------- hooks and capture


def test_hooks_are_called_in_registration_order_and_removable() -> None:
    hooks = TelemetryHooks()
    assert not hooks.has_hooks
    calls: list[tuple[str, object, object]] = []
    first = hooks.register(lambda network, stats: calls.append(("first", network, stats)))
    hooks.register(lambda network, stats: calls.append(("second", network, stats)))
    assert hooks.has_hooks and len(hooks) == 2
    stats = _stats()
    hooks.call("net", stats)
    assert calls == [("first", "net", stats), ("second", "net", stats)]
    first.remove()
    first.remove()  # idempotent
    calls.clear()
    hooks.call("net", stats)
    assert [name for name, _, _ in calls] == ["second"]


def test_hook_handle_context_manager_and_self_removal() -> None:
    hooks = TelemetryHooks()
    seen: list[str] = []
    with hooks.register(lambda network, stats: seen.append("scoped")):
        hooks.call(None, _stats())
    assert not hooks.has_hooks
    handles: list[TelemetryHookHandle] = []

    def run_once(network: object, stats: object) -> None:
        seen.append("once")
        handles[0].remove()

    handles.append(hooks.register(run_once))
    hooks.call(None, _stats())
    hooks.call(None, _stats())
    assert seen == ["scoped", "once"]


def test_hook_exceptions_propagate_and_stop_later_hooks() -> None:
    hooks = TelemetryHooks()
    later: list[int] = []

    def failing(network: object, stats: object) -> None:
        raise RuntimeError("hook failed")

    hooks.register(failing)
    hooks.register(lambda network, stats: later.append(1))
    with pytest.raises(RuntimeError, match="hook failed"):
        hooks.call(None, _stats())
    assert later == []
    with pytest.raises(TypeError, match="callable"):
        hooks.register("not a function")  # type: ignore[arg-type]


def test_capture_attention_sets_and_restores() -> None:
    network = SimpleNamespace(capture_attention=False, network_type="transformer")
    bundle = SimpleNamespace(network=network)
    with capture_attention(bundle) as captured:
        assert captured is bundle
        assert network.capture_attention is True
    assert network.capture_attention is False
    with pytest.raises(RuntimeError), capture_attention(network):
        assert network.capture_attention is True
        raise RuntimeError("boom")
    assert network.capture_attention is False
    lstm = SimpleNamespace(network_type="lstm")  # no attribute: added for the block only
    with capture_attention(lstm):
        assert lstm.capture_attention is True
    assert not hasattr(lstm, "capture_attention")


# ---------------------------------------------------------------- text heatmap and badge

LEGEND_WIDE = "██ >= 0.5  ▓▓ >= 0.25  ░░ >= 0.1  ·· < 0.1  (raw attention weights)"
LEGEND_COMPACT = "█ >= 0.5  ▓ >= 0.25  ░ >= 0.1  · < 0.1  (raw attention weights)"


def test_heatmap_three_slots_golden() -> None:
    matrix = [[0.6, 0.3, 0.1], [0.25, 0.5, 0.099], [0.05, 0.3, 0.65]]
    expected = (
        "slot attention\n"
        "     r0c0 r0c1 r1c0\n"
        "r0c0  ██   ▓▓   ░░\n"
        "r0c1  ▓▓   ██   ··\n"
        "r1c0  ··   ▓▓   ██\n"
        "██ >= 0.5  ▓▓ >= 0.25  ░░ >= 0.1  ·· < 0.1  (raw attention weights)"
    )
    labels = ["r0c0", "r0c1", "r1c0"]
    assert render_attention_heatmap(matrix, labels, title="slot attention") == expected
    # A tensor renders the same as the nested list.
    as_tensor = render_attention_heatmap(torch.tensor(matrix), labels, title="slot attention")
    assert as_tensor == expected
    assert "\x1b" not in expected


def test_heatmap_vector_golden() -> None:
    expected = " a  b  c\n ██ ░░ ··\n" + LEGEND_WIDE
    assert render_attention_heatmap([0.7, 0.2, 0.05], ["a", "b", "c"]) == expected
    assert render_attention_heatmap(torch.tensor([0.7, 0.2, 0.05]), ["a", "b", "c"]) == expected


def test_heatmap_compact_golden_and_custom_thresholds() -> None:
    expected = (
        "     012\n"
        "r0c0 █▓·\n"
        "r0c1 ░█·\n"
        "r0c2 ···\n"
        "█ >= 0.5  ▓ >= 0.25  ░ >= 0.1  · < 0.1  (raw attention weights)\n"
        "key: 0=r0c0 1=r0c1 2=r0c2"
    )
    matrix = [[0.9, 0.3, 0.0], [0.1, 0.5, 0.0], [0.0, 0.0, 0.0]]
    assert render_attention_heatmap(matrix, ["r0c0", "r0c1", "r0c2"], compact=True) == expected
    custom = render_attention_heatmap([0.8, 0.6], ["a", "b"], thresholds=(0.9, 0.7, 0.5))
    assert custom.splitlines()[1] == " ▓▓ ░░"
    assert "██ >= 0.9  ▓▓ >= 0.7  ░░ >= 0.5  ·· < 0.5" in custom


def test_heatmap_wide_grid_is_compact() -> None:
    num_slots = 24
    labels = [f"r{i // 8}c{i % 8}" for i in range(num_slots)]
    matrix = torch.eye(num_slots) * 0.6 + 0.01
    lines = render_attention_heatmap(matrix, labels).splitlines()
    ruler_tens, ruler_units = lines[0], lines[1]
    assert ruler_units.strip() == "".join(str(i % 10) for i in range(num_slots))
    assert ruler_tens.strip() == "1" * 10 + "2" * 4
    rows = lines[2 : 2 + num_slots]
    for index, (label, row) in enumerate(zip(labels, rows)):
        prefix, cells = row.split(" ")
        assert prefix == label
        assert len(cells) == num_slots
        assert cells == "·" * index + "█" + "·" * (num_slots - index - 1)
    assert lines[2 + num_slots] == LEGEND_COMPACT
    key = " ".join(lines[3 + num_slots :])
    assert key.startswith("key: 0=r0c0 1=r0c1")
    assert "23=r2c7" in key
    assert all(len(line) <= 80 for line in lines)
    # compact=False forces two-character cells even for a wide grid.
    wide = render_attention_heatmap(matrix, labels, compact=False).splitlines()
    assert wide[1].startswith("r0c0  ██   ··")


def test_heatmap_sixty_four_slots_fit_80_columns() -> None:
    labels = [f"r{i // 8}c{i % 8}" for i in range(64)]
    lines = render_attention_heatmap(torch.full((64, 64), 1 / 64), labels).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len([line for line in lines if line.startswith("r")]) == 64


def test_heatmap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels must have one entry per slot"):
        render_attention_heatmap([[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"])
    with pytest.raises(ValueError, match="square"):
        render_attention_heatmap([[0.5, 0.5], [0.5]], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[N, N\] or \[N\]"):
        render_attention_heatmap(torch.zeros(2, 2, 2), ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        render_attention_heatmap([float("nan"), 0.1], ["a", "b"])
    with pytest.raises(ValueError, match="non-increasing"):
        render_attention_heatmap([0.1], ["a"], thresholds=(0.1, 0.5, 0.2))


def test_network_badge() -> None:
    assert network_badge("lstm") == "🔄 LSTM"
    assert network_badge("transformer") == "⚡ XFMR"
    with pytest.raises(ValueError, match=r"\('lstm', 'transformer'\).*'gru'"):
        network_badge("gru")


# ---------------------------------------------------------------- TensorBoard


def test_heatmap_image_is_nearest_neighbour_upscaled() -> None:
    image = attention_heatmap_image([[1.0, 0.0], [0.5, 0.2]], cell_px=8)
    assert image.shape == (3, 16, 16)
    assert image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert torch.equal(image[:, :8, :8], torch.ones(3, 8, 8))  # 1.0 → white
    assert torch.equal(image[:, :8, 8:], torch.zeros(3, 8, 8))  # 0.0 → black
    cell = image[:, 8:, :8]
    assert torch.equal(cell, cell[:, :1, :1].expand(3, 8, 8))  # one colour per cell


def test_log_attention_writes_scalars_and_image(tmp_path: Path) -> None:
    stats = _stats()
    writer = SummaryWriter(log_dir=str(tmp_path))
    log_attention(writer, stats, step=7)
    writer.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    tags = accumulator.Tags()
    expected_scalars = {
        "attention/entropy_mean",
        "attention/entropy_min",
        "attention/slot_mass/r0c0",
        "attention/slot_mass/r0c1",
    }
    assert expected_scalars <= set(tags["scalars"])
    assert "attention/slot_slot" in tags["images"]
    (event,) = accumulator.Scalars("attention/entropy_mean")
    assert event.step == 7
    assert event.value == pytest.approx(stats.entropy_mean, abs=1e-6)
    (mass,) = accumulator.Scalars("attention/slot_mass/r0c0")
    assert mass.value == pytest.approx(0.5, abs=1e-6)
    (image,) = accumulator.Images("attention/slot_slot")
    assert (image.width, image.height) == (16, 16)  # 2 slots x 8 px


def test_tensorboard_is_not_imported_by_slotformer() -> None:
    code = (
        "import slotformer, slotformer.telemetry, slotformer.viz, slotformer.tensorboard, sys; "
        "assert 'tensorboard' not in sys.modules, 'tensorboard was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_forward_returns_attention_as_data_without_the_switch() -> None:
    from slotformer import FactoredRecurrentActorCritic, SlotTransformerActorCritic
    from slotformer.networks import TrunkIntermediates

    net = SlotTransformerActorCritic(lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, head_hidden=16))
    state, bp = torch.randn(2, 3, 116), torch.tensor([0, -1, 2]).expand(2, 3, 3)
    out = net(state, bp, return_intermediates=True)
    seen = out["intermediates"]
    assert isinstance(seen, TrunkIntermediates) and len(seen.attention) == 2
    assert seen.attention[0].shape == (2, 3, 4, 4, 4)
    # rows sum to 1 and the empty slot (key index 2: CLS first) is never attended
    assert torch.allclose(seen.attention[0].sum(-1), torch.ones(2, 3, 4, 4))
    assert (seen.attention[1][..., 2] == 0).all()
    assert torch.equal(seen.active, bp >= 0) and seen.slot_ids == ("r0c0", "r0c1", "r0c2")
    # asking changes nothing else (the maps are materialised instead of fused SDPA: the same
    # maths up to fp32 rounding) and stores nothing on the network
    plain = net(state, bp)
    assert "intermediates" not in plain
    torch.testing.assert_close(plain["op_logits"], out["op_logits"], rtol=0, atol=1e-6)
    assert net.get_attention_stats() is None
    stats = compute_attention_stats(seen.attention, seen.active, seen.slot_ids)
    assert stats.slot_ids == seen.slot_ids
    flat = FactoredRecurrentActorCritic(116, 16, 16)
    assert flat(state, bp, return_intermediates=True)["intermediates"].attention == ()


def test_diagnostics_accept_a_policy_type_registered_by_a_user() -> None:
    from slotformer.policy import registry

    @registry.register_policy("my-gru")
    class MyPolicy(LSTMPolicyBundle):
        pass

    try:
        payload = policy_diagnostics(SimpleNamespace(network_type="my-gru"))
        assert payload["network_type"] == "my-gru" and payload["attention_entropy_mean"] is None
    finally:
        registry._REGISTRY.pop("my-gru", None)
    with pytest.raises(ValueError, match="registered network_type"):
        policy_diagnostics(SimpleNamespace(network_type="my-gru"))


def test_log_attention_adds_a_labelled_figure_when_matplotlib_is_there(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    writer = SummaryWriter(log_dir=str(tmp_path))
    log_attention(writer, _stats(), step=3)
    writer.close()
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    (image,) = accumulator.Images("attention/slot_slot_labelled")
    assert image.step == 3 and image.width > 100  # a rendered figure, not 16 px of cells


def test_log_attention_figure_switch() -> None:
    class ScalarsAndImagesOnly:
        def __init__(self) -> None:
            self.images: list[str] = []

        def add_scalar(self, tag: str, value: object, step: object = None) -> None:
            pass

        def add_image(self, tag: str, image: object, step: object = None, walltime: object = None,
                      dataformats: str = "CHW") -> None:
            self.images.append(tag)

    writer = ScalarsAndImagesOnly()
    log_attention(writer, _stats(), step=1)  # figure=None: the writer has no add_figure
    assert writer.images == ["attention/slot_slot"]
    with pytest.raises(ValueError, match="figure=True needs a writer with add_figure"):
        log_attention(writer, _stats(), step=1, figure=True)


def test_attention_figure_labels_both_axes_and_has_a_colour_scale() -> None:
    pytest.importorskip("matplotlib")
    from slotformer.viz import attention_figure

    labels = ["r0c0", "r0c1", "r1c0"]
    figure = attention_figure(torch.eye(3) * 0.8, labels, title="demo")
    heatmap, colourbar = figure.axes
    assert [t.get_text() for t in heatmap.get_xticklabels()] == labels
    assert [t.get_text() for t in heatmap.get_yticklabels()] == labels
    assert heatmap.get_xlabel().startswith("key slot") and heatmap.get_ylabel() == "query slot"
    assert "attention weight" in colourbar.get_ylabel()
    assert heatmap.images[0].get_clim() == (0.0, 1.0)  # raw weights, a fixed scale
    assert len(heatmap.texts) == 9  # annotated: N <= 12
    with pytest.raises(ValueError, match=r"must name its N slots; got \[3, 3\] and 2 labels"):
        attention_figure(torch.eye(3), labels[:2])
    with pytest.raises(ValueError, match=r"must be \[N, N\].*got a vector of 3"):
        attention_figure([0.1, 0.2, 0.3], labels)


def test_matplotlib_is_not_imported_by_slotformer() -> None:
    code = ("import slotformer, slotformer.viz, slotformer.tensorboard, sys; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_plot_training_draws_curves_and_reference_lines(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.plot_training import learning_curves, main

    def run(network: str, grid: str, seed: int) -> dict[str, object]:
        curve = [[100, None], [200, -0.2 + seed], [300, 0.5 + seed]]
        return {"network": network, "grid": grid, "seed": seed, "learned": 1.0,
                "random": -0.4, "heuristic": 2.0, "curve": curve}

    results = {"runs": [run(n, g, s) for g in ("1x3", "2x5") for n in ("lstm", "transformer")
                        for s in (0, 1)]}
    figure = learning_curves(results)
    assert len(figure.axes) == 2
    left = figure.axes[0]
    assert left.get_title() == "Slot Garden 1x3"
    labels = [line.get_label() for line in left.get_lines()]
    assert labels == ["lstm (mean of 2 seeds, band: min-max)",
                      "transformer (mean of 2 seeds, band: min-max)",
                      "heuristic (2.00)", "random (-0.40)"]
    mean = left.get_lines()[0]
    assert list(mean.get_xdata()) == [200, 300]  # the point before any episode ended is left out
    assert list(mean.get_ydata()) == pytest.approx([0.3, 1.0])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    main(["--results", str(path), "--curves-out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no run has a learning curve"):
        learning_curves({"runs": [{"network": "lstm", "grid": "1x3"}]})
