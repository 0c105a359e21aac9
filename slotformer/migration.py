"""Weights of the reference flat network in slotformer's `FactoredRecurrentActorCritic`.

The reference network (esper-lite's ``FactoredRecurrentActorCritic``) and slotformer's flat
network have the same layers, widths and order, so a reference state dict carries over
exactly: the converted network computes the same logits, V(s), Q(s, op), contributions and
``lstm_out``. Only the recurrent core's parameter names differ, and the reference stores
one buffer slotformer derives instead:

==============================================  =============================================
reference key                                   slotformer key
==============================================  =============================================
``lstm.layers.{i}.weight_ih_l0`` (and           ``lstm.layers.{i}.lstm.weight_ih_l0`` (and
``weight_hh_l0``, ``bias_ih_l0``,               the other three)
``bias_hh_l0``)
``lstm.layer_norms.{i}.weight`` / ``.bias``     ``lstm.layers.{i}.norm.weight`` / ``.bias``
``blueprint_embedding._null_idx``               (dropped: the null row is always the last)
every other key                                 the same key
==============================================  =============================================

The reference layout, ``H`` the LSTM width, ``F`` the feature width, ``D`` the observation
width, ``N`` the slots, ``E`` the blueprint embedding width (4), ``L`` the LSTM layers:

* ``blueprint_embedding.embedding.weight [14, E]`` (row 13 is the empty-slot row);
* ``feature_net``: ``Linear(D + N*E, F) -> LayerNorm(F) -> ReLU`` (keys ``.0``, ``.1``);
* ``lstm.input_proj``: ``Linear(F, H)``, absent when ``F == H``; then ``L`` blocks of
  ``nn.LSTM(H, H)`` and ``LayerNorm(H)`` (``x = x + norm(lstm(x))``);
* ``{head}_head``: ``Linear(H, H/2) -> ReLU -> Linear(H/2, n)`` for ``slot`` (n = N),
  ``style``, ``tempo``, ``alpha_target``, ``alpha_speed``, ``alpha_curve`` and ``op``;
  ``blueprint_head``: ``Linear(H, H) -> ReLU -> Linear(H, H/2) -> ReLU -> Linear(H/2, 13)``;
* ``state_value_head`` and ``q_head`` (input ``H + 6``): ``Linear(., H/2) -> LayerNorm ->
  ReLU -> Linear(H/2, H/4) -> LayerNorm -> ReLU -> Linear(H/4, H/8) -> ReLU ->
  Linear(H/8, 1)``;
* ``contribution_predictor``: ``Linear(H, H/2) -> LayerNorm -> ReLU -> Dropout ->
  Linear(H/2, H/4) -> ReLU -> Linear(H/4, N)``.

A reference training checkpoint keeps the network's weights under
``checkpoint["network_state_dict"]``; pass that dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import pairwise

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import DEFAULT_BASE_DIM, SlotConfig
from slotformer.networks.core import without_compile_prefix
from slotformer.networks.lstm import FactoredRecurrentActorCritic, LSTMConfig
from slotformer.presets.seed_lifecycle import NUM_BLUEPRINTS

NULL_INDEX_KEY = "blueprint_embedding._null_idx"
"""The reference's buffer holding the empty-slot row of the embedding (13); not loaded."""

