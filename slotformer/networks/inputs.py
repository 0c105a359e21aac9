"""The networks' one boundary: a call's arguments checked once and normalised into a record.

Every public entry point of a network (`forward`, `get_action`, `evaluate_actions`,
`predict_contributions`) passes its arguments through `read_inputs`, which checks them and
returns a frozen `PolicyInputs`: observations ``[B, T, D]``, blueprint indices and slot
activity ``[B, T, N]``, every head's mask ``[B, T, n]``, the slot-by-op mask
``[B, T, num_ops, N]``, stored actions ``[B, T]``, floors and the recurrent state. The
layers inside trust that record and check nothing again.

Checks that read metadata (type, dtype, device, shape) always run and cost no host sync;
checks that read values (NaN/inf, out-of-range actions) run only while validation is on
(`slotformer.validation`).

Shapes: ``B`` batch, ``T`` time, ``D`` state features, ``N`` slots, ``n`` a head's choices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from slotformer.actions import ActionSpace, PaddedHeads
from slotformer.config import ObservationLayout, SlotConfig
from slotformer.validation import describe_shape, expect, validation_enabled

Hidden = tuple[Tensor, Tensor]
"""Recurrent state ``(h, c)``, each ``[lstm_layers, B, H]``."""
ProbabilityFloor = float | Mapping[str, float] | None
"""A minimum probability per valid action: one float for every head, or per head name."""
_Value = TypeVar("_Value")


@dataclass(frozen=True)
class SlotObservation:
    """A structured observation: the base block and the slots as separate tensors.

    The networks take it wherever they take a flat ``state``; pass ``blueprint_indices=None``
    then (the slot types ride here). A flat vector is one way to build it
    (`from_flat`, views: no copy); the Slot Transformer reads ``base`` and ``slots``
    directly, the flat LSTM concatenates them (its input is the flat vector).

    Attributes:
        base: ``[B, T, G]`` (or ``[B, G]`` where a call takes one step), G = ``base_dim``.
        slots: ``[B, T, N, F]`` (or ``[B, N, F]``), F = ``slot_dim``.
        slot_types: int64 or int32 ``[B, T, N]`` (or ``[B, N]``): each slot's type in
            ``[0, num_slot_types)``, -1 = empty. None: every slot has the null type, and
            activity comes from ``active``.
        active: optional bool ``[B, T, N]``: which slots are active (default: type != -1).

    Example:
        >>> from slotformer import SlotTransformerActorCritic
        >>> net = SlotTransformerActorCritic(state_dim=23 + 3 * 31)
        >>> obs = SlotObservation(torch.randn(2, 4, 23), torch.randn(2, 4, 3, 31),
        ...                       slot_types=torch.tensor([0, 5, -1]).expand(2, 4, 3))
        >>> net(obs, None)["slot_logits"].shape
        torch.Size([2, 4, 3])
    """

    base: Tensor
    slots: Tensor
    slot_types: Tensor | None = None
    active: Tensor | None = None

    @classmethod
    def from_flat(
        cls,
        state: Tensor,
        layout: ObservationLayout,
        slot_types: Tensor | None = None,
        active: Tensor | None = None,
    ) -> SlotObservation:
        """Views of a flat ``state [..., base_dim + N * slot_dim]`` (no copy)."""
        base, slots = layout.split(state)
        return cls(base, slots, slot_types, active)

    def flat(self) -> Tensor:
        """The flat vector ``[..., G + N * F]`` (a copy)."""
        return torch.cat([self.base, self.slots.flatten(-2)], dim=-1)


@dataclass(frozen=True)
class SlotContext:
    """The grid a call runs on: its slot config, observation layout and position ids.

    ``layout`` is None for a flat network whose ``state_dim`` is not ``base_dim + N *
    slot_dim`` (it reads the vector whole and takes no structured observations)."""

    slot_config: SlotConfig
    layout: ObservationLayout | None
    state_dim: int
    action_space: ActionSpace
    row_ids: Tensor  # [N]
    col_ids: Tensor  # [N]
    padded_heads: PaddedHeads  # the heads the policy step scores together

    @property
    def num_slots(self) -> int:
        return self.slot_config.num_slots


@dataclass(frozen=True)
class PolicyInputs:
    """One call's arguments, checked and normalised (what the inner layers trust).

    Attributes:
        ctx: the grid the call runs on.
        flat: the flat observations ``[B, T, D]`` when the call passed them, else None.
        base: ``[B, T, G]`` and ``slots`` ``[B, T, N, F]``: the observation's two blocks
            (views of ``flat`` when it was passed flat); None when the network has no
            layout (a flat network with a free ``state_dim``).
        blueprint_indices: int64 ``[B, T, N]``, -1 = empty slot.
        active: bool ``[B, T, N]``, True = an active slot.
        hidden: the recurrent state at the start, or None (zeros).
        masks: every head's bool mask ``[B, T, n]`` (True = valid); empty when the call
            takes no masks.
        floors: the probability floor per head name (absent = no floor).
        slot_by_op: bool ``[B, T, num_ops, N]`` or None.
        actions: stored int64 actions ``[B, T]`` per head name, or None.
        episode_starts: bool ``[B, T]`` (True = the recurrent state is zeroed before that
            step), or None.
    """

    ctx: SlotContext
    flat: Tensor | None
    base: Tensor | None
    slots: Tensor | None
    blueprint_indices: Tensor
    active: Tensor
    hidden: Hidden | None
    masks: dict[str, Tensor]
    floors: dict[str, float]
    slot_by_op: Tensor | None = None
    actions: dict[str, Tensor] | None = None
    episode_starts: Tensor | None = None

    @property
    def state(self) -> Tensor:
        """The flat observations ``[B, T, D]`` (concatenated from the blocks, a copy, when
        the call passed a `SlotObservation`)."""
        if self.flat is not None:
            return self.flat
        assert self.base is not None and self.slots is not None
        return torch.cat([self.base, self.slots.flatten(-2)], dim=-1)


def read_inputs(
    ctx: SlotContext,
    parameter: Tensor,
    state: object,
    blueprint_indices: object,
    *,
    name: str = "state",
    allow_2d: bool = False,
    one_step: bool = False,
    active_mask: object = None,
    hidden: Hidden | None = None,
    masks: Mapping[str, Tensor | None] | None = None,
    named_masks: Mapping[str, Tensor | None] | None = None,
    with_masks: bool = True,
    slot_by_op: object = None,
    actions: object = None,
    probability_floor: ProbabilityFloor = None,
    episode_starts: object = None,
) -> PolicyInputs:
    """Check a call's arguments once and return them as a `PolicyInputs`.

    Args:
        ctx: the grid (`ActorCriticCore.slot_context`).
        parameter: one of the network's parameters (its device and dtype are the rule).
        state: ``[B, T, D]`` (or ``[B, D]`` with ``allow_2d``: T = 1), or a
            `SlotObservation` of the same leading shape.
        blueprint_indices: int64 or int32 ``[B, T, N]`` (``[B, N]`` for 2-D state); None
            with ``active_mask`` or a `SlotObservation`.
        name: what errors call the observations (``"state"`` or ``"states"``).
        allow_2d: accept ``[B, D]`` observations.
        one_step: T must be 1 (`get_action`).
        active_mask: explicit slot activity ``[B, T, N]`` bool.
        hidden: the recurrent state (checked by the LSTM layer, which owns its shape).
        masks: masks by head name; ``named_masks``: the named ``{head}_mask`` arguments.
        with_masks: the call takes masks (False: `predict_contributions`).
        slot_by_op: bool ``[B, num_ops, N]`` or ``[B, T, num_ops, N]``.
        actions: stored int64 ``[B, T]`` per head name (``[B]`` when T = 1).
        probability_floor: a float for every head, or a mapping head name -> float.
        episode_starts: bool ``[B, T]`` (``[B]`` when T = 1): zero the recurrent state
            before these steps.

    Raises:
        ValueError: an argument of the wrong type, dtype, device, shape or value; the message
            names it, what it got and what was expected.
        KeyError: ``actions`` lacks a head.
    """
    flat, base, slots, blueprint, active, given_shapes = _observation(
        ctx, parameter, state, blueprint_indices, active_mask, name, allow_2d
    )
    B, T = blueprint.shape[:2]
    if one_step and T != 1:
        raise ValueError(
            f"get_action takes one time step: {name} has shape {given_shapes} "
            f"(T={T}), expected [B, D] or [B, 1, D]"
        )
    device = blueprint.device
    head_masks = _masks(ctx, B, T, device, masks, named_masks or {}) if with_masks else {}
    by_op = None if slot_by_op is None else _slot_by_op(ctx, slot_by_op, B, T, device)
    stored = None if actions is None else _actions(ctx, actions, B, T, device)
    starts = None if episode_starts is None else _episode_starts(episode_starts, B, T, device)
    # Rollout tensors made under inference mode cannot be saved for backward: one copy here,
    # for every argument at once (observations included: a trainer may store them from there).
    flat, base, slots, blueprint, active, hidden, head_masks, by_op, stored = as_autograd_input(
        (flat, base, slots, blueprint, active, hidden, head_masks, by_op, stored)
    )
    if flat is not None and ctx.layout is not None:
        base, slots = ctx.layout.split(flat)  # views of the (possibly copied) flat tensor
    return PolicyInputs(
        ctx=ctx,
        flat=flat,
        base=base,
        slots=slots,
        episode_starts=starts,
        blueprint_indices=blueprint,
        active=active,
        hidden=hidden,
        masks=head_masks,
        floors=_floors(ctx, probability_floor),
        slot_by_op=by_op,
        actions=stored,
    )


def as_autograd_input(value: _Value) -> _Value:
    """``value`` with every tensor made under ``torch.inference_mode`` cloned into a normal one.

    Tensors made under inference mode (``get_action``'s outputs: actions, hidden state) cannot
    be saved for backward; a trainer feeding stored rollout tensors to a differentiable call
    should not have to know that. Tensors nested in tuples, mappings and `SlotObservation`s
    are handled (mappings come back as dicts); anything else is returned as is, for the
    callee's checks to name.

    Nothing is copied inside inference mode (a rollout: nothing is saved for backward) or while
    ``torch.compile`` traces (dynamo cannot trace ``is_inference()``; the policy bundles call
    this before entering a compiled network).
    """
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        return value
    return cast(_Value, _clone_inference_tensors(value))


def _clone_inference_tensors(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, SlotObservation):
        return SlotObservation(
            *(_clone_inference_tensors(getattr(value, f.name)) for f in fields(value))
        )
    if isinstance(value, tuple):
        return tuple(_clone_inference_tensors(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _clone_inference_tensors(v) for k, v in value.items()}
    return value


def _observation(
    ctx: SlotContext,
    parameter: Tensor,
    state: object,
    blueprint_indices: object,
    active_mask: object,
    name: str,
    allow_2d: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor, Tensor, tuple[int, ...]]:
    """The observation as ``flat [B, T, D]`` (when passed flat), ``base [B, T, G]`` and
    ``slots [B, T, N, F]`` (when passed structured; the caller splits a flat one),
    ``blueprint_indices`` int64 and ``active`` bool ``[B, T, N]``, and the shape the caller
    passed (errors quote it before a 2-D call gains T)."""
    structured = isinstance(state, SlotObservation)
    if structured:
        assert isinstance(state, SlotObservation)
        if blueprint_indices is not None:
            raise ValueError(
                "pass blueprint_indices=None with a SlotObservation: its slot_types are the "
                "slots' types"
            )
        if active_mask is not None:
            raise ValueError("pass active_mask=None with a SlotObservation: use its active field")
        lead = _structured_shape(ctx, parameter, state, allow_2d)
        blueprint_indices, active_mask = state.slot_types, state.active
        given_shape = (*lead, ctx.state_dim)
    else:
        first = _flat_shape(ctx, parameter, state, name, allow_2d)
        lead = first[:-1]
        given_shape = first
    two_d = len(lead) == 1
    B, T = lead[0], 1 if two_d else lead[1]
    if T == 0:
        raise ValueError(
            f"{name} has shape {given_shape} (T=0), expected at least one time step"
        )
    N = ctx.num_slots
    device = parameter.device
    arg = "slot_types" if structured else "blueprint_indices"
    per_step = (B, N) if two_d else (B, T, N)
    matching = f" ({'[B, N]' if two_d else '[B, T, N]'} with N={N} slots, matching {name} {given_shape})"
    if blueprint_indices is None:
        if active_mask is None and not structured:
            raise ValueError("pass blueprint_indices, or an explicit active_mask without them")
        blueprint_indices = torch.full(per_step, -1, dtype=torch.long, device=device)
        if active_mask is None:  # a SlotObservation without types or activity: all active
            active_mask = torch.ones(per_step, dtype=torch.bool, device=device)
    blueprint = expect(arg, blueprint_indices, shape=per_step, hint=matching)
    expect(arg, blueprint, dtype=[torch.long, torch.int32], device=device)
    if blueprint.dtype != torch.long:
        blueprint = blueprint.long()  # int32 indices (the reference accepts them): widened
    active = None
    if active_mask is not None:
        active = expect(
            "active" if structured else "active_mask", active_mask, device=device,
            dtype=torch.bool, shape=per_step,
        )
    flat: Tensor | None = None
    base: Tensor | None = None
    slots: Tensor | None = None
    if structured:
        assert isinstance(state, SlotObservation)
        base, slots = state.base, state.slots
        if two_d:
            base, slots = base.unsqueeze(1), slots.unsqueeze(1)
        observed: tuple[Tensor, ...] = (base, slots)
    else:
        assert isinstance(state, Tensor)
        flat = state.unsqueeze(1) if two_d else state
        observed = (flat,)
    if two_d:
        blueprint = blueprint.unsqueeze(1)
        active = None if active is None else active.unsqueeze(1)
    if validation_enabled():
        for part_name, part in zip(
            (f"{name}.base", f"{name}.slots") if structured else (name,), observed
        ):
            _check_finite(part_name, part)
    # Slot activity [B, T, N]: as given, else the slots with a type.
    return flat, base, slots, blueprint, blueprint >= 0 if active is None else active, given_shape


def _check_finite(name: str, value: Tensor) -> None:
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        n_nan = int(torch.isnan(value).sum())
        raise ValueError(
            f"{name} contains non-finite values: {n_nan} NaN and "
            f"{int(bad.sum()) - n_nan} inf (of {value.numel()} entries)"
        )


def _check_float(name: str, value: Tensor, parameter: Tensor) -> None:
    expect(name, value, device=parameter.device, hint=" (the network's device)")
    expect(
        name, value, floating=True,
        hint=f" ({parameter.dtype}); integer observations are rejected, not converted",
    )
    _check_state_dtype(name, value, parameter.dtype)


def _flat_shape(
    ctx: SlotContext, parameter: Tensor, state: object, name: str, allow_2d: bool
) -> tuple[int, ...]:
    """Check a flat ``state``; its shape ``(B, T, D)`` or ``(B, D)``."""
    state = expect(name, state)
    ranks = "[B, D] or [B, T, D]" if allow_2d else "[B, T, D]"
    two_d = allow_2d and state.dim() == 2
    if state.dim() != (2 if two_d else 3):
        raise ValueError(f"{name} has shape {describe_shape(state)}, expected {ranks}")
    if state.shape[-1] != ctx.state_dim:
        layout = ctx.layout
        parts = (
            f" (base_dim={layout.base_dim} + {layout.num_slots} slots x slot_dim={layout.slot_dim})"
            if layout is not None
            else ""
        )
        raise ValueError(
            f"{name} has shape {describe_shape(state)}: feature size {state.shape[-1]} does "
            f"not match state_dim={ctx.state_dim}{parts}"
        )
    _check_float(name, state, parameter)
    return tuple(state.shape)


def _structured_shape(
    ctx: SlotContext, parameter: Tensor, obs: SlotObservation, allow_2d: bool
) -> tuple[int, ...]:
    """Check a `SlotObservation`; its leading shape ``(B, T)`` or ``(B,)``."""
    layout = ctx.layout
    if layout is None:
        raise ValueError(
            f"this network takes flat observations only: its state_dim={ctx.state_dim} is "
            "not base_dim + N * slot_dim (build it with slot_dim= to take a SlotObservation)"
        )
    base = expect("state.base", obs.base)
    slots = expect("state.slots", obs.slots)
    two_d = allow_2d and base.dim() == 2
    lead = tuple(base.shape[:-1])
    expected_base = "[B, G]" if two_d else "[B, T, G]"
    if base.dim() != (2 if two_d else 3) or base.shape[-1] != layout.base_dim:
        raise ValueError(
            f"state.base has shape {describe_shape(base)}, expected {expected_base} with "
            f"G=base_dim={layout.base_dim}"
        )
    expect(
        "state.slots", slots, shape=(*lead, layout.num_slots, layout.slot_dim),
        hint=f" (state.base's leading shape {lead} + N={layout.num_slots} slots x "
        f"slot_dim={layout.slot_dim})",
    )
    _check_float("state.base", base, parameter)
    _check_float("state.slots", slots, parameter)
    if slots.dtype != base.dtype:
        raise ValueError(
            f"state.base and state.slots must share a dtype, got {base.dtype} and {slots.dtype}"
        )
    return lead


def _check_state_dtype(name: str, state: Tensor, parameter_dtype: torch.dtype) -> None:
    """Never convert: outside autocast the state has the parameters' dtype; under autocast
    also the autocast dtype (any other would fail deep inside, e.g. float64 in a bf16 matmul)."""
    if state.dtype == parameter_dtype:
        return
    device_type = state.device.type
    if not torch.is_autocast_enabled(device_type):
        raise ValueError(
            f"{name} has dtype {state.dtype} but the network's parameters are "
            f"{parameter_dtype}; convert with {name}.to({parameter_dtype}) (or run under autocast)"
        )
    autocast_dtype = torch.get_autocast_dtype(device_type)
    if state.dtype != autocast_dtype:
        raise ValueError(
            f"{name} has dtype {state.dtype}; under {autocast_dtype} autocast it must "
            f"be the parameters' {parameter_dtype} or {autocast_dtype}"
        )


def _masks(
    ctx: SlotContext,
    B: int,
    T: int,
    device: torch.device,
    masks: Mapping[str, Tensor | None] | None,
    named: Mapping[str, Tensor | None],
) -> dict[str, Tensor]:
    """Every head's mask as bool ``[B, T, n]``; None -> all valid, ``[B, n]`` -> over T."""
    space = ctx.action_space
    by_name: dict[str, Tensor | None] = {k: v for k, v in named.items() if v is not None}
    unused = sorted(f"{k}_mask" for k in by_name if k not in space.sizes)
    if unused:
        raise ValueError(
            f"{', '.join(unused)} given, but the action space has no such head; heads are "
            f"{list(space.head_names)}"
        )
    if masks is not None:
        unknown = sorted(set(masks) - set(space.head_names))
        if unknown:
            raise ValueError(
                f"masks names unknown heads {unknown}; heads are {list(space.head_names)}"
            )
        by_name.update(masks)
    out: dict[str, Tensor] = {}
    for head, n in space.sizes.items():
        mask = by_name.get(head)
        if mask is None:
            out[head] = torch.ones(B, T, n, dtype=torch.bool, device=device)
            continue
        arg = f"{head}_mask"
        expect(arg, mask, dtype=torch.bool, hint=" (True = valid)")
        expect(
            arg, mask, device=device, shape=[(B, T, n), (B, 1, n), (B, n)],
            hint=f" (head {head!r} has {n} choices; [B, 1, n] and [B, n] hold for every step)",
        )
        out[head] = mask if mask.dim() == 3 and mask.shape[1] == T else mask.view(B, 1, n).expand(B, T, n)
    return out


def _slot_by_op(ctx: SlotContext, slot_by_op: object, B: int, T: int, device: torch.device) -> Tensor:
    """``slot_by_op_mask`` as bool ``[B, T, num_ops, N]``."""
    ops, N = ctx.action_space.num_ops, ctx.num_slots
    mask = expect(
        "slot_by_op_mask", slot_by_op, dtype=torch.bool, device=device,
        shape=[(B, T, ops, N), (B, 1, ops, N), (B, ops, N)],
        hint=f" ([B, num_ops={ops}, N={N}] or [B, T or 1, num_ops, N])",
    )
    if mask.dim() == 4 and mask.shape[1] == T:
        return mask
    return mask.view(B, 1, ops, N).expand(B, T, ops, N)


def _episode_starts(starts: object, B: int, T: int, device: torch.device) -> Tensor:
    """``episode_starts`` as bool ``[B, T]`` (``[B]`` accepted when T = 1)."""
    flags = expect("episode_starts", starts, dtype=torch.bool, device=device, hint=" (True where an episode begins)")
    if flags.dim() == 1 and T == 1:
        flags = flags.unsqueeze(1)
    return expect("episode_starts", flags, shape=(B, T), hint=" ([B, T], matching the observations)")


def _actions(ctx: SlotContext, actions: object, B: int, T: int, device: torch.device) -> dict[str, Tensor]:
    """Stored actions as int64 ``[B, T]`` per head name, range-checked under validation."""
    if not isinstance(actions, Mapping):
        raise ValueError(
            f"actions must be a mapping head name -> int64 [B, T], got {type(actions).__name__}"
        )
    sizes = ctx.action_space.sizes
    missing = [n for n in sizes if n not in actions]
    if missing:
        raise KeyError(f"actions is missing heads {missing}; expected {list(sizes)}")
    out: dict[str, Tensor] = {}
    for head in sizes:
        arg = f"actions[{head!r}]"
        action = expect(arg, actions[head], device=device, hint=" (int64 [B, T])")
        if action.dim() == 1 and T == 1 and action.shape[0] == B:
            action = action.unsqueeze(1)
        out[head] = expect(arg, action, shape=(B, T), dtype=torch.long)
    if validation_enabled():
        # One host sync for every head; the values are read back only for an error.
        flags = torch.stack([((a < 0) | (a >= sizes[h])).any() for h, a in out.items()])
        for (head, action), has_bad in zip(out.items(), flags.tolist()):
            if has_bad:
                n = sizes[head]
                bad = sorted(set(action[(action < 0) | (action >= n)].tolist()))[:10]
                raise ValueError(f"actions[{head!r}] has values {bad} outside [0, {n})")
    return out


def _floors(ctx: SlotContext, probability_floor: ProbabilityFloor) -> dict[str, float]:
    """The floor per head name (heads without one are absent)."""
    if probability_floor is None:
        return {}
    heads = ctx.action_space.head_names
    if isinstance(probability_floor, Mapping):
        unknown = sorted(set(probability_floor) - set(heads))
        if unknown:
            raise ValueError(
                f"probability_floor names unknown heads {unknown}; heads are {list(heads)}"
            )
        floors = {k: float(v) for k, v in probability_floor.items()}
    else:
        floors = dict.fromkeys(heads, float(probability_floor))
    for head, value in floors.items():
        if not (0.0 <= value < 1.0) or math.isnan(value):
            raise ValueError(
                f"probability_floor for head {head!r} is {value}, expected a value in [0, 1)"
            )
    return floors
