"""The networks' one boundary: a call's arguments checked once and normalised into a record.

Every public entry point of a network (`forward`, `get_action`, `evaluate_actions`,
`predict_contributions`) passes its arguments through `read_inputs`, which checks them and
returns a frozen `PolicyInputs`; the layers inside trust that record and check nothing again.

Checks that read metadata (type, dtype, device, shape) always run and cost no host sync;
checks that read values (NaN/inf, out-of-range actions) run only while validation is on
(`slotformer.validation`).

Shapes: ``B`` batch, ``T`` time, ``D`` state features, ``N`` slots, ``n`` a head's choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from slotformer.actions import ActionSpace
from slotformer.config import ObservationLayout, SlotConfig
from slotformer.policy_step import PackedHeads, ProbabilityFloor, floors_by_head
from slotformer.validation import describe_shape, expect, validation_enabled

Hidden = tuple[Tensor, Tensor]
"""Recurrent state ``(h, c)``, each ``[lstm_layers, B, H]``."""
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
    """The grid a call runs on: its slot config, observation layout and position ids, with
    what the boundary checks against (built once per grid and device by the network).

    ``layout`` is None for a flat network whose ``state_dim`` is not ``base_dim + N *
    slot_dim`` (it reads the vector whole and takes no structured observations)."""

    slot_config: SlotConfig
    layout: ObservationLayout | None
    state_dim: int
    action_space: ActionSpace
    packed: PackedHeads  # the heads the policy step scores side by side
    row_ids: Tensor  # [N]
    col_ids: Tensor  # [N]
    num_slot_types: int  # blueprint_indices lie in [-1, num_slot_types)
    hidden_size: tuple[int, int]  # (lstm_layers, lstm_hidden_dim): (h, c) are [L, B, H]
    num_slots: int  # N


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
        squeeze: the call passed one step without its T axis (``[B, D]``): results drop it.
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
    squeeze: bool = False

    @property
    def state(self) -> Tensor:
        """The flat observations ``[B, T, D]`` (concatenated from the blocks, a copy, when
        the call passed a `SlotObservation`)."""
        if self.flat is not None:
            return self.flat
        assert self.base is not None and self.slots is not None
        return torch.cat([self.base, self.slots.flatten(-2)], dim=-1)


SLOT_BY_OP_KEY = "slot_by_op"
"""The optional entry of a masks dict holding the per-op slot masks ``[B, num_ops, N]``."""


def read_inputs(
    ctx: SlotContext,
    parameter: Tensor,
    state: object,
    blueprint_indices: object,
    *,
    name: str = "state",
    one_step: bool = False,
    active_mask: object = None,
    hidden: object = None,
    masks: Mapping[str, Tensor | None] | None = None,
    named_masks: Mapping[str, Tensor | None] | None = None,
    with_masks: bool = True,
    slot_by_op: object = None,
    actions: object = None,
    probability_floor: ProbabilityFloor = None,
    episode_starts: object = None,
) -> PolicyInputs:
    """Check a call's arguments once and return them as a `PolicyInputs`, whose fields
    give each argument's checked ``[B, T, ...]`` form.

    Args:
        ctx: the grid (`ActorCriticCore.slot_context`).
        parameter: one of the network's parameters (its device and dtype are the rule).
        state: ``[B, T, D]``, a `SlotObservation`, or one step ``[B, D]``: then every
            per-step argument comes without its T axis, and results drop it.
        blueprint_indices: int64 or int32; None with ``active_mask`` or a `SlotObservation`.
        name: what errors call the observations (``"state"`` or ``"states"``).
        one_step: T must be 1 (`get_action`).
        masks: by head name (None or a missing head = all valid), with an optional
            ``"slot_by_op"`` entry; ``named_masks``: the contract's ``{head}_mask`` arguments.
        with_masks: the call takes masks (False: `predict_contributions`).
        probability_floor: a float for every head, or a mapping head name -> float.
        active_mask, hidden, slot_by_op, actions, episode_starts: as the `PolicyInputs`
            fields they become (``slot_by_op`` may omit T, as a mask may: one for every step).

    Raises:
        ValueError: an argument of the wrong type, dtype, device, shape or value; the message
            names it, what it got and what was expected.
        KeyError: ``actions`` lacks a head.
    """
    flat, base, slots, blueprint, active, given_shape, squeeze = _observation(
        ctx, parameter, state, blueprint_indices, active_mask, name
    )
    B, T = blueprint.shape[:2]
    if one_step and T != 1:
        raise ValueError(
            f"get_action takes one time step: {name} has shape {given_shape} "
            f"(T={T}), expected [B, D] or [B, 1, D]"
        )
    device = blueprint.device
    by_name = dict(masks or {})
    by_op_name = "slot_by_op_mask"
    if SLOT_BY_OP_KEY in by_name:
        if slot_by_op is not None:
            raise ValueError(f"slot_by_op given twice: as masks[{SLOT_BY_OP_KEY!r}] and as "
                             f"slot_by_op_mask; pass one")
        slot_by_op, by_op_name = by_name.pop(SLOT_BY_OP_KEY), f"masks[{SLOT_BY_OP_KEY!r}]"
    head_masks = _masks(ctx, B, T, device, by_name, named_masks or {}, squeeze) if with_masks else {}
    ops, N = ctx.action_space.num_ops, ctx.num_slots
    by_op = None if slot_by_op is None else _per_step(
        by_op_name, slot_by_op, B, T, (ops, N), squeeze, device, torch.bool,
        f" (the valid slots per op: [B, num_ops={ops}, N={N}])")
    stored = None if actions is None else _actions(ctx, actions, B, T, device, squeeze)
    starts = None if episode_starts is None else expect(
        "episode_starts", episode_starts, dtype=torch.bool, device=device,
        shape=[(B, T), (B,)] if T == 1 else [(B, T)],  # [B] for one step
        hint=" (True where an episode begins, matching the observations)").view(B, T)
    checked_hidden = None if hidden is None else _hidden(ctx, hidden, B, parameter)
    # Rollout tensors made under inference mode cannot be saved for backward: one copy here,
    # for every argument at once (observations included: a trainer may store them from there).
    flat, base, slots, blueprint, active, checked_hidden, head_masks, by_op, stored = (
        as_autograd_input(
            (flat, base, slots, blueprint, active, checked_hidden, head_masks, by_op, stored)
        )
    )
    if flat is not None and (layout := ctx.layout) is not None:
        # ObservationLayout.split without its check (read_inputs checked D): views of flat.
        base = flat[..., : layout.base_dim]  # [B, T, G]
        slots = flat[..., layout.base_dim :].unflatten(-1, (layout.num_slots, layout.slot_dim))
    return PolicyInputs(
        ctx=ctx, flat=flat, base=base, slots=slots, blueprint_indices=blueprint,
        active=active, hidden=checked_hidden, masks=head_masks,
        floors=floors_by_head(ctx.action_space, probability_floor), slot_by_op=by_op,
        actions=stored, episode_starts=starts, squeeze=squeeze,
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
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor, Tensor, tuple[int, ...], bool]:
    """The observation as ``flat [B, T, D]`` (when passed flat), ``base [B, T, G]`` and
    ``slots [B, T, N, F]`` (when passed structured; the caller splits a flat one),
    ``blueprint_indices`` int64 and ``active`` bool ``[B, T, N]``, the shape the caller
    passed (errors quote it) and whether it was one step without a T axis."""
    structured = isinstance(state, SlotObservation)
    if isinstance(state, SlotObservation):
        if blueprint_indices is not None or active_mask is not None:
            given = "blueprint_indices" if blueprint_indices is not None else "active_mask"
            raise ValueError(f"pass {given}=None with a SlotObservation: its slot_types and "
                             "active fields are the slots' types and activity")
        lead = _structured_shape(ctx, parameter, state)
        blueprint_indices, active_mask = state.slot_types, state.active
        given_shape = (*lead, ctx.state_dim)
    else:
        given_shape = _flat_shape(ctx, parameter, state, name)
        lead = given_shape[:-1]
    two_d = len(lead) == 1
    B, T = lead[0], 1 if two_d else lead[1]
    if T == 0:
        raise ValueError(f"{name} has shape {given_shape} (T=0), expected at least one time step")
    N, device = ctx.num_slots, parameter.device
    arg = "slot_types" if structured else "blueprint_indices"
    per_step = (B, N) if two_d else (B, T, N)
    matching = f" ({'[B, N]' if two_d else '[B, T, N]'} with N={N} slots, matching {name} {given_shape})"
    if blueprint_indices is None:
        if active_mask is None and not structured:
            raise ValueError("pass blueprint_indices, or an explicit active_mask without them")
        blueprint_indices = torch.full(per_step, -1, dtype=torch.long, device=device)
        if active_mask is None:  # a SlotObservation without types or activity: all active
            active_mask = torch.ones(per_step, dtype=torch.bool, device=device)
    blueprint = expect(arg, blueprint_indices, dtype=[torch.long, torch.int32], device=device,
                       shape=per_step, hint=matching)
    if blueprint.dtype != torch.long:
        blueprint = blueprint.long()  # int32 indices (the reference accepts them): widened
    active = None if active_mask is None else expect(
        "active" if structured else "active_mask", active_mask, device=device,
        dtype=torch.bool, shape=per_step,
    )
    flat = base = slots = None
    if isinstance(state, SlotObservation):
        base, slots = state.base, state.slots
        if two_d:
            base, slots = base.unsqueeze(1), slots.unsqueeze(1)
        observed = {f"{name}.base": base, f"{name}.slots": slots}
    else:
        assert isinstance(state, Tensor)
        flat = state.unsqueeze(1) if two_d else state
        observed = {name: flat}
    if two_d:
        blueprint = blueprint.unsqueeze(1)
        active = None if active is None else active.unsqueeze(1)
    if validation_enabled():
        _check_values(observed, arg, blueprint, ctx.num_slot_types)
    # Slot activity [B, T, N]: as given, else the slots with a type.
    active = blueprint >= 0 if active is None else active
    return flat, base, slots, blueprint, active, given_shape, two_d


def _check_values(
    observed: Mapping[str, Tensor], arg: str, blueprint: Tensor, num_slot_types: int
) -> None:
    """The observation's value checks, one host sync: finite features, slot types in
    ``[-1, num_slot_types)``."""
    counts = [(~torch.isfinite(v)).sum() for v in observed.values()]
    counts += [torch.isnan(v).sum() for v in observed.values()]
    out_of_range = (blueprint < -1) | (blueprint >= num_slot_types)
    values = torch.stack([*counts, out_of_range.sum()]).tolist()
    n = len(observed)
    for (part, tensor), bad, nan in zip(observed.items(), values[:n], values[n:2 * n]):
        if bad:
            raise ValueError(
                f"{part} contains non-finite values: {nan} NaN and {bad - nan} inf (of "
                f"{tensor.numel()} entries)"
            )
    if values[-1]:
        bad = sorted(set(blueprint[out_of_range].tolist()))
        shown = ", ".join(str(v) for v in bad[:10])
        if len(bad) > 10:
            shown += f", ... ({len(bad)} distinct values)"
        raise ValueError(
            f"{arg} (shape {describe_shape(blueprint)}) has {values[-1]} out-of-range entries "
            f"with values [{shown}]; valid values are -1 (empty slot) or "
            f"0..{num_slot_types - 1} (num_slot_types={num_slot_types})"
        )


def _check_float(name: str, value: Tensor, parameter: Tensor) -> None:
    """Never convert: outside autocast a floating input has the parameters' dtype; under
    autocast also the autocast dtype (any other would fail deep inside, e.g. float64 in a
    bf16 matmul)."""
    dtypes, device_type = [parameter.dtype], parameter.device.type
    if torch.is_autocast_enabled(device_type):
        dtypes.append(torch.get_autocast_dtype(device_type))
    expect(name, value, device=parameter.device, hint=" (the network's device)")
    expect(name, value, dtype=dtypes,
           hint=f" (the parameters' floating point dtype; inputs are rejected, not converted: "
           f"{name}.to({parameter.dtype}) or run under autocast)")


def _flat_shape(ctx: SlotContext, parameter: Tensor, state: object, name: str) -> tuple[int, ...]:
    """Check a flat ``state``; its shape ``(B, T, D)`` or ``(B, D)``."""
    state = expect(name, state)
    if state.dim() not in (2, 3) or state.shape[-1] != ctx.state_dim:
        layout = ctx.layout
        parts = (
            f" = base_dim={layout.base_dim} + {layout.num_slots} slots x slot_dim={layout.slot_dim}"
            if layout is not None
            else ""
        )
        raise ValueError(f"{name} has shape {describe_shape(state)}, expected [B, T, D] or "
                         f"[B, D] with D=state_dim={ctx.state_dim}{parts}")
    _check_float(name, state, parameter)
    return tuple(state.shape)


def _structured_shape(ctx: SlotContext, parameter: Tensor, obs: SlotObservation) -> tuple[int, ...]:
    """Check a `SlotObservation`; its leading shape ``(B, T)`` or ``(B,)``."""
    layout = ctx.layout
    if layout is None:
        raise ValueError(
            f"this network takes flat observations only: its state_dim={ctx.state_dim} is "
            "not base_dim + N * slot_dim (build it with slot_dim= to take a SlotObservation)"
        )
    base = expect("state.base", obs.base)
    slots = expect("state.slots", obs.slots)
    lead = tuple(base.shape[:-1])
    if base.dim() not in (2, 3) or base.shape[-1] != layout.base_dim:
        raise ValueError(
            f"state.base has shape {describe_shape(base)}, expected [B, T, G] or [B, G] with "
            f"G=base_dim={layout.base_dim}"
        )
    expect(
        "state.slots", slots, shape=(*lead, layout.num_slots, layout.slot_dim),
        hint=f" (state.base's leading shape {lead} + N={layout.num_slots} slots x "
        f"slot_dim={layout.slot_dim})",
    )
    _check_float("state.base", base, parameter)
    _check_float("state.slots", slots, parameter)
    expect("state.slots", slots, dtype=base.dtype, hint=" (state.base's dtype)")
    return lead


def _hidden(ctx: SlotContext, hidden: object, B: int, parameter: Tensor) -> Hidden:
    """``hidden`` as ``(h, c)``, each ``[L, B, H]`` floating on the network's device."""
    if not isinstance(hidden, tuple) or len(hidden) != 2:
        got = f"a tuple of length {len(hidden)}" if isinstance(hidden, tuple) else (
            f"a {type(hidden).__name__}")
        raise ValueError(f"hidden must be a tuple (h, c) of two tensors, got {got}")
    layers, width = ctx.hidden_size
    for part, state in zip(("hidden h", "hidden c"), hidden):
        expect(part, state, shape=(layers, B, width),
               hint=f" ([lstm_layers, B, lstm_hidden_dim] = [{layers}, {B}, {width}])")
        _check_float(part, state, parameter)
    h, c = hidden
    expect("hidden c", c, dtype=h.dtype, hint=" (hidden h's dtype)")
    return h, c


