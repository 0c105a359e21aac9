"""Loading the reference flat network's weights (slotformer/migration.py).

The reference network (esper-lite's ``FactoredRecurrentActorCritic``) is not a dependency.
`ReferenceLayout` below rebuilds its parameter layout from plain torch modules (the names,
shapes and order its public source gives), and `reference_outputs` recomputes its forward
pass from the raw tensors with ``torch.nn.functional``: embedding with -1 -> row 13, concat,
Linear -> LayerNorm -> ReLU, an ``nn.LSTM`` per layer with ``x + LayerNorm(lstm(x))``, then
the heads. slotformer's network, loaded from the converted state dict, must agree with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import slotformer
from slotformer import (
    FactoredRecurrentActorCritic,
    ReferenceDimensions,
    SlotConfig,
    convert_reference_state_dict,
    load_reference_state_dict,
    network_from_reference_state_dict,
    to_reference_state_dict,
)
from slotformer.networks.lstm import LSTMConfig

BASE_DIM = 23
# The reference's heads in its order, with their sizes (slot: N).
HEAD_SIZES = {
    "blueprint": 13, "style": 4, "tempo": 3, "alpha_target": 3, "alpha_speed": 4,
    "alpha_curve": 5, "op": 6,
}
NUM_OPS = 6
NULL_ROW = 13


@dataclass(frozen=True)
class Sizes:
    num_slots: int = 3
    slot_dim: int = 31
    feature_dim: int = 64
    hidden: int = 32
    layers: int = 1

    @property
    def state_dim(self) -> int:
        return BASE_DIM + self.num_slots * self.slot_dim


# ----------------------------------------------------------------- the reference's layout
def _mlp(*widths: int) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` through ``widths``."""
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(pairwise(widths)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def _value_head(in_features: int, h: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, h), nn.LayerNorm(h), nn.ReLU(),
        nn.Linear(h, h // 2), nn.LayerNorm(h // 2), nn.ReLU(),
        nn.Linear(h // 2, h // 4), nn.ReLU(),
        nn.Linear(h // 4, 1),
    )


class _ReferenceEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(14, 4)
        self.register_buffer("_null_idx", torch.tensor(NULL_ROW, dtype=torch.int64))


class _ReferenceLSTM(nn.Module):
    def __init__(self, feature_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(feature_dim, hidden) if feature_dim != hidden else nn.Identity()
        self.layers = nn.ModuleList(nn.LSTM(hidden, hidden, batch_first=True) for _ in range(layers))
        self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))


class ReferenceLayout(nn.Module):
    """Modules named, shaped and ordered as the reference network's (no forward)."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__()
        N, H, h = sizes.num_slots, sizes.hidden, sizes.hidden // 2
        self.feature_net = nn.Sequential(
            nn.Linear(sizes.state_dim + 4 * N, sizes.feature_dim),
            nn.LayerNorm(sizes.feature_dim),
            nn.ReLU(),
        )
        self.lstm = _ReferenceLSTM(sizes.feature_dim, H, sizes.layers)
        self.lstm_ln = nn.Identity()
        self.slot_head = _mlp(H, h, N)
        for name in ("style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op"):
            self.add_module(f"{name}_head", _mlp(H, h, HEAD_SIZES[name]))
        self.blueprint_embedding = _ReferenceEmbedding()
        self.blueprint_head = _mlp(H, H, h, 13)
        self.state_value_head = _value_head(H, h)
        self.q_head = _value_head(H + NUM_OPS, h)
        self.contribution_predictor = nn.Sequential(
            nn.Linear(H, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(0.1),
            nn.Linear(h, h // 2), nn.ReLU(), nn.Linear(h // 2, N),
        )


def reference_state_dict(sizes: Sizes, seed: int = 0) -> dict[str, Tensor]:
    """A reference-layout state dict with random values everywhere (LayerNorm gains and
    every bias included, so that a tensor loaded into the wrong place shows)."""
    module = ReferenceLayout(sizes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=g)
            if name.endswith("weight") and parameter.dim() == 2:
                parameter.copy_(noise * 1.5 / parameter.shape[1] ** 0.5)
            elif re.search(r"(norms\.\d+|_net\.1|head\.[14]|predictor\.1)\.weight$", name):
                parameter.copy_(1.0 + 0.3 * noise)  # LayerNorm gains
            else:
                parameter.copy_(0.3 * noise)
    return module.state_dict()


# ----------------------------------------------------- the reference's forward, recomputed
def _linear(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def _layer_norm(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    weight = sd[f"{prefix}.weight"]
    return F.layer_norm(x, weight.shape, weight, sd[f"{prefix}.bias"])


def _head(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    indices = (0, 2, 4) if name == "blueprint" else (0, 2)
    for position, index in enumerate(indices):
        if position:
            x = F.relu(x)
        x = _linear(sd, f"{name}_head.{index}", x)
    return x


def _value(sd: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    x = F.relu(_layer_norm(sd, f"{prefix}.1", _linear(sd, f"{prefix}.0", x)))
    x = F.relu(_layer_norm(sd, f"{prefix}.4", _linear(sd, f"{prefix}.3", x)))
    x = F.relu(_linear(sd, f"{prefix}.6", x))
    return _linear(sd, f"{prefix}.8", x).squeeze(-1)


def reference_outputs(
    sd: dict[str, Tensor],
    state: Tensor,
    blueprint_indices: Tensor,
    hidden: tuple[Tensor, Tensor],
    op: Tensor,
) -> dict[str, Tensor]:
    """The reference network's outputs (eval mode), computed from ``sd``'s raw tensors."""
    table = sd["blueprint_embedding.embedding.weight"]
    rows = torch.where(blueprint_indices == -1, torch.full_like(blueprint_indices, NULL_ROW),
                       blueprint_indices)
    embedded = F.embedding(rows, table).flatten(-2)  # [B, T, N * 4]
    x = torch.cat([state, embedded], dim=-1)
    x = F.relu(_layer_norm(sd, "feature_net.1", _linear(sd, "feature_net.0", x)))
    if "lstm.input_proj.weight" in sd:
        x = _linear(sd, "lstm.input_proj", x)
    H = x.shape[-1]
    h_0, c_0 = hidden
    h_n, c_n = [], []
    layer = 0
    while f"lstm.layers.{layer}.weight_ih_l0" in sd:
        lstm = nn.LSTM(H, H, batch_first=True)
        lstm.load_state_dict(
            {k: sd[f"lstm.layers.{layer}.{k}"]
             for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}
        )
        out, (h, c) = lstm(x, (h_0[layer : layer + 1], c_0[layer : layer + 1]))
        x = x + _layer_norm(sd, f"lstm.layer_norms.{layer}", out)
        h_n.append(h)
        c_n.append(c)
        layer += 1
    outputs = {f"{name}_logits": _head(sd, name, x) for name in ("slot", *HEAD_SIZES)}
    outputs["state_value"] = _value(sd, "state_value_head", x)
    op_one_hot = F.one_hot(op, NUM_OPS).to(x.dtype)
    outputs["q_value"] = _value(sd, "q_head", torch.cat([x, op_one_hot], dim=-1))
    contribution = F.relu(_layer_norm(sd, "contribution_predictor.1",
                                      _linear(sd, "contribution_predictor.0", x)))
    contribution = F.relu(_linear(sd, "contribution_predictor.4", contribution))
    outputs["contributions"] = _linear(sd, "contribution_predictor.6", contribution)
    outputs["lstm_out"] = x
    outputs["h"], outputs["c"] = torch.cat(h_n), torch.cat(c_n)
    return outputs


def inputs(sizes: Sizes, batch: int = 3, steps: int = 5, seed: int = 1) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, steps, sizes.state_dim, generator=g)
    blueprints = torch.randint(-1, 13, (batch, steps, sizes.num_slots), generator=g)
    blueprints[0, 0] = -1  # an empty grid
    blueprints[1, 0] = 12  # the last real blueprint
    shape = (sizes.layers, batch, sizes.hidden)
    hidden = (0.5 * torch.randn(shape, generator=g), 0.5 * torch.randn(shape, generator=g))
    return state, blueprints, *hidden


# ---------------------------------------------------------------------------- equivalence
SIZES = [
    pytest.param(Sizes(), id="default-shape-input-proj"),
    pytest.param(Sizes(feature_dim=32, layers=2), id="identity-input-proj-2-layers"),
    pytest.param(Sizes(num_slots=4, feature_dim=48, layers=3), id="4-slots-3-layers"),
    pytest.param(Sizes(slot_dim=39), id="39-features-per-slot"),
]


@pytest.mark.parametrize("sizes", SIZES)
def test_converted_network_computes_the_reference_outputs(sizes: Sizes) -> None:
    sd = reference_state_dict(sizes)
    net = network_from_reference_state_dict(sd).eval()
    assert (net.state_dim, net.feature_dim, net.lstm_hidden_dim, net.lstm_layers) == (
        sizes.state_dim, sizes.feature_dim, sizes.hidden, sizes.layers
    )
    assert net.slot_config == SlotConfig.for_grid(1, sizes.num_slots)
    assert isinstance(net.lstm.input_proj, nn.Identity) == (sizes.feature_dim == sizes.hidden)

    state, blueprints, h_0, c_0 = inputs(sizes)
    with torch.no_grad():
        out = net(state, blueprints, (h_0, c_0))
        expected = reference_outputs(sd, state, blueprints, (h_0, c_0), out["sampled_op"])
        contributions = net.predict_contributions(state, blueprints, (h_0, c_0))

    for name in ("slot", *HEAD_SIZES):
        key = f"{name}_logits"
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=1e-5, msg=key)
    for key in ("state_value", "q_value", "lstm_out"):
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=1e-5, msg=key)
    torch.testing.assert_close(out["value"], expected["state_value"], rtol=0, atol=1e-5)  # "v"
    torch.testing.assert_close(out["hidden"][0], expected["h"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["hidden"][1], expected["c"], rtol=0, atol=1e-5)
    torch.testing.assert_close(contributions, expected["contributions"], rtol=0, atol=1e-5)
    # Not vacuous: the outputs differ between steps and batch rows.
    assert out["op_logits"].std() > 0.05 and out["state_value"].std() > 0.05


@pytest.mark.parametrize("sizes", SIZES[:2])
def test_every_parameter_is_loaded_strictly(sizes: Sizes) -> None:
    sd = reference_state_dict(sizes, seed=3)
    net = FactoredRecurrentActorCritic(state_dim=sizes.state_dim, feature_dim=sizes.feature_dim, lstm_hidden_dim=sizes.hidden, lstm_layers=sizes.layers, config=LSTMConfig(value_baseline="v"))
    converted = convert_reference_state_dict(sd)
    assert "blueprint_embedding._null_idx" not in converted
    assert len(converted) == len(sd) - 1  # only the null-index buffer is dropped
    assert set(converted) == set(net.state_dict())
    load_reference_state_dict(net, sd)
    loaded = net.state_dict()
    for key, value in converted.items():
        assert torch.equal(loaded[key], value), key
    # The renames, spelled out.
    for layer in range(sizes.layers):
        assert torch.equal(
            loaded[f"lstm.layers.{layer}.lstm.weight_hh_l0"], sd[f"lstm.layers.{layer}.weight_hh_l0"]
        )
        assert torch.equal(
            loaded[f"lstm.layers.{layer}.norm.bias"], sd[f"lstm.layer_norms.{layer}.bias"]
        )


def test_reference_layout_round_trips() -> None:
    sd = reference_state_dict(Sizes(layers=2))
    net = network_from_reference_state_dict(sd)
    back = to_reference_state_dict(net)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key


def test_compiled_module_prefix_is_stripped() -> None:
    sd = reference_state_dict(Sizes())
    prefixed = {f"_orig_mod.{k}": v for k, v in sd.items()}
    assert convert_reference_state_dict(prefixed).keys() == convert_reference_state_dict(sd).keys()


def test_dimensions_are_read_off_the_shapes() -> None:
    sizes = Sizes(num_slots=4, feature_dim=48, layers=3)
    assert ReferenceDimensions.infer(reference_state_dict(sizes)) == ReferenceDimensions(
        state_dim=sizes.state_dim, feature_dim=48, lstm_hidden_dim=32, lstm_layers=3,
        num_slots=4, blueprint_embed_dim=4,
    )


def test_public_names_are_exported() -> None:
    for name in ("convert_reference_state_dict", "load_reference_state_dict",
                 "network_from_reference_state_dict", "to_reference_state_dict",
                 "ReferenceDimensions"):
        assert name in slotformer.__all__ and hasattr(slotformer, name), name


# --------------------------------------------------------------------------------- errors
def test_a_missing_key_is_named() -> None:
    sd = reference_state_dict(Sizes())
    del sd["op_head.2.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['op_head\.2\.bias'\]"):
        convert_reference_state_dict(sd)


def test_a_missing_key_the_sizes_come_from_is_named() -> None:
    sd = reference_state_dict(Sizes())
    del sd["slot_head.2.weight"]
    with pytest.raises(ValueError, match=r"missing key 'slot_head\.2\.weight' \(needed to infer "
                                         r"the number of slots\)"):
        convert_reference_state_dict(sd)


def test_a_missing_lstm_layer_is_named() -> None:
    sd = reference_state_dict(Sizes(layers=2))
    for key in [k for k in sd if k.startswith("lstm.layers.1.")]:
        del sd[key]
    with pytest.raises(ValueError, match=r"missing keys \['lstm\.layers\.1\.weight_ih_l0'"):
        convert_reference_state_dict(sd)


def test_an_unexpected_key_is_named() -> None:
    sd = reference_state_dict(Sizes())
    sd["value_head.0.weight"] = torch.zeros(16, 32)
    with pytest.raises(ValueError, match=r"unexpected keys \['value_head\.0\.weight'\]"):
        convert_reference_state_dict(sd)


def test_an_input_projection_with_equal_widths_is_unexpected() -> None:
    sd = reference_state_dict(Sizes(feature_dim=32))
    sd["lstm.input_proj.weight"], sd["lstm.input_proj.bias"] = torch.zeros(32, 32), torch.zeros(32)
    with pytest.raises(ValueError, match=r"unexpected keys \['lstm\.input_proj\.weight', "
                                         r"'lstm\.input_proj\.bias'\]"):
        convert_reference_state_dict(sd)


def test_a_wrong_shape_is_named_with_expected_and_actual() -> None:
    sd = reference_state_dict(Sizes())  # H = 32
    sd["blueprint_head.0.weight"] = torch.zeros(16, 32)  # slotformer's old H -> H/2 layout
    with pytest.raises(
        ValueError,
        match=r"shape mismatches \['blueprint_head\.0\.weight' has shape \(16, 32\), "
              r"expected \(32, 32\)\]",
    ):
        convert_reference_state_dict(sd)


def test_a_wrong_null_index_is_refused() -> None:
    sd = reference_state_dict(Sizes())
    sd["blueprint_embedding._null_idx"] = torch.tensor(0)
    with pytest.raises(ValueError, match=r"'blueprint_embedding\._null_idx' is 0 .*expected .*13"):
        convert_reference_state_dict(sd)


def test_a_slotformer_state_dict_is_not_taken_for_a_reference_one() -> None:
    net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=32)
    with pytest.raises(ValueError, match=r"missing key 'lstm\.layers\.0\.weight_hh_l0'.*"
                                         r"already has slotformer's names"):
        convert_reference_state_dict(net.state_dict())


def test_a_network_of_other_sizes_is_refused_naming_the_parameter() -> None:
    sd = reference_state_dict(Sizes())  # feature_dim 64
    net = FactoredRecurrentActorCritic(state_dim=116, feature_dim=48, lstm_hidden_dim=32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"'feature_net\.0\.weight': the network's parameter has shape \(48, 128\), the "
              r"state dict's \(reference key 'feature_net\.0\.weight'\) has \(64, 128\)",
    ):
        load_reference_state_dict(net, sd)
    for key, value in net.state_dict().items():  # nothing was copied
        assert torch.equal(value, before[key]), key


def test_a_network_with_more_layers_is_refused_naming_the_parameters() -> None:
    sd = reference_state_dict(Sizes())
    net = FactoredRecurrentActorCritic(state_dim=116, feature_dim=64, lstm_hidden_dim=32,
                                       lstm_layers=2)
    with pytest.raises(ValueError, match=r"network parameters with no reference tensor "
                                         r"\['lstm\.layers\.1\.lstm\.weight_ih_l0'"):
        load_reference_state_dict(net, sd)


def test_slot_config_must_have_the_state_dicts_slot_count() -> None:
    sd = reference_state_dict(Sizes())
    grid = SlotConfig.for_grid(2, 2)
    with pytest.raises(ValueError, match=r"slot_config has 4 slots.*slot head has 3 outputs"):
        network_from_reference_state_dict(sd, slot_config=grid)
    named = SlotConfig(("a", "b", "c"))
    assert network_from_reference_state_dict(sd, slot_config=named).slot_config == named


def test_a_bundle_is_refused_with_a_hint() -> None:
    bundle = slotformer.create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16)
    with pytest.raises(TypeError, match=r"pass bundle\.network"):
        load_reference_state_dict(bundle, {})  # type: ignore[arg-type]
