"""Tests for BlueprintEmbedding and ResidualLSTM (slotformer/layers/encoder.py, lstm.py)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slotformer.layers import lstm as lstm_module
from slotformer.layers.encoder import BlueprintEmbedding
from slotformer.layers.lstm import LSTMLayer, ResidualLSTM
from slotformer.validation import validation

# ---------------------------------------------------------------------------------------
# BlueprintEmbedding
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("leading_shape", [(), (5,), (2, 3), (2, 3, 4)])
def test_embedding_shape_and_rows_for_any_leading_shape(leading_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    emb = BlueprintEmbedding(num_blueprints=13, embed_dim=4)
    indices = torch.randint(-1, 13, leading_shape)
    out = emb(indices)
    assert out.shape == (*leading_shape, 4)
    expected_rows = torch.where(indices == -1, torch.tensor(13), indices)
    assert torch.equal(out, emb.embedding.weight[expected_rows])


def test_embedding_table_size_and_init() -> None:
    torch.manual_seed(0)
    emb = BlueprintEmbedding(num_blueprints=50, embed_dim=64)
    assert emb.embedding.weight.shape == (51, 64)
    assert emb.null_index == 50
    std = emb.embedding.weight.std().item()
    assert 0.015 < std < 0.025, std
    assert abs(emb.embedding.weight.mean().item()) < 0.005


def test_minus_one_maps_to_null_row_and_gradients_reach_used_rows() -> None:
    torch.manual_seed(0)
    emb = BlueprintEmbedding(num_blueprints=13, embed_dim=4)
    indices = torch.tensor([[0, -1, 5], [-1, -1, 12]])
    out = emb(indices)
    null_row = emb.embedding.weight[13]
    assert torch.equal(out[0, 1], null_row)
    assert torch.equal(out[1, 0], null_row)
    assert not torch.equal(out[0, 0], null_row)

    out.sum().backward()
    grad = emb.embedding.weight.grad
    assert grad is not None
    used = {0, 5, 12, 13}
    for row in range(14):
        if row in used:
            assert grad[row].abs().sum() > 0, f"row {row} got no gradient"
        else:
            assert torch.all(grad[row] == 0), f"unused row {row} got a gradient"
    assert torch.allclose(grad[13], torch.full((4,), 3.0))  # three empty slots


@settings(deadline=None, max_examples=40)
@given(
    values=st.lists(st.integers(min_value=-1, max_value=12), min_size=0, max_size=24),
)
def test_embedding_matches_table_lookup_property(values: list[int]) -> None:
    emb = BlueprintEmbedding()
    indices = torch.tensor(values, dtype=torch.int64)
    out = emb(indices)
    assert out.shape == (len(values), 4)
    for position, value in enumerate(values):
        row = 13 if value == -1 else value
        assert torch.equal(out[position], emb.embedding.weight[row])


def _network_call(blueprint_indices: torch.Tensor) -> None:
    """The network's boundary checks slot types once (the embedding trusts it)."""
    from slotformer import FactoredRecurrentActorCritic

    net = FactoredRecurrentActorCritic(116, 16, 16)
    flat = blueprint_indices.reshape(-1)
    padded = torch.cat([flat, flat.new_full((-len(flat) % 3,), -1)]).view(-1, 1, 3)
    net(torch.zeros(padded.shape[0], 1, 116), padded)


def test_out_of_range_slot_types_error_lists_sorted_unique_values_and_range() -> None:
    with pytest.raises(ValueError) as info:
        _network_call(torch.tensor([[20, 3, -5], [13, 20, -1]]))
    message = str(info.value)
    assert "blueprint_indices" in message
    assert "[-5, 13, 20]" in message
    assert "-1 (empty slot) or 0..12" in message
    assert "4 out-of-range entries" in message


def test_out_of_range_message_truncates_many_values() -> None:
    with pytest.raises(ValueError) as info:
        _network_call(torch.arange(100, 130))
    message = str(info.value)
    assert "100, 101, 102, 103, 104, 105, 106, 107, 108, 109, ..." in message
    assert "110" not in message
    assert "30 distinct values" in message