_LSTM_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
_P = "|".join(_LSTM_PARAMS)
# The module's table as (pattern, replacement) pairs, one tuple per direction.
_TO_SLOTFORMER = (
    (re.compile(rf"^lstm\.layers\.(\d+)\.({_P})$"), r"lstm.layers.\1.lstm.\2"),
    (re.compile(r"^lstm\.layer_norms\.(\d+)\.(weight|bias)$"), r"lstm.layers.\1.norm.\2"),
)
_TO_REFERENCE = (
    (re.compile(rf"^lstm\.layers\.(\d+)\.lstm\.({_P})$"), r"lstm.layers.\1.\2"),
    (re.compile(r"^lstm\.layers\.(\d+)\.norm\.(weight|bias)$"), r"lstm.layer_norms.\1.\2"),
)
_LAYER_INDEX = re.compile(r"^lstm\.(?:layers|layer_norms)\.(\d+)\.")
_MAX_LISTED = 12  # keys named per category in an error message

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ReferenceDimensions:
    """The sizes of a reference network, read off its state dict's shapes: D, F, H, L, N and
    E of the module's layout.

    Example:
        >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16, lstm_layers=2)
        >>> ReferenceDimensions.infer(to_reference_state_dict(net))
        ReferenceDimensions(state_dim=116, feature_dim=32, lstm_hidden_dim=16, lstm_layers=2, num_slots=3, blueprint_embed_dim=4)
    """

    state_dim: int
    feature_dim: int
    lstm_hidden_dim: int
    lstm_layers: int
    num_slots: int
    blueprint_embed_dim: int

    @classmethod
    def infer(cls, state_dict: Mapping[str, Tensor]) -> ReferenceDimensions:
        """Read the sizes off a reference state dict (reference key names); ``ValueError``
        if a tensor they are read from is missing or has the wrong rank."""
        state_dict = without_compile_prefix(state_dict)

        def shape_of(key: str, rank: int, needed_for: str) -> Shape:
            tensor = state_dict.get(key)
            if isinstance(tensor, Tensor) and tensor.dim() == rank:
                return tuple(tensor.shape)
            if tensor is not None:
                problem = (f"key {key!r} has shape {_shape_text(tensor)}, expected a {rank}-d "
                           f"tensor (it gives {needed_for})")
            else:
                keys = sorted(state_dict)
                more = f", ... ({len(keys)} keys)" if len(keys) > 8 else ""
                ours = any(_TO_REFERENCE[0][0].match(k) for k in state_dict)
                problem = (f"is missing key {key!r} (needed to infer {needed_for}); found "
                           f"[{', '.join(repr(k) for k in keys[:8])}{more}]"
                           + ("; it already has slotformer's names (load it with "
                              "load_state_dict)" if ours else ""))
            raise ValueError(f"reference state_dict {problem}")

        hidden = shape_of("lstm.layers.0.weight_hh_l0", 2, "lstm_hidden_dim")[1]
        feature_dim, feature_in = shape_of("feature_net.0.weight", 2, "feature_dim and state_dim")
        num_slots = shape_of("slot_head.2.weight", 2, "the number of slots")[0]
        embed_dim = shape_of("blueprint_embedding.embedding.weight", 2, "blueprint_embed_dim")[1]
        indices = {int(m.group(1)) for key in state_dict if (m := _LAYER_INDEX.match(key))}
        state_dim = feature_in - num_slots * embed_dim
        if state_dim < 1:
            raise ValueError(f"reference state_dict key 'feature_net.0.weight' has {feature_in} "
                             f"input features, fewer than the {num_slots} slots' blueprint "
                             f"embeddings ({num_slots} x {embed_dim}) it must include")
        return cls(state_dim, feature_dim, hidden, max(indices) + 1, num_slots, embed_dim)

    def expected_shapes(self) -> dict[str, Shape]:
        """Every reference key and its shape for these sizes (``_null_idx`` excluded)."""
        H, F, N, E = self.lstm_hidden_dim, self.feature_dim, self.num_slots, self.blueprint_embed_dim
        h2, h4, h8 = H // 2, H // 4, H // 8
        space = ActionSpace.default(N)
        shapes: dict[str, Shape] = {}

        def linear(prefix: str, out_features: int, in_features: int) -> None:
            shapes[f"{prefix}.weight"] = (out_features, in_features)
            shapes[f"{prefix}.bias"] = (out_features,)

        def layer_norm(prefix: str, features: int) -> None:
            shapes[f"{prefix}.weight"] = shapes[f"{prefix}.bias"] = (features,)

        shapes["blueprint_embedding.embedding.weight"] = (NUM_BLUEPRINTS + 1, E)
        linear("feature_net.0", F, self.state_dim + N * E)
        layer_norm("feature_net.1", F)
        if F != H:
            linear("lstm.input_proj", H, F)
        for i in range(self.lstm_layers):
            for param in _LSTM_PARAMS:
                shapes[f"lstm.layers.{i}.{param}"] = (4 * H, H) if param[0] == "w" else (4 * H,)
            layer_norm(f"lstm.layer_norms.{i}", H)
        for name, size in space.sizes.items():  # blueprint: H -> H -> H/2 -> 13
            widths = (H, H, h2, size) if name == "blueprint" else (H, h2, size)
            for index, (in_features, out_features) in enumerate(pairwise(widths)):
                linear(f"{name}_head.{2 * index}", out_features, in_features)
        for head, in_features in (("state_value_head", H), ("q_head", H + space.num_ops)):
            linear(f"{head}.0", h2, in_features)
            layer_norm(f"{head}.1", h2)
            linear(f"{head}.3", h4, h2)
            layer_norm(f"{head}.4", h4)
            linear(f"{head}.6", h8, h4)
            linear(f"{head}.8", 1, h8)
        linear("contribution_predictor.0", h2, H)
        layer_norm("contribution_predictor.1", h2)
        linear("contribution_predictor.4", h4, h2)
        linear("contribution_predictor.6", N, h4)
        return shapes


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A reference network's state dict under slotformer's parameter names.

    Checks the whole state dict against the reference layout for the sizes its shapes give
    (`ReferenceDimensions`), strips a ``torch.compile`` prefix, renames the recurrent core's
    keys (the module's table) and drops ``_null_idx``: a new dict of the same tensors that a
    `FactoredRecurrentActorCritic` of those sizes loads with ``load_state_dict(strict=True)``.
    ``ValueError`` names every missing, unexpected or mis-shaped key (expected and actual
    shape) and the sizes it inferred.

    Example:
        >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16)
        >>> reference = to_reference_state_dict(net)  # stands in for a reference network's
        >>> tuple(reference["lstm.layer_norms.0.weight"].shape)
        (16,)
        >>> converted = convert_reference_state_dict(reference)
        >>> tuple(converted["lstm.layers.0.norm.weight"].shape), "blueprint_embedding._null_idx" in converted
        ((16,), False)
        >>> del reference["op_head.2.bias"]
        >>> convert_reference_state_dict(reference)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: reference state_dict does not have the reference network's layout ... missing keys ['op_head.2.bias']
    """
    source = _unprefixed(state_dict)
    dims = ReferenceDimensions.infer(source)
    expected = dims.expected_shapes()
    given = {key: value for key, value in source.items() if key != NULL_INDEX_KEY}
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    mismatched = [
        f"{key!r} has shape {_shape_text(given[key])}, expected {expected[key]}"
        for key in expected
        if key in given
        and (not isinstance(given[key], Tensor) or tuple(given[key].shape) != expected[key])
    ]
    problems = _listed("missing keys", missing) + _listed("unexpected keys", unexpected)
    problems += _listed("shape mismatches", mismatched, quote=False)
    null_index = source.get(NULL_INDEX_KEY)
    if null_index is not None and not (
        isinstance(null_index, Tensor) and null_index.dim() == 0
        and not null_index.is_floating_point() and int(null_index) == NUM_BLUEPRINTS
    ):
        problems.append(f"{NULL_INDEX_KEY!r} is {_value_text(null_index)}, expected a 0-d "
                        f"integer tensor holding {NUM_BLUEPRINTS} (the embedding's last row, "
                        "where slotformer puts the empty-slot row)")
    if problems:
        hint = ""
        if any(key.startswith("module.") for key in unexpected):
            hint = " (keys start with 'module.': pass the unwrapped module's state_dict)"
        sizes = ", ".join(f"{f.name}={getattr(dims, f.name)}" for f in fields(dims))
        raise ValueError(f"reference state_dict does not have the reference network's layout "
                         f"for the sizes its shapes give ({sizes}): {'; '.join(problems)}{hint}")
    return {_renamed(key, _TO_SLOTFORMER): value for key, value in given.items()}


def to_reference_state_dict(network: FactoredRecurrentActorCritic) -> dict[str, Tensor]:
    """The inverse of `convert_reference_state_dict`: ``network``'s weights (detached, not
    copied) under the reference's parameter names, with its ``_null_idx`` buffer.
    ``ValueError`` if the network has heads or sizes the reference cannot have.

    Example:
        >>> net = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16)
        >>> reference = to_reference_state_dict(net)
        >>> int(reference["blueprint_embedding._null_idx"]), "lstm.layers.0.weight_ih_l0" in reference
        (13, True)
    """
    _check_network(network)
    reference = {_renamed(key, _TO_REFERENCE): value for key, value in network.state_dict().items()}
    reference[NULL_INDEX_KEY] = torch.tensor(NUM_BLUEPRINTS, dtype=torch.int64)
    try:
        convert_reference_state_dict(reference)  # the reference layout, or a clear error
    except ValueError as error:
        raise ValueError(f"this network has no reference-network counterpart: {error}") from error
    return reference


def load_reference_state_dict(
    network: FactoredRecurrentActorCritic, state_dict: Mapping[str, Tensor]
) -> None:
    """Load a reference network's weights into ``network`` (built with its sizes; see
    `network_from_reference_state_dict`), strictly, in the network's dtype and device.

    Every parameter must get a tensor of its shape before anything is copied (a failed load
    changes nothing); ``ValueError`` names each misfit parameter with both shapes.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> source = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16)
        >>> target = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16)
        >>> load_reference_state_dict(target, to_reference_state_dict(source))
        >>> torch.equal(target.blueprint_head[0].weight, source.blueprint_head[0].weight)
        True
        >>> two_layers = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16, lstm_layers=2)
        >>> load_reference_state_dict(two_layers, to_reference_state_dict(source))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: reference state_dict does not fit this FactoredRecurrentActorCritic (... lstm_layers=2, 3 slots): network parameters with no reference tensor ['lstm.layers.1.lstm.weight_ih_l0', ...]
    """
    _check_network(network)
    converted = convert_reference_state_dict(state_dict)
    target = network.state_dict()
    missing = [key for key in target if key not in converted]
    unexpected = [_renamed(key, _TO_REFERENCE) for key in converted if key not in target]
    mismatched = [
        f"{key!r}: the network's parameter has shape {tuple(target[key].shape)}, the state "
        f"dict's (reference key {_renamed(key, _TO_REFERENCE)!r}) has {tuple(value.shape)}"
        for key, value in converted.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    problems = _listed("network parameters with no reference tensor", missing)
    problems += _listed("reference keys the network has no parameter for", unexpected)
    problems += _listed("shape mismatches", mismatched, quote=False)
    if problems:
        raise ValueError(f"reference state_dict does not fit this {type(network).__name__} "
                         f"(state_dim={network.state_dim}, feature_dim={network.feature_dim}, "
                         f"lstm_hidden_dim={network.lstm_hidden_dim}, lstm_layers="
                         f"{network.lstm_layers}, {network.slot_config.num_slots} slots): "
                         f"{'; '.join(problems)}")
    network.load_state_dict(converted, strict=True)


def network_from_reference_state_dict(
    state_dict: Mapping[str, Tensor], slot_config: SlotConfig | None = None, *,
    value_baseline: str = "v", base_dim: int = DEFAULT_BASE_DIM,
) -> FactoredRecurrentActorCritic:
    """A flat network sized for a reference state dict (`ReferenceDimensions`), with its
    weights loaded, in train mode, on the device and in the dtype of the state dict's first
    floating-point tensor; its outputs equal the reference network's for the same inputs.

    ``slot_config`` (the slots in action order, as many as the state dict's; ``ValueError``
    otherwise) defaults to ``SlotConfig.for_grid(1, N)``; ``value_baseline="v"`` (V(s)) is
    the reference's PPO value; ``base_dim`` is the observation's base block width.

    Example:
        >>> source = FactoredRecurrentActorCritic(feature_dim=32, lstm_hidden_dim=16, lstm_layers=2)
        >>> net = network_from_reference_state_dict(to_reference_state_dict(source))
        >>> net.state_dim, net.feature_dim, net.lstm_hidden_dim, net.lstm_layers, net.value_baseline
        (116, 32, 16, 2, 'v')
        >>> state, blueprints = torch.randn(2, 4, 116), torch.tensor([0, -1, 12]).expand(2, 4, 3)
        >>> torch.equal(net(state, blueprints)["op_logits"], source(state, blueprints)["op_logits"])
        True
    """
    source = _unprefixed(state_dict)
    dims = ReferenceDimensions.infer(source)
    if slot_config is None:
        slot_config = SlotConfig.for_grid(1, dims.num_slots)
    elif slot_config.num_slots != dims.num_slots:
        raise ValueError(f"slot_config has {slot_config.num_slots} slots "
                         f"{list(slot_config.slot_ids)} but the reference state_dict's slot head "
                         f"has {dims.num_slots} outputs ('slot_head.2.weight')")
    network = FactoredRecurrentActorCritic(
        dims.state_dim, dims.feature_dim, dims.lstm_hidden_dim, dims.lstm_layers, slot_config,
        config=LSTMConfig(value_baseline=value_baseline, base_dim=base_dim,
                          blueprint_embed_dim=dims.blueprint_embed_dim),
    )
    floating = next((t for t in source.values() if t.is_floating_point()), None)
    if floating is not None:
        network.to(device=floating.device, dtype=floating.dtype)
    load_reference_state_dict(network, source)
    return network


# ---------------------------------------------------------------------------------- helpers
def _renamed(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, replacement in rules:  # the patterns exclude each other's results
        key = pattern.sub(replacement, key)
    return key


def _unprefixed(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    return without_compile_prefix(state_dict)


def _check_network(network: object) -> None:
    if not isinstance(network, FactoredRecurrentActorCritic):
        hint = " (a policy bundle: pass bundle.network)" if hasattr(network, "network") else ""
        raise TypeError(f"network must be a FactoredRecurrentActorCritic, got "
                        f"{type(network).__name__}{hint}")


def _shape_text(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else f"(a {type(value).__name__})"


def _value_text(value: object) -> str:
    if isinstance(value, Tensor) and value.numel() == 1:
        return f"{value.item()!r} (dtype {value.dtype}, shape {tuple(value.shape)})"
    return _shape_text(value)


def _listed(label: str, items: list[str], quote: bool = True) -> list[str]:
    shown = ", ".join(repr(item) if quote else item for item in items[:_MAX_LISTED])
    more = f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else ""
    return [f"{label} [{shown}{more}]"] if items else []


__all__ = ["NULL_INDEX_KEY", "ReferenceDimensions", "convert_reference_state_dict",
           "load_reference_state_dict", "network_from_reference_state_dict",
           "to_reference_state_dict"]
