"""Versioned, atomic, safe-to-load policy checkpoints.

A checkpoint is a ``torch.save`` archive of plain data only (dicts, lists, str, int, float,
bool, None, tensors), so it loads with ``torch.load(..., weights_only=True)`` and never runs
pickled code::

    {"format_version": 1, "library_version": "0.1.0", "policy_type": "transformer",
     "config": {...constructor arguments...}, "slot_ids": ["r0c0", ...],
     "action_space": {...ActionSpace.to_dict()...},
     "state_dict": {...}, "extra": {...caller data...}}

``action_space`` is optional: a checkpoint without it (an older one, or a bundle's without
an ``action_space``) loads with the default (seed-lifecycle) action space. The observation
layout (``base_dim``, ``slot_dim``) and the slot-type vocabulary (``num_slot_types``) are
fields of ``config``.

`save_checkpoint` writes a temporary file in the target's folder, fsyncs it and renames it
over the target: an interrupted save leaves the previous checkpoint and no partial file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import secrets
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import DEFAULT_BASE_DIM, SlotConfig
from slotformer.networks.core import without_compile_prefix
from slotformer.policy.bundles import ActorCriticBundle
from slotformer.policy.factory import _accepted_arguments
from slotformer.policy.protocol import PolicyBundle
from slotformer.policy.registry import get_policy_class, list_policies

CHECKPOINT_FORMAT_VERSION = 1
"""The format `save_checkpoint` writes; `load_checkpoint` reads this version and older."""

_REQUIRED_KEYS = ("format_version", "library_version", "policy_type", "config", "slot_ids",
                  "state_dict")
_ACTION_SPACE_KEY = "action_space"  # optional: absent = the default action space
_EXPECTED = "expected a checkpoint written by slotformer.save_checkpoint (a torch zip archive)"

MapLocation = torch.device | str | Callable[..., Any] | dict[str, str] | None


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, unsafe, too new, or for another
    policy or grid. The message names the path, what was found and what was expected."""