def test_range_check_is_gated_by_validation_switch() -> None:
    emb = BlueprintEmbedding(num_blueprints=13)
    with validation(False):
        # No ValueError from the boundary: the bad index reaches nn.Embedding, which raises
        # its own IndexError on CPU.
        with pytest.raises(IndexError):
            _network_call(torch.tensor([20]))
        assert emb(torch.tensor([-1, 0])).shape == (2, 4)  # valid input still fine


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_network_rejects_non_integer_slot_types(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError) as info:
        _network_call(torch.zeros(2, 3, dtype=dtype))
    message = str(info.value)
    assert "blueprint_indices" in message
    assert str(dtype) in message
    assert "torch.int64" in message


def test_embedding_to_float64_and_buffer_follows_module() -> None:
    emb = BlueprintEmbedding().to(torch.float64)
    out = emb(torch.tensor([-1, 2]))
    assert out.dtype == torch.float64
    assert emb.null_index_buffer.dtype == torch.int64  # index buffer is never cast
    assert emb.null_index_buffer in list(emb.buffers())
    assert "null_index_buffer" not in emb.state_dict()  # derived, not learned state
    assert torch.equal(out[0], emb.embedding.weight[13])
    moved = emb.to("meta")
    assert moved.null_index_buffer.device.type == "meta"
    assert moved(torch.tensor([-1, 2], device="meta")).device.type == "meta"


@pytest.mark.parametrize("kwargs", [{"num_blueprints": 0}, {"embed_dim": 0}])
def test_embedding_constructor_rejects_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be a positive int, got 0"):
        BlueprintEmbedding(**kwargs)


def test_embedding_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    emb = BlueprintEmbedding()
    compiled = torch.compile(emb, fullgraph=True, backend="eager")
    indices = torch.tensor([[[-1, 0, 12]], [[3, -1, -1]]])
    assert torch.equal(compiled(indices), emb(indices))


# ---------------------------------------------------------------------------------------
# ResidualLSTM
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "steps", "num_layers", "input_size"),
    [(1, 1, 1, 16), (3, 5, 2, 24), (4, 2, 3, 16), (2, 7, 1, 8)],
)
def test_lstm_shapes(batch_size: int, steps: int, num_layers: int, input_size: int) -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(input_size=input_size, hidden_size=16, num_layers=num_layers)
    out, (h, c) = lstm(torch.randn(batch_size, steps, input_size))
    assert out.shape == (batch_size, steps, 16)
    assert h.shape == c.shape == (num_layers, batch_size, 16)
    assert torch.isfinite(out).all()
    assert lstm.input_size == input_size
    assert lstm.hidden_size == 16
    assert lstm.num_layers == num_layers


def test_input_projection_only_when_sizes_differ() -> None:
    assert isinstance(ResidualLSTM(16, 16).input_proj, nn.Identity)
    projection = ResidualLSTM(10, 16).input_proj
    assert isinstance(projection, nn.Linear)
    assert (projection.in_features, projection.out_features) == (10, 16)


def test_dropout_only_between_multiple_layers() -> None:
    assert isinstance(ResidualLSTM(8, 8, num_layers=2, dropout=0.1).dropout, nn.Dropout)
    assert isinstance(ResidualLSTM(8, 8, num_layers=1, dropout=0.1).dropout, nn.Identity)
    assert isinstance(ResidualLSTM(8, 8, num_layers=2, dropout=0.0).dropout, nn.Identity)
    torch.manual_seed(0)
    lstm = ResidualLSTM(8, 8, num_layers=2, dropout=0.5)
    x = torch.randn(2, 3, 8)
    lstm.eval()
    assert torch.equal(lstm(x)[0], lstm(x)[0])
    lstm.train()
    assert not torch.equal(lstm(x)[0], lstm(x)[0])


def test_hidden_chaining_equals_full_sequence() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(input_size=12, hidden_size=16, num_layers=2).eval()
    x = torch.randn(3, 6, 12)
    start = (torch.randn(2, 3, 16) * 0.5, torch.randn(2, 3, 16) * 0.5)
    full_out, (full_h, full_c) = lstm(x, start)

    hidden = start
    step_outs = []
    for t in range(6):
        step_out, hidden = lstm(x[:, t : t + 1], hidden)
        step_outs.append(step_out)
    chained_out = torch.cat(step_outs, dim=1)
    # One call over T steps and T calls of one step round differently (kernels depend on the
    # shape, and on the ISA: ATEN_CPU_CAPABILITY=default gave 1.04e-6 here): fp32 rounding.
    for chained, full in ((chained_out, full_out), (hidden[0], full_h), (hidden[1], full_c)):
        torch.testing.assert_close(chained, full, atol=1e-5, rtol=1e-5)
    # The state matters: starting from zeros gives a different result.
    assert not torch.allclose(lstm(x)[0], full_out, atol=1e-3)