def _per_step(
    arg: str, value: object, B: int, T: int, tail: tuple[int, ...], squeeze: bool,
    device: torch.device, dtype: torch.dtype, hint: str,
) -> Tensor:
    """A per-step argument as ``[B, T, *tail]``: given so, or ``[B, 1, *tail]`` / ``[B,
    *tail]`` for every step (the one form for a one-step call)."""
    shapes = [(B, *tail)] if squeeze else [(B, T, *tail), (B, 1, *tail), (B, *tail)]
    if squeeze and T == 1:
        shapes.append((B, 1, *tail))
    tensor = expect(arg, value, dtype=dtype, device=device, shape=shapes, hint=hint)
    if tensor.dim() == len(tail) + 2 and tensor.shape[1] == T:
        return tensor
    return tensor.view(B, 1, *tail).expand(B, T, *tail)


def _masks(
    ctx: SlotContext,
    B: int,
    T: int,
    device: torch.device,
    masks: Mapping[str, Tensor | None],
    named: Mapping[str, Tensor | None],
    squeeze: bool,
) -> dict[str, Tensor]:
    """Every head's mask as bool ``[B, T, n]``; None or absent = all valid."""
    space = ctx.action_space
    by_name = {k: v for k, v in named.items() if v is not None}
    if not by_name.keys() | masks.keys() <= space.sizes.keys():  # the checks name the stray
        space.check_head_names("a {head}_mask argument", by_name)
        space.check_head_names("masks", masks, hint=f" (and {SLOT_BY_OP_KEY!r})")
    by_name.update({k: v for k, v in masks.items() if v is not None})
    out: dict[str, Tensor] = {}
    for head, n in space.sizes.items():
        mask = by_name.get(head)
        out[head] = torch.ones(B, T, n, dtype=torch.bool, device=device) if mask is None else (
            _per_step(f"{head}_mask", mask, B, T, (n,), squeeze, device, torch.bool,
                      f" (head {head!r} has {n} choices; True = valid)"))
    return out


