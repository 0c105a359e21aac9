"""Tests for versioned, atomic, weights-only checkpoints (slotformer/checkpoint.py)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import slotformer
from slotformer.actions import ActionSpace, HeadSpec
from slotformer.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from slotformer.config import SlotConfig
from slotformer.policy import LSTMPolicyBundle, PolicyBundle, TransformerPolicyBundle, create_policy

# The same small configs as tests/test_policy.py, so compiled graphs are shared.
SMALL: dict[str, dict[str, Any]] = {
    "lstm": {"lstm_hidden_dim": 16, "trunk_dim": 16},
    "transformer": {
        "lstm_hidden_dim": 16, "embed_dim": 16, "head_hidden": 16,
        "transformer_heads": 2, "transformer_layers": 1,
    },
}


def make_bundle(kind: str, seed: int = 0, **overrides: Any) -> PolicyBundle:
    torch.manual_seed(seed)
    return create_policy(kind, **{**SMALL[kind], **overrides})


def make_inputs(
    bundle: PolicyBundle, batch: int = 4, seed: int = 0
) -> tuple[Tensor, Tensor, dict[str, Tensor | None]]:
    g = torch.Generator().manual_seed(seed)
    N = bundle.slot_config.num_slots
    features = torch.randn(batch, bundle.state_dim, generator=g, dtype=bundle.dtype)
    blueprint = torch.randint(-1, bundle.config.num_slot_types, (batch, N), generator=g)  # type: ignore[attr-defined]
    masks: dict[str, Tensor | None] = {}
    for name, n in bundle.network.action_space.sizes.items():
        mask = torch.rand(batch, n, generator=g) > 0.4
        mask[:, 0] = True
        masks[name] = mask
    return features, blueprint, masks


def outputs(bundle: PolicyBundle, seed: int = 0) -> dict[str, Tensor]:
    """Deterministic outputs of every path: greedy actions, their re-scoring, V(s)."""
    features, blueprint, masks = make_inputs(bundle, seed=seed)
    action = bundle.get_action(features, blueprint, masks, deterministic=True)
    evaluated = bundle.evaluate_actions(features, blueprint, action.actions, masks)
    out = {f"action.{k}": v for k, v in action.actions.items()}
    out.update({f"log_prob.{k}": v.detach() for k, v in evaluated.log_probs.items()})
    out["value"] = evaluated.value.detach()
    out["value_rollout"] = action.value
    assert evaluated.state_value is not None
    out["state_value"] = evaluated.state_value.detach()
    return out


def assert_same_outputs(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(params=["lstm", "transformer"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------


def test_round_trip_rebuilds_the_policy_with_identical_outputs(kind: str, tmp_path: Path) -> None:
    policy = make_bundle(kind, seed=1, value_baseline="v")
    path = save_checkpoint(tmp_path / "policy.pt", policy, extra={"step": 7, "lr": [1e-3]})
    loaded = load_checkpoint(path)
    assert type(loaded) is type(policy)
    assert loaded.config == policy.config  # type: ignore[attr-defined]
    assert loaded.slot_config == policy.slot_config
    assert_same_outputs(outputs(loaded), outputs(policy))

    stored = read_checkpoint(path)
    assert stored["format_version"] == CHECKPOINT_FORMAT_VERSION == 1
    assert stored["library_version"] == slotformer.__version__
    assert stored["policy_type"] == kind
    assert stored["slot_ids"] == ["r0c0", "r0c1", "r0c2"]
    assert stored["config"]["value_baseline"] == "v"
    assert stored["extra"] == {"step": 7, "lr": [1e-3]}
    assert stored["state_dict"].keys() == policy.state_dict().keys()


def test_compiled_policy_round_trip_is_exact(tmp_path: Path) -> None:
    policy = make_bundle("transformer", seed=2)
    policy.compile(backend="eager")
    compiled_outputs = outputs(policy)
    path = save_checkpoint(tmp_path / "compiled.pt", policy)
    assert not any(k.startswith("_orig_mod") for k in read_checkpoint(path)["state_dict"])
    loaded = load_checkpoint(path)
    assert not loaded.is_compiled
    assert_same_outputs(outputs(loaded), compiled_outputs)
    loaded.compile(backend="eager")
    assert_same_outputs(outputs(loaded), compiled_outputs)


def test_round_trip_keeps_dtype_and_honours_map_location(tmp_path: Path) -> None:
    policy = make_bundle("lstm", seed=3).to(torch.float64)  # type: ignore[attr-defined]
    path = save_checkpoint(tmp_path / "double.pt", policy)
    loaded = load_checkpoint(path, map_location="cpu")
    assert loaded.dtype == torch.float64 and loaded.device == torch.device("cpu")
    assert_same_outputs(outputs(loaded), outputs(policy))


def test_transformer_loads_onto_another_grid_on_purpose(tmp_path: Path) -> None:
    policy = make_bundle("transformer", seed=4, state_dim=23 + 39 * 3)  # older 39-wide slots
    path = save_checkpoint(tmp_path / "grid.pt", policy)
    grid = SlotConfig.for_grid(2, 3)
    loaded = load_checkpoint(path, slot_config=grid)
    assert isinstance(loaded, TransformerPolicyBundle)
    assert loaded.slot_config == grid and loaded.state_dim == 23 + 39 * 6
    for name, tensor in policy.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    features, blueprint, masks = make_inputs(loaded)
    result = loaded.get_action(features, blueprint, masks)
    assert result.actions["slot"].max() < 6 and torch.isfinite(result.value).all()


def test_lstm_loads_with_its_own_slot_config(tmp_path: Path) -> None:
    grid = SlotConfig.for_grid(1, 2)
    policy = make_bundle("lstm", slot_config=grid)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "p.pt", policy), slot_config=grid)
    assert loaded.slot_config == grid


# ---------------------------------------------------------------------------------------
# interrupted save
# ---------------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("error", [_Interrupted("power cut"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    old, new = make_bundle("lstm", seed=5), make_bundle("lstm", seed=6)
    path = save_checkpoint(tmp_path / "policy.pt", old)
    previous_bytes = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj: Any, file: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, file, *args, **kwargs)
        file.seek(0)
        file.truncate(100)  # a partial archive on disk, then the process "dies"
        raise error

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(type(error)):
        save_checkpoint(path, new)
    monkeypatch.undo()
    assert path.read_bytes() == previous_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.pt"]  # no temp file left
    assert_same_outputs(outputs(load_checkpoint(path)), outputs(old))


def test_extra_must_be_plain_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"extra\['optimizer'\] is a SGD"):
        save_checkpoint(
            tmp_path / "p.pt",
            make_bundle("lstm"),
            extra={"optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)},
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# refused checkpoints
# ---------------------------------------------------------------------------------------


class Payload:
    """A class that only arbitrary unpickling can rebuild."""


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pt"
    torch.save({"format_version": 1, "state_dict": {}, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused.*arbitrary unpickling.*weights_only"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "policy.pt", make_bundle("lstm"))
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"format version 2 .*newer than .*reads \(1\)"):
        load_checkpoint(path)


def test_lstm_refuses_another_slot_id_set(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "policy.pt", make_bundle("lstm"))
    pattern = (r"saved for slots \['r0c0', 'r0c1', 'r0c2'\] but slot_config has "
               r"\['r0c0', 'r0c1', 'r1c0', 'r1c1'\].*only a 'transformer'")
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(path, slot_config=SlotConfig.for_grid(2, 2))
    # Same ids in another order change what each slot action means: refused too.
    with pytest.raises(CheckpointError, match="saved for slots"):
        load_checkpoint(path, slot_config=SlotConfig(("r0c2", "r0c1", "r0c0")))


def test_lstm_checkpoint_loaded_as_transformer_fails_clearly(tmp_path: Path) -> None:
    lstm = make_bundle("lstm")
    path = save_checkpoint(tmp_path / "lstm.pt", lstm)
    with pytest.raises(CheckpointError, match=r"holds a 'lstm' policy, expected a 'transformer'"):
        load_checkpoint(path, policy_type="transformer")
    assert isinstance(load_checkpoint(path, policy_type="lstm"), LSTMPolicyBundle)
    transformer = make_bundle("transformer")
    with pytest.raises(ValueError, match=r"does not fit this 'transformer' bundle.*missing keys"):
        transformer.load_state_dict(read_checkpoint(path)["state_dict"])


def test_flat_checkpoint_of_the_retired_head_layout_is_refused_clearly(tmp_path: Path) -> None:
    # Before its heads took the reference layout, the flat network's contribution predictor
    # was Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear (keys .0, .3, .6, no
    # LayerNorm) and its blueprint head H -> H/2 -> H/2 -> 13. Rewrite a checkpoint into that.
    path = save_checkpoint(tmp_path / "old.pt", make_bundle("lstm"))
    payload = read_checkpoint(path)
    state_dict = payload["state_dict"]
    H = 16
    for key in [k for k in state_dict if k.startswith(("contribution_predictor.", "blueprint_head."))]:
        del state_dict[key]
    for prefix, shape in (
        ("contribution_predictor.0", (H // 2, H)), ("contribution_predictor.3", (H // 4, H // 2)),
        ("contribution_predictor.6", (3, H // 4)), ("blueprint_head.0", (H // 2, H)),
        ("blueprint_head.2", (H // 2, H // 2)), ("blueprint_head.4", (13, H // 2)),
    ):
        state_dict[f"{prefix}.weight"] = torch.zeros(shape)
        state_dict[f"{prefix}.bias"] = torch.zeros(shape[0])
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"old\.pt.*saved by an earlier slotformer, before "
                                              r"the flat network's heads took the reference"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_truncated_or_corrupt_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "policy.pt", make_bundle("lstm"))
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"policy\.pt.*truncated.*expected a checkpoint"):
        load_checkpoint(path)


def test_corrupt_record_inside_a_valid_archive_is_a_clear_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "policy.pt", make_bundle("lstm"))
    data = bytearray(path.read_bytes())
    marker = data.find(b"data.pkl")
    assert marker > 0
    start = marker + 100  # inside the pickle record; the zip directory stays intact
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"policy\.pt' is corrupt: its record '.*data\.pkl' fails its CRC-32"
    ) as info:
        load_checkpoint(path)
    assert "refused" not in str(info.value)


def test_a_flipped_bit_anywhere_is_an_error_or_changes_nothing(tmp_path: Path) -> None:
    # torch.load does not check the archive's CRCs, so a flipped bit in a tensor record used
    # to load as a silently wrong weight. Flip one bit at 40 places spread over the file:
    # each load either fails with a CheckpointError naming the file or (a bit in a field
    # nothing reads) gives exactly the saved policy, never a partial or altered one.
    policy = make_bundle("lstm")
    path = save_checkpoint(tmp_path / "policy.pt", policy)
    original = path.read_bytes()
    expected = outputs(policy)
    errors = 0
    for offset in range(0, len(original), max(1, len(original) // 40)):
        damaged = bytearray(original)
        damaged[offset] ^= 0x04
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as error:
            assert "policy.pt" in str(error), str(error)
            errors += 1
            continue
        assert_same_outputs(outputs(loaded), expected)
        for key, value in policy.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (offset, key)
    assert errors >= 30  # nearly every byte is a tensor, the pickle or a zip header


def test_a_killed_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    # SIGKILL a process in the middle of save_checkpoint (no Python cleanup runs): the file
    # at the path is still a complete checkpoint, the old one or the new one.
    import signal
    import subprocess
    import sys
    import time

    old = make_bundle("lstm", seed=1)
    path = save_checkpoint(tmp_path / "policy.pt", old)
    old_outputs = outputs(old)
    writer = (
        "import sys, torch\n"
        "from slotformer import create_policy, save_checkpoint\n"
        "torch.manual_seed(2)\n"
        "policy = create_policy('lstm', lstm_hidden_dim=16, trunk_dim=16)\n"
        "big = {'ballast': torch.zeros(30_000_000)}  # ~120 MB: a slow write\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    save_checkpoint(sys.argv[1], policy, extra=big)\n"
    )
    for delay in (0.05, 0.2, 0.5):
        process = subprocess.Popen(
            [sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        loaded = load_checkpoint(path)  # a complete checkpoint, never a torn one
        if loaded.network.feature_net[0].weight.equal(old.network.feature_net[0].weight):
            assert_same_outputs(outputs(loaded), old_outputs)
        else:
            assert read_checkpoint(path)["extra"]["ballast"].shape == (30_000_000,)
    # A killed writer cannot remove its temporary file; it never replaces the checkpoint.
    # At least one kill landed inside a write (its temporary file is left behind).
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "policy.pt" and any(".tmp-" in n for n in names), names


def test_other_torch_files_and_missing_files(tmp_path: Path) -> None:
    plain = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, plain)
    with pytest.raises(CheckpointError, match=r"not a slotformer checkpoint: found \['weight'\]"):
        load_checkpoint(plain)
    unknown = tmp_path / "unknown.pt"
    payload = read_checkpoint(save_checkpoint(tmp_path / "p.pt", make_bundle("lstm")))
    payload["policy_type"] = "gru"
    torch.save(payload, unknown)
    with pytest.raises(CheckpointError, match=r"policy type 'gru'.*registered policies"):
        load_checkpoint(unknown)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_the_scale_options_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    policy = make_bundle(
        "transformer", contribution_hidden=8, contribution_dropout=0.2, transformer_ff_mult=2
    )
    save_checkpoint(tmp_path / "p.pt", policy)
    loaded = load_checkpoint(tmp_path / "p.pt")
    for key in ("contribution_hidden", "contribution_dropout", "transformer_ff_mult"):
        assert getattr(loaded.config, key) == getattr(policy.config, key), key
    for key, value in outputs(policy.eval()).items():
        assert torch.equal(outputs(loaded.eval())[key], value), key


def test_a_0_1_lstm_checkpoint_config_loads(tmp_path: Path) -> None:
    old = make_bundle("lstm")
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    payload = torch.load(path, weights_only=True)
    config = payload["config"]
    config["feature_dim"], config["hidden_dim"] = config.pop("state_dim"), config.pop("lstm_hidden_dim")
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    assert loaded.config == old.config  # type: ignore[attr-defined]
    for key, value in outputs(old.eval()).items():
        assert torch.equal(outputs(loaded.eval())[key], value), key


def test_a_checkpoint_from_before_the_contribution_options_loads_its_architecture(
    tmp_path: Path,
) -> None:
    # Checkpoints saved before the contribution options had a predictor head_hidden wide with
    # Dropout(0.1) and feed-forward blocks 4 x embed_dim wide, and the stored config had no
    # contribution_* or transformer_ff_mult keys. Such a checkpoint must rebuild that
    # architecture (the weights would not fit today's default widths).
    old = make_bundle("transformer", contribution_hidden=16, contribution_dropout=0.1,
                      transformer_ff_mult=4)
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    payload = torch.load(path, weights_only=True)
    for key in ("contribution_hidden", "contribution_dropout", "transformer_ff_mult"):
        del payload["config"][key]
    # and with slotformer 0.1's names for the observation and LSTM widths
    config = payload["config"]
    config["feature_dim"], config["hidden_dim"] = config.pop("state_dim"), config.pop("lstm_hidden_dim")
    torch.save(payload, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored 0.1 config loads without a warning
        loaded = load_checkpoint(path)
    assert loaded.config.contribution_hidden == 16  # type: ignore[attr-defined]
    assert loaded.config.contribution_dropout == 0.1  # type: ignore[attr-defined]
    assert loaded.config == old.config  # type: ignore[attr-defined]
    for key, value in outputs(old.eval()).items():
        assert torch.equal(outputs(loaded.eval())[key], value), key


# ---------------------------------------------------------------------------------------
# action spaces, observation layouts and parameter layouts
# ---------------------------------------------------------------------------------------


def custom_space(num_slots: int = 3) -> ActionSpace:
    """op(3), a pointer 'target' (N) relevant for ops 1 and 2, tool(4) relevant for op 1 only
    (canonical 0 otherwise)."""
    return ActionSpace(
        heads=(
            HeadSpec("op", 3),
            HeadSpec("target", num_slots, frozenset({1, 2})),
            HeadSpec("tool", 4, frozenset({1}), canonical_action=0),
        ),
        op_head="op",
        pointer_head="target",
    )


CUSTOM_LAYOUT = {"num_slot_types": 5, "base_dim": 4, "slot_dim": 6}


def test_a_custom_action_space_and_layout_reload_into_an_identical_policy(
    kind: str, tmp_path: Path
) -> None:
    policy = make_bundle(kind, seed=2, action_space=custom_space(), **CUSTOM_LAYOUT)
    assert policy.state_dim == 4 + 3 * 6
    path = save_checkpoint(tmp_path / "custom.pt", policy)
    stored = read_checkpoint(path)
    assert stored["format_version"] == CHECKPOINT_FORMAT_VERSION == 1  # an optional key, no bump
    assert stored["action_space"] == custom_space().to_dict()  # plain data (weights_only)
    assert {k: stored["config"][k] for k in CUSTOM_LAYOUT} == CUSTOM_LAYOUT
    loaded = load_checkpoint(path)
    assert loaded.action_space == policy.action_space == custom_space()  # type: ignore[attr-defined]
    assert loaded.config == policy.config  # type: ignore[attr-defined]
    assert loaded.network.blueprint_embedding.embedding.num_embeddings == 5 + 1
    assert_same_outputs(outputs(loaded), outputs(policy))
    for key, value in outputs(policy.eval(), seed=3).items():
        assert torch.equal(outputs(loaded.eval(), seed=3)[key], value), key


def test_a_custom_action_space_loads_onto_another_grid(tmp_path: Path) -> None:
    policy = make_bundle("transformer", action_space=custom_space(), **CUSTOM_LAYOUT)
    path = save_checkpoint(tmp_path / "custom.pt", policy)
    wide = load_checkpoint(path, slot_config=SlotConfig.for_grid(2, 3))
    assert wide.action_space == custom_space(6)  # type: ignore[attr-defined]
    assert wide.state_dim == 4 + 6 * 6
    features, blueprint, masks = make_inputs(wide)
    assert wide.get_action(features, blueprint, masks).actions["target"].max() < 6


def test_a_checkpoint_without_an_action_space_loads_the_default_one(
    kind: str, tmp_path: Path
) -> None:
    # Checkpoints written before the action space was stored (and those of bundles without
    # one) hold no "action_space" entry: they load with the seed-lifecycle default.
    policy = make_bundle(kind, seed=3)
    path = save_checkpoint(tmp_path / "old.pt", policy)
    payload = torch.load(path, weights_only=True)
    assert payload.pop("action_space") == ActionSpace.default(3).to_dict()
    torch.save(payload, path)
    assert "action_space" not in read_checkpoint(path)
    loaded = load_checkpoint(path)
    assert loaded.action_space == ActionSpace.default(3)  # type: ignore[attr-defined]
    assert_same_outputs(outputs(loaded), outputs(policy))


def test_a_malformed_stored_action_space_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "p.pt", make_bundle("lstm"))
    payload = torch.load(path, weights_only=True)
    payload["action_space"] = ["op", "slot"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"p\.pt.*action_space of type list, expected a dict"):
        read_checkpoint(path)
    payload["action_space"] = ActionSpace.default(3).to_dict()
    payload["action_space"]["heads"][1]["canonical_action"] = "NOOP"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"malformed action space.*'canonical_action' must be"):
        load_checkpoint(path)
    payload["action_space"] = ActionSpace.default(4).to_dict()  # 4 pointer choices, 3 slot ids
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="pointer head 'slot' has 4 choices, but 3 slot ids"):
        load_checkpoint(path)


def test_an_older_parameter_layout_is_a_clear_checkpoint_error(kind: str, tmp_path: Path) -> None:
    # An older slotformer's weights under today's config: the transformer's value heads read
    # [temporal, global, CLS] before 2f8ae4f (now the LSTM output only); a removed and a renamed
    # parameter stand for other layout changes.
    policy = make_bundle(kind)
    path = save_checkpoint(tmp_path / "old.pt", policy)
    payload = torch.load(path, weights_only=True)
    state_dict = payload["state_dict"]
    weight = state_dict["state_value_head.0.weight"]
    state_dict["state_value_head.0.weight"] = torch.zeros(weight.shape[0], weight.shape[1] + 32)
    state_dict["old_head.weight"] = state_dict.pop("q_head.0.bias")
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message.startswith(repr(str(path)))
    assert "written by an older slotformer with a different parameter layout" in message
    assert "1 missing parameters ['q_head.0.bias']" in message
    assert "1 unexpected parameters ['old_head.weight']" in message
    assert f"state_value_head.0.weight: stored [{weight.shape[0]}, {weight.shape[1] + 32}]" in message
    assert "Error(s) in loading state_dict" not in message  # not torch's raw error


def test_map_location_on_a_device_this_torch_lacks_names_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to say the (intact) file "is truncated or corrupt".
    path = save_checkpoint(tmp_path / "policy.pt", create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for location in ("cuda", torch.device("cuda", 1)):
        with pytest.raises(ValueError, match=r"no usable 'cuda' device .*map_location='cpu'") as info:
            load_checkpoint(path, map_location=location)
        assert "corrupt" not in str(info.value)
    assert load_checkpoint(path, map_location="cpu").network_type == "lstm"