def test_hidden_none_equals_initial_hidden() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(8, 16, num_layers=2)
    x = torch.randn(2, 4, 8)
    out_none, (h_none, c_none) = lstm(x)
    out_zero, (h_zero, c_zero) = lstm(x, lstm.initial_hidden(2))
    assert torch.equal(out_none, out_zero)
    assert torch.equal(h_none, h_zero)
    assert torch.equal(c_none, c_zero)


def test_initial_hidden_zeros_with_defaults_and_overrides() -> None:
    lstm = ResidualLSTM(8, 16, num_layers=3)
    h, c = lstm.initial_hidden(5)
    assert h.shape == c.shape == (3, 5, 16)
    assert h.dtype == torch.float32
    assert h.device.type == "cpu"
    assert not h.any() and not c.any()
    h64, _ = lstm.initial_hidden(2, device="cpu", dtype=torch.float64)
    assert h64.dtype == torch.float64
    assert h64.shape == (3, 2, 16)


@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_forget_gate_bias_and_zero_biases(num_layers: int) -> None:
    lstm = ResidualLSTM(8, 6, num_layers=num_layers)
    expected = 1.0 + math.log(num_layers)
    assert lstm.forget_gate_bias == pytest.approx(expected)
    for block in lstm.layers:
        bias_ih = block.lstm.bias_ih_l0.detach()
        bias_hh = block.lstm.bias_hh_l0.detach()
        effective = bias_ih + bias_hh
        assert torch.allclose(effective[6:12], torch.full((6,), expected))  # forget gate
        assert torch.all(effective[:6] == 0)  # input gate
        assert torch.all(effective[12:] == 0)  # cell and output gates
        assert torch.all(bias_hh == 0)


def test_gate_weights_are_orthogonal_per_gate() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(8, 6, num_layers=2)
    identity = torch.eye(6)
    for block in lstm.layers:
        for weight in (block.lstm.weight_ih_l0, block.lstm.weight_hh_l0):
            for gate in range(4):
                chunk = weight.detach()[gate * 6 : (gate + 1) * 6]
                assert torch.allclose(chunk @ chunk.T, identity, atol=1e-5)


def test_lstm_layer_matches_nn_lstm_with_same_state_dict() -> None:
    torch.manual_seed(0)
    layer = LSTMLayer(5, 7)
    reference = nn.LSTM(5, 7, batch_first=True)
    reference.load_state_dict(layer.state_dict())  # same parameter names and shapes
    x = torch.randn(3, 4, 5)
    h, c = torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    out, h_n, c_n = layer(x, h, c)
    ref_out, (ref_h, ref_c) = reference(x, (h, c))
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert torch.allclose(h_n, ref_h, atol=1e-6)
    assert torch.allclose(c_n, ref_c, atol=1e-6)


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(10, 12, num_layers=3)
    out, (h, c) = lstm(torch.randn(2, 4, 10))
    (out.pow(2).sum() + h.sum() + c.sum()).backward()
    names = [name for name, _ in lstm.named_parameters()]
    assert "input_proj.weight" in names
    for name, param in lstm.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_hidden_gets_a_gradient() -> None:
    lstm = ResidualLSTM(8, 8, num_layers=2)
    h = torch.zeros(2, 1, 8, requires_grad=True)
    c = torch.zeros(2, 1, 8, requires_grad=True)
    out, _ = lstm(torch.randn(1, 3, 8), (h, c))
    out.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert c.grad is not None and c.grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["h", "c"])
def test_wrong_hidden_shape_message(which: str) -> None:
    lstm = ResidualLSTM(8, 16, num_layers=2)
    good = torch.zeros(2, 3, 16)
    bad = torch.zeros(1, 3, 16)
    hidden = (bad, good) if which == "h" else (good, bad)
    with pytest.raises(ValueError) as info:
        lstm(torch.randn(3, 4, 8), hidden)
    message = str(info.value)
    assert f"hidden {which}" in message
    assert "(2, 3, 16)" in message  # expected
    assert "(1, 3, 16)" in message  # actual


def test_hidden_batch_mismatch_message() -> None:
    lstm = ResidualLSTM(8, 16)
    with pytest.raises(ValueError, match=r"hidden h has shape \(1, 5, 16\), expected \(1, 3, 16\)"):
        lstm(torch.randn(3, 4, 8), lstm.initial_hidden(5))