def save_checkpoint(
    path: str | os.PathLike[str], policy: PolicyBundle, extra: Mapping[str, Any] | None = None
) -> Path:
    """Atomically write ``policy`` (config, slot ids, action space and weights) to ``path``
    (returned; its folder must exist).

    ``policy`` must expose a ``config`` dataclass or dict (``TypeError`` otherwise); ``extra``
    is caller data of plain data and tensors only (``ValueError`` otherwise), e.g. the step
    count or an optimizer's state dict, read back with `read_checkpoint`.

    Example:
        >>> import tempfile, pathlib
        >>> from slotformer.policy import create_policy
        >>> policy = create_policy("lstm", lstm_hidden_dim=16)
        >>> with tempfile.TemporaryDirectory() as tmp_dir:
        ...     path = save_checkpoint(pathlib.Path(tmp_dir) / "policy.pt", policy, extra={"step": 10})
        ...     load_checkpoint(path).network_type
        'lstm'
    """
    config = getattr(policy, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise TypeError(f"save_checkpoint needs a slotformer bundle exposing .config (a config "
                        f"dataclass or a dict), got {type(policy).__name__}")
    extra_data: dict[str, Any] = dict(extra) if extra is not None else {}
    _check_plain_data(extra_data, "extra")
    from slotformer import __version__  # late: slotformer/__init__ may import this module
    payload: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION, "library_version": __version__,
        "policy_type": policy.network_type, "config": config,
        "slot_ids": list(policy.slot_config.slot_ids), "state_dict": policy.state_dict(),
        "extra": extra_data,
    }
    action_space = getattr(policy, "action_space", None)
    if isinstance(action_space, ActionSpace):
        payload[_ACTION_SPACE_KEY] = action_space.to_dict()
    _check_plain_data(payload["config"], "policy.config")
    _check_plain_data(payload.get(_ACTION_SPACE_KEY), "policy.action_space")
    target = Path(path)
    temporary = target.with_name(f"{target.name}.tmp-{secrets.token_hex(8)}")
    try:
        with open(temporary, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:  # an error or KeyboardInterrupt: the previous checkpoint stays
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename durable (Windows cannot open a folder)
        descriptor = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return target


def read_checkpoint(path: str | os.PathLike[str], map_location: MapLocation = None) -> dict[str, Any]:
    """Load and validate a checkpoint's contents (the module's format) without building the
    policy; ``FileNotFoundError`` without a file, ``CheckpointError`` for an unreadable,
    truncated, corrupt or unsafe file, a newer format or missing or malformed entries."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(source)!r}")
    if isinstance(map_location, str | torch.device):
        device_type = torch.device(map_location).type
        backend = getattr(torch, device_type, None)
        if device_type not in ("cpu", "meta") and not (backend and backend.is_available()):
            raise ValueError(
                f"map_location={map_location!r}, but this PyTorch has no usable "
                f"{device_type!r} device (torch.{device_type}.is_available() is False); load "
                f"with map_location='cpu' (the file {str(source)!r} was not read)")
    payload, problem, error = _load(source, map_location)
    if problem:
        raise _refused(source, problem) from error
    return dict(payload)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: MapLocation = None,
    slot_config: SlotConfig | None = None, *, policy_type: str | None = None,
) -> PolicyBundle:
    """Rebuild the policy saved at ``path`` (uncompiled, in train mode, with the saved dtype,
    config and action space or the default one) and load its weights.

    Args:
        map_location: as in ``torch.load``; a device (or device string) also places the
            bundle there. None = the device the weights were saved from.
        slot_config: the grid to load onto (the pointer head is resized to it); None = the
            saved grid. Another grid only for a policy whose weights do not depend on N.
        policy_type: the expected policy type; a checkpoint of another type is refused.

    Raises ``FileNotFoundError`` and ``CheckpointError`` as `read_checkpoint`, and
    ``CheckpointError`` for another policy type or grid, a malformed stored action space, or
    weights that do not fit the policy the stored config builds.

    Example::

        policy = load_checkpoint("policy.pt", map_location="cpu")
        wide = load_checkpoint("policy.pt", slot_config=SlotConfig.for_grid(4, 4))  # transformer
    """
    source = Path(path)
    payload = read_checkpoint(source, map_location=map_location)
    stored_type: str = payload["policy_type"]
    if policy_type is not None and stored_type != policy_type:
        raise _refused(source, f"holds a {stored_type!r} policy, expected a {policy_type!r} one; "
                       f"a {stored_type!r} checkpoint cannot be loaded as {policy_type!r} (their "
                       "weights differ)")
    cls = get_policy_class(stored_type)
    saved_slots = SlotConfig(tuple(payload["slot_ids"]))
    config_class = getattr(cls, "config_class", None)
    config = _with_legacy_defaults(stored_type, dict(payload["config"]), config_class)
    if slot_config is not None and slot_config != saved_slots:
        if not getattr(cls, "runs_on_any_grid", False):
            raise _refused(source, f"was saved for slots {list(saved_slots.slot_ids)} but "
                           f"slot_config has {list(slot_config.slot_ids)}; a {stored_type!r} "
                           "policy's weights are sized by its slots, so it loads only onto the "
                           "saved slot ids (only a 'transformer' policy loads onto another grid)")
        # The observation width on the new grid: the same base block and per-slot width.
        key = "state_dim" if config_class is not None else "feature_dim"
        base_dim = int(config.get("base_dim", DEFAULT_BASE_DIM))
        slot_total = int(config[key]) - base_dim
        if slot_total % saved_slots.num_slots:
            raise _refused(source, f"holds {key}={config[key]}, which does not split into "
                           f"base_dim={base_dim} plus {saved_slots.num_slots} equal slot blocks")
        config[key] = base_dim + slot_config.num_slots * (slot_total // saved_slots.num_slots)
    target_slots = slot_config if slot_config is not None else saved_slots
    action_space = _stored_action_space(payload, saved_slots, target_slots, source)
    space_kwargs: dict[str, Any] = {}
    if action_space is not None and (config_class is not None
                                     or "action_space" in _accepted_arguments(cls)):
        space_kwargs["action_space"] = action_space
    try:
        if config_class is not None:  # slotformer's bundles: they hold a config dataclass
            policy: PolicyBundle = cls(slot_config=target_slots, config=config_class(**config),
                                       **space_kwargs)
        else:  # a bundle registered by a user: its stored constructor arguments
            policy = cls(slot_config=target_slots, **config, **space_kwargs)
    except (TypeError, ValueError) as error:
        space = "" if action_space is None else f" and action space {payload[_ACTION_SPACE_KEY]}"
        raise _refused(source, f"holds a config {config}{space} that does not build a "
                       f"{stored_type!r} policy with this slotformer: {error}") from error
    state_dict: dict[str, Any] = payload["state_dict"]
    # A flat checkpoint whose contribution predictor has a Linear at index 3 has the retired
    # head layout (a second Dropout, blueprint head H -> H/2 -> H/2 -> 13): no exact conversion.
    if stored_type == "lstm" and "contribution_predictor.3.weight" in state_dict:
        raise _refused(source, "holds a flat ('lstm') policy saved by an earlier slotformer, "
                       "before the flat network's heads took the reference network's layout "
                       "(blueprint head H -> H -> H/2 -> 13, contribution predictor with a "
                       "LayerNorm); this slotformer cannot load it: load it with the slotformer "
                       "that saved it, or retrain")
    reference = next((t for t in state_dict.values() if t.is_floating_point()), None)
    if reference is not None:
        policy.to(torch.device(map_location) if isinstance(map_location, str | torch.device)
                  else reference.device)
        if isinstance(policy, ActorCriticBundle):
            policy.to(dtype=reference.dtype)
    mismatch = _parameter_layout_mismatch(policy.state_dict(), state_dict)
    if mismatch:
        raise _refused(source, f"was written by an older slotformer with a different parameter "
                       f"layout: its weights do not fit the {stored_type!r} policy its own "
                       f"config builds with this slotformer ({mismatch}). slotformer does not "
                       "convert weights between parameter layouts; load it with the slotformer "
                       f"that wrote it (version {payload['library_version']}), or retrain")
    try:
        policy.load_state_dict(state_dict, strict=True)
    except ValueError as error:
        raise _refused(source, f"holds weights that do not fit the {stored_type!r} policy built "
                       f"from its config: {error}") from error
    return policy


# ---------------------------------------------------------------------------------- helpers
def _stored_action_space(
    payload: Mapping[str, Any], saved: SlotConfig, target: SlotConfig, source: Path
) -> ActionSpace | None:
    """The stored action space, its pointer head resized to ``target``; None if none is stored."""
    data = payload.get(_ACTION_SPACE_KEY)
    if data is None:
        return None
    try:
        space = ActionSpace.from_dict(data)
    except ValueError as error:
        raise _refused(source, f"holds a malformed action space: {error}") from error
    if space.pointer_head is not None and space.num_slots != saved.num_slots:
        raise _refused(source, f"holds an action space whose pointer head {space.pointer_head!r} "
                       f"has {space.num_slots} choices, but {saved.num_slots} slot ids "
                       f"{list(saved.slot_ids)}")
    if space.pointer_head is not None and target.num_slots != saved.num_slots:
        space = space.with_num_slots(target.num_slots)
    return space


def _parameter_layout_mismatch(expected: Mapping[str, Any], stored: Mapping[str, Any]) -> str:
    """What differs between two state dicts' keys and shapes ("" = they fit)."""
    stored = without_compile_prefix(stored)
    reshaped = [
        f"{k}: stored {list(stored[k].shape)}, expected {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(stored))
        if isinstance(stored[k], Tensor) and isinstance(expected[k], Tensor)
        and stored[k].shape != expected[k].shape
    ]
    found = (("missing parameters", sorted(set(expected) - set(stored))),
             ("unexpected parameters", sorted(set(stored) - set(expected))),
             ("of another shape", reshaped))
    return "; ".join(f"{len(items)} {label} {items[:5]}" for label, items in found if items)


def _with_legacy_defaults(
    policy_type: str, config: dict[str, Any], config_class: type | None
) -> dict[str, Any]:
    """A stored config as the config fields, building the architecture it was saved with:
    slotformer 0.1 stored ``feature_dim`` and ``hidden_dim`` (now ``state_dim`` and
    ``lstm_hidden_dim``); a transformer config without ``contribution_hidden`` has a
    contribution predictor ``head_hidden`` wide with ``Dropout(0.1)`` (defaults: 64, 0.0)
    and feed-forward blocks 4 x ``embed_dim`` wide (default 2)."""
    if config_class is not None and "hidden_dim" in config:
        renames = {"feature_dim": "state_dim", "hidden_dim": "lstm_hidden_dim"}
        config = {renames.get(key, key): value for key, value in config.items()}
    if policy_type == "transformer" and "contribution_hidden" not in config:
        config["contribution_hidden"] = config.get("head_hidden", 256)
        config.setdefault("contribution_dropout", 0.1)
        config.setdefault("transformer_ff_mult", 4)  # added with them; 4 wide before
    return config


def _refused(source: Path, problem: str) -> CheckpointError:
    """The error for the checkpoint at ``source``: its path, then what is wrong with it."""
    return CheckpointError(f"{str(source)!r} {problem}")


def _load(source: Path, map_location: MapLocation) -> tuple[Any, str, BaseException | None]:
    """The payload at ``source``, what is wrong with it ("" = nothing) and the error that
    showed it."""
    try:
        is_zip = zipfile.is_zipfile(source)
    except (zipfile.BadZipFile, NotImplementedError, ValueError):  # a damaged (zip64) end record
        is_zip = False
    if not is_zip:
        return None, (f"is not a complete torch zip archive ({source.stat().st_size} bytes): it "
                      f"is truncated, corrupt or not a checkpoint; {_EXPECTED}"), None
    # torch.load does not verify the archive's CRC-32s (a flipped bit would load as a wrong
    # weight): check every record first. NotImplementedError: a damaged compression method.
    try:
        with zipfile.ZipFile(source) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        return None, (f"could not be read ({type(error).__name__}: {error}): it is truncated "
                      f"or corrupt; {_EXPECTED}"), error
    if damaged is not None:
        return None, (f"is corrupt: its record {damaged!r} fails its CRC-32 check (damaged on "
                      f"disk or in transfer); nothing was loaded; {_EXPECTED}"), None
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the global or class it refused; any other failure
        # (an unknown opcode, a short record) is damage, not an unsafe file.
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported" in line]
        reason = lines[0] if lines else str(error).splitlines()[0]
        if any(s in str(error) for s in ("GLOBAL", "allowlisted", "add_safe_globals", "reduce")):
            return None, (f"was refused: loading it needs arbitrary unpickling (torch.load("
                          f"weights_only=True) failed: {reason}), which could run code from the "
                          f"file; {_EXPECTED}, which holds only plain data and tensors"), error
        problem = f"could not be read (its pickle record is corrupt: {reason}); {_EXPECTED}"
        return None, problem, error
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError, ...
        first_line = str(error).splitlines()[0] if str(error) else "no message"
        return None, (f"could not be read ({type(error).__name__}: {first_line}): it is "
                      f"truncated or corrupt; {_EXPECTED}"), error
    return payload, _payload_problem(payload), None


def _payload_problem(payload: Any) -> str:
    """What is wrong with a loaded checkpoint's contents ("" = nothing)."""
    if not isinstance(payload, dict) or "format_version" not in payload:
        found = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        return (f"is not a slotformer checkpoint: found {found}, expected a dict with keys "
                f"{list(_REQUIRED_KEYS)}")
    version = payload["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return (f"has format_version={version!r}, expected a positive int "
                f"(<= {CHECKPOINT_FORMAT_VERSION})")
    if version > CHECKPOINT_FORMAT_VERSION:
        return (f"has format version {version} (written by slotformer "
                f"{payload.get('library_version', '?')}), newer than the newest this slotformer "
                f"reads ({CHECKPOINT_FORMAT_VERSION}); upgrade slotformer to load it")
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        return f"lacks entries {missing}; expected {list(_REQUIRED_KEYS)}"
    policy_type, slot_ids, config = payload["policy_type"], payload["slot_ids"], payload["config"]
    state_dict, action_space = payload["state_dict"], payload.get(_ACTION_SPACE_KEY)
    if policy_type not in list_policies():
        return (f"holds policy type {policy_type!r}, which is not registered; registered "
                f"policies: {list_policies()}")
    if not isinstance(slot_ids, list | tuple) or not all(isinstance(s, str) for s in slot_ids):
        return f"has slot_ids={slot_ids!r}, expected a list of str"
    if not isinstance(config, dict):
        return f"has config of type {type(config).__name__}, expected a dict of constructor arguments"
    if not isinstance(state_dict, dict) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        return "has a state_dict that is not a dict of tensors"
    if action_space is not None and not isinstance(action_space, dict):
        return (f"has action_space of type {type(action_space).__name__}, expected a dict "
                "(ActionSpace.to_dict()) or no entry")
    return ""


def _check_plain_data(value: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back."""
    if value is None or isinstance(value, str | int | float | bool | Tensor | torch.dtype):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise ValueError(f"{where} has key {key!r} of type {type(key).__name__}; "
                                 f"expected str or int keys")
            _check_plain_data(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_plain_data(item, f"{where}[{index}]")
    else:
        raise ValueError(f"{where} is a {type(value).__name__}; a checkpoint holds only dicts, "
                         "lists, tuples, str, int, float, bool, None and tensors (so that it "
                         "loads with weights_only=True)")


__all__ = ["CHECKPOINT_FORMAT_VERSION", "CheckpointError", "load_checkpoint", "read_checkpoint",
           "save_checkpoint"]