def _actions(
    ctx: SlotContext, actions: object, B: int, T: int, device: torch.device, squeeze: bool
) -> dict[str, Tensor]:
    """Stored actions as int64 ``[B, T]`` per head name, range-checked under validation."""
    if not isinstance(actions, Mapping):
        raise ValueError(
            f"actions must be a mapping head name -> int64 [B, T], got {type(actions).__name__}"
        )
    sizes = ctx.action_space.sizes
    missing = [n for n in sizes if n not in actions]
    if missing:
        raise KeyError(f"actions is missing heads {missing}; expected {list(sizes)}")
    shape = [(B,)] if squeeze else [(B, T), (B,)] if T == 1 else [(B, T)]
    out = {head: expect(f"actions[{head!r}]", actions[head], dtype=torch.long, device=device,
                        shape=shape).view(B, T) for head in sizes}
    if validation_enabled():
        # One host sync for every head; the values are read back only for an error.
        flags = torch.stack([((a < 0) | (a >= sizes[h])).any() for h, a in out.items()])
        for (head, action), has_bad in zip(out.items(), flags.tolist()):
            if has_bad:
                n = sizes[head]
                bad = sorted(set(action[(action < 0) | (action >= n)].tolist()))[:10]
                raise ValueError(f"actions[{head!r}] has values {bad} outside [0, {n})")
    return out