@pytest.mark.parametrize(
    ("hidden", "fragment"),
    [
        ([torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)], "got a list"),
        ((torch.zeros(1, 2, 8),), "got a tuple of length 1"),
        ((torch.zeros(1, 2, 8),) * 3, "got a tuple of length 3"),
        (torch.zeros(1, 2, 8), "got a Tensor"),
        ((torch.zeros(1, 2, 8), None), "hidden c must be a torch.Tensor, got NoneType"),
    ],
)
def test_hidden_must_be_a_pair_of_tensors(hidden: object, fragment: str) -> None:
    lstm = ResidualLSTM(8, 8)
    with pytest.raises(ValueError) as info:
        lstm(torch.randn(2, 3, 8), hidden)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_hidden_dtype_mismatch_message() -> None:
    lstm = ResidualLSTM(8, 8)
    h, c = lstm.initial_hidden(2, dtype=torch.float64)
    with pytest.raises(ValueError) as info:
        lstm(torch.randn(2, 3, 8), (h, c))
    message = str(info.value)
    assert "hidden h has dtype torch.float64, expected torch.float32" in message
    assert "x's outside autocast" in message


def test_hidden_h_c_dtype_must_agree_message() -> None:
    lstm = ResidualLSTM(8, 8)
    h, _ = lstm.initial_hidden(2)
    c = torch.zeros(1, 2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hidden c has dtype torch\.float64"):
        lstm(torch.randn(2, 3, 8), (h, c))
    # Under autocast the state may differ from x, but h and c must still agree.
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError) as info:
        lstm(torch.randn(2, 3, 8), (h, c.bfloat16()))
    assert "hidden c has dtype torch.bfloat16, expected torch.float32" in str(info.value)
    assert "h and c share a floating dtype" in str(info.value)


def test_hidden_device_mismatch_message() -> None:
    lstm = ResidualLSTM(8, 8)
    h = torch.zeros(1, 2, 8, device="meta")
    c = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="hidden h is on device meta, expected cpu"):
        lstm(torch.randn(2, 3, 8), (h, c))


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (torch.randn(3, 8), "got (3, 8)"),
        (torch.randn(2, 3, 4, 8), "got (2, 3, 4, 8)"),
        (torch.randn(2, 3, 9), "got (2, 3, 9)"),
        (torch.randn(2, 0, 8), "at least one time step"),
        (torch.ones(2, 3, 8, dtype=torch.int64), "floating-point"),
        (torch.randn(2, 3, 8, dtype=torch.float64), "x has dtype torch.float64"),
    ],
)
def test_bad_x_messages(x: torch.Tensor, fragment: str) -> None:
    lstm = ResidualLSTM(8, 16)
    with pytest.raises(ValueError) as info:
        lstm(x)
    message = str(info.value)
    assert fragment in message
    if "got (" in fragment:
        assert "[B, T, input_size=8]" in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"input_size": 8, "hidden_size": 0}, "hidden_size must be a positive int, got 0"),
        ({"input_size": 0, "hidden_size": 8}, "input_size must be a positive int, got 0"),
        ({"input_size": 8, "hidden_size": 8, "num_layers": 0}, "num_layers must be a positive int, got 0"),
        ({"input_size": 8, "hidden_size": 8, "dropout": 1.0}, "dropout must lie in [0, 1)"),
        ({"input_size": 8, "hidden_size": 8, "dropout": -0.1}, "dropout must lie in [0, 1)"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        ResidualLSTM(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_initial_hidden_rejects_negative_batch() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 0, got -1"):
        ResidualLSTM(8, 8).initial_hidden(-1)


def test_to_float64_keeps_working() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(8, 16, num_layers=2)
    x = torch.randn(2, 3, 8)
    out32, _ = lstm(x)
    lstm = lstm.to(torch.float64)
    h, c = lstm.initial_hidden(2)
    assert h.dtype == torch.float64
    out64, (h_n, c_n) = lstm(x.double(), (h, c))
    assert out64.dtype == h_n.dtype == c_n.dtype == torch.float64
    assert torch.allclose(out64.float(), out32, atol=1e-5)
    # Forget bias survived the cast.
    bias = lstm.layers[1].lstm.bias_ih_l0
    assert bias.dtype == torch.float64
    assert bias[16:32].allclose(torch.full((16,), 1.0 + math.log(2), dtype=torch.float64))


def test_bf16_autocast_cpu_is_finite_and_chains_in_fp32() -> None:
    torch.manual_seed(0)
    lstm = ResidualLSTM(12, 16, num_layers=2)
    x = torch.randn(3, 5, 12)
    hidden = lstm.initial_hidden(3)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, hidden = lstm(x, hidden)
        assert torch.isfinite(out).all()
        # The returned state keeps the dtype it came in with, so it can be fed back.
        assert hidden[0].dtype == hidden[1].dtype == torch.float32
        out_step, hidden = lstm(x[:, :1], hidden)
        # An input already in bf16 (from an upstream autocast layer) with an fp32 state.
        out_bf16, _ = lstm(x.bfloat16(), lstm.initial_hidden(3))
    assert torch.isfinite(out_step).all() and torch.isfinite(out_bf16).all()
    assert torch.isfinite(hidden[0]).all() and torch.isfinite(hidden[1]).all()
    reference, _ = lstm(x)
    assert torch.allclose(out.float(), reference, atol=0.1)  # bf16 is close, not equal


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_without_low_precision_lstm_runs_the_core_in_fp32(
    autocast_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback taken on CPUs whose oneDNN has no bf16 LSTM (AVX2 only), forced here:
    the core runs in fp32 on what the autocast layers around it hand over, and gradients
    reach every parameter."""
    monkeypatch.setattr(lstm_module, "ONEDNN_BF16_LSTM", False)
    assert lstm_module.cpu_lstm_dtype(autocast_dtype) == torch.float32
    torch.manual_seed(0)
    lstm = ResidualLSTM(12, 16, num_layers=2)
    x = torch.randn(3, 5, 12)
    hidden = lstm.initial_hidden(3)
    with torch.autocast("cpu", dtype=autocast_dtype):
        out, (h, c) = lstm(x, hidden)
        projected = lstm.input_proj(x)  # what the first layer's kernel receives, upcast
        first, _, _ = lstm.layers[0].lstm(projected, hidden[0][:1], hidden[1][:1])
    out.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lstm.parameters())
    assert h.dtype == c.dtype == torch.float32
    assert first.dtype == torch.float32
    layer = lstm.layers[0].lstm
    expected, _, _ = layer._lstm(
        projected.float(), hidden[0][:1], hidden[1][:1], layer.flat_weights()
    )
    assert torch.equal(first, expected)
    reference, _ = lstm(x, hidden)
    assert torch.allclose(out.float(), reference, atol=0.1)


def test_bf16_autocast_works_where_onednn_has_no_bf16_lstm() -> None:
    """On any CPU, with oneDNN held to AVX2 (as on an AMD EPYC without AVX-512): both
    networks act and learn under bf16 autocast with the fp32 state a trainer carries.
    Without the fallback the LSTM raised "could not create a primitive descriptor for the
    LSTM forward propagation primitive"."""
    script = """
import torch
from slotformer import create_policy
from slotformer.layers import lstm
assert not lstm.ONEDNN_BF16_LSTM, "the ISA cap did not take"
for kind in ("lstm", "transformer"):
    policy = create_policy(kind, lstm_hidden_dim=32, lstm_layers=2)
    masks = dict.fromkeys(policy.network.action_space.head_names)
    obs, bp = torch.randn(4, 6, 116), torch.full((4, 6, 3), -1)
    hidden = policy.initial_hidden(4)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = policy.get_action(obs[:, 0], bp[:, 0], masks, hidden)
        step = policy.get_action(obs[:, 1], bp[:, 1], masks, step.hidden)
        actions = {k: v.unsqueeze(1).expand(4, 6) for k, v in step.actions.items()}
        ev = policy.evaluate_actions(obs, bp, actions, masks, hidden)
        loss = sum(lp.sum() for lp in ev.log_probs.values()) + ev.value.float().square().sum()
    loss.backward()
    assert torch.isfinite(loss)
print("ok")
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_residual_lstm_compiles_fullgraph() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = ResidualLSTM(12, 16, num_layers=2).eval()
    compiled = torch.compile(lstm, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 12)
    out, (h, c) = compiled(x)
    ref_out, (ref_h, ref_c) = lstm(x)
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert torch.allclose(h, ref_h, atol=1e-6)
    out2, _ = compiled(x[:, :1], (h, c))
    ref_out2, _ = lstm(x[:, :1], (ref_h, ref_c))
    assert torch.allclose(out2, ref_out2, atol=1e-6)
