"""Reliability of both networks: bad input, host syncs, numerical safety, determinism.

Every public entry point (``forward``, ``get_action``, ``evaluate_actions``,
``predict_contributions`` of both networks, the encoder, the observation layout) is fed bad
input; each case asserts the exception type and that the message names the argument and
both the expected and the actual value. Observation dtype rule (tested below): the
networks never convert an observation; outside autocast ``state`` must have the
parameters' dtype, under autocast the parameters' dtype or the autocast dtype, and an
integer observation is always rejected.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from slotformer.config import ObservationLayout, SlotConfig
from slotformer.distributions import InvalidStateMachineError
from slotformer.layers.encoder import SlotTransformerEncoder
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.inputs import SlotObservation
from slotformer.networks.lstm import FactoredRecurrentActorCritic, LSTMConfig
from slotformer.networks.transformer import SlotTransformerActorCritic, TransformerConfig
from slotformer.presets.seed_lifecycle import Op
from slotformer.validation import validation

B, T, N = 2, 3, 3
BASE_DIM, SLOT_DIM = 23, 31
STATE_DIM = BASE_DIM + N * SLOT_DIM  # 116
NUM_OPS = 6
KINDS = ("transformer", "lstm")


def make_net(kind: str, slot_config: SlotConfig | None = None, seed: int = 0) -> ActorCriticCore:
    """A tiny network of either kind, a fresh copy of one built once per argument set.

    Building is dominated by the orthogonal inits' QR factorisations; copying is cheap.
    """
    return copy.deepcopy(_build_net(kind, slot_config, seed))


@functools.cache
def _build_net(kind: str, slot_config: SlotConfig | None, seed: int) -> ActorCriticCore:
    config = slot_config if slot_config is not None else SlotConfig.default()
    state_dim = BASE_DIM + config.num_slots * SLOT_DIM
    torch.manual_seed(seed)
    if kind == "transformer":
        return SlotTransformerActorCritic(state_dim, slot_config=config, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, transformer_layers=1, transformer_heads=2, head_hidden=16))
    return FactoredRecurrentActorCritic(
        state_dim, feature_dim=16, lstm_hidden_dim=16, slot_config=config
    )


@pytest.fixture(params=KINDS)
def net(request: pytest.FixtureRequest) -> ActorCriticCore:
    return make_net(request.param)


def observation(
    batch: int = B, steps: int = T, num_slots: int = N, seed: int = 1, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Random state ``[B, T, D]`` and blueprint indices ``[B, T, N]`` (about half empty)."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, steps, BASE_DIM + num_slots * SLOT_DIM, generator=gen) * scale
    bp = torch.randint(-1, 13, (batch, steps, num_slots), generator=gen)
    bp = torch.where(torch.rand(bp.shape, generator=gen) < 0.5, -1, bp)
    return state, bp


def rollout(
    net: ActorCriticCore, state: Tensor, bp: Tensor, seed: int = 0, **step_kwargs: Any
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """``get_action`` over every step of ``state [B, T, D]`` carrying the hidden state.

    Returns actions and log-probs ``[B, T]`` per head and values ``[B, T]``.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = net.get_initial_hidden(state.shape[0])
    actions: dict[str, list[Tensor]] = {}
    log_probs: dict[str, list[Tensor]] = {}
    values = []
    for t in range(state.shape[1]):
        result = net.get_action(state[:, t], bp[:, t], hidden, generator=gen, **step_kwargs)
        hidden = result.hidden
        for name in result.actions:
            actions.setdefault(name, []).append(result.actions[name])
            log_probs.setdefault(name, []).append(result.log_probs[name])
        values.append(result.values)
    return (
        {k: torch.stack(v, dim=1) for k, v in actions.items()},
        {k: torch.stack(v, dim=1) for k, v in log_probs.items()},
        torch.stack(values, dim=1),
    )


# ---------------------------------------------------------------------- rollout == update
@pytest.mark.parity
@pytest.mark.parametrize("grad_mode", ["enabled", "no_grad"])
def test_rollout_log_probs_reproduced_exactly_by_update_over_many_steps(
    net: ActorCriticCore, grad_mode: str
) -> None:
    # Regression: on CPU torch.lstm ran a different kernel with grad off (oneDNN) than with
    # grad on, so from the second step on (h != 0) get_action's log-probs differed from
    # evaluate_actions' in the last bits and the PPO ratio at epoch 0 was not exactly 1.
    state, bp = observation(batch=16, steps=6)
    actions, rollout_log_probs, _ = rollout(net, state, bp)
    context = torch.no_grad() if grad_mode == "no_grad" else torch.enable_grad()
    with context:
        # The whole sequence in one call, and step by step from get_action's hidden states.
        whole = net.evaluate_actions(state, bp, actions)
        hidden = net.get_initial_hidden(state.shape[0])
        for t in range(state.shape[1]):
            step = net.evaluate_actions(
                state[:, t : t + 1], bp[:, t : t + 1], {k: v[:, t : t + 1] for k, v in actions.items()},
                hidden=hidden,
            )
            hidden = step.hidden
            for name, log_prob in rollout_log_probs.items():
                assert torch.equal(step.log_probs[name][:, 0], log_prob[:, t]), (name, t)
    # One call over T steps batches the per-step matmuls into [B*T, ...] products, whose
    # blocking (and so rounding) may differ from T products of [B, ...]: close, not equal.
    for name, log_prob in rollout_log_probs.items():
        torch.testing.assert_close(whole.log_probs[name], log_prob, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- bad input: helpers
ENTRIES = ("forward", "get_action", "evaluate_actions", "predict_contributions")
# With op = WAIT every other head is irrelevant, so these canonical actions are always valid.
WAIT_ACTIONS = {
    "slot": 0, "blueprint": 0, "style": 2, "tempo": 1, "alpha_target": 2,
    "alpha_speed": 0, "alpha_curve": 0, "op": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _validation_on() -> Iterator[None]:
    """Value checks on (the default) unless a test switches them off."""
    with validation(True):
        yield


def wait_actions(batch: int = B, steps: int = T, **override: int) -> dict[str, Tensor]:
    values = {**WAIT_ACTIONS, **override}
    return {k: torch.full((batch, steps), v, dtype=torch.long) for k, v in values.items()}


def good_inputs(entry: str) -> tuple[Tensor, Tensor]:
    """A valid observation for the entry point (``get_action`` takes one step ``[B, D]``)."""
    state, bp = observation()
    if entry == "get_action":
        return state[:, 0], bp[:, 0]
    return state, bp


def call(net: ActorCriticCore, entry: str, state: Any, bp: Any, **kwargs: Any) -> Any:
    if entry == "forward":
        return net(state, bp, **kwargs)
    if entry == "get_action":
        return net.get_action(state, bp, **kwargs)
    if entry == "evaluate_actions":
        actions = kwargs.pop("actions", None)
        return net.evaluate_actions(state, bp, wait_actions() if actions is None else actions, **kwargs)
    return net.predict_contributions(state, bp, **kwargs)


def state_arg(entry: str) -> str:
    return "states" if entry == "evaluate_actions" else "state"


def expect_error(fn: Callable[[], object], exc: type[BaseException], fragments: list[str]) -> str:
    """Run ``fn``; assert it raises ``exc`` and that the message holds every fragment."""
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} is not in the message {message!r}"
    return message


def shape(t: Tensor) -> str:
    return str(tuple(t.shape))


# ---------------------------------------------------------------------- bad observations
# Each case: (state, bp, entry) -> (bad state, bad bp, extra kwargs, message fragments); the
# fragments name the argument, the actual value and the expected one.
ObservationCase = Callable[[Tensor, Tensor, str], tuple[Any, Any, dict[str, Any], list[str]]]


def _nan(state: Tensor, value: float) -> Tensor:
    bad = state.clone()
    bad.view(-1)[5] = value
    return bad


def _bp_at(bp: Tensor, value: int) -> Tensor:
    bad = bp.clone()
    bad.view(-1)[1] = value
    return bad


OBSERVATION_CASES: dict[str, ObservationCase] = {
    "rank 4": lambda s, bp, e: (s[None, None], bp, {}, [state_arg(e), shape(s[None, None]), "[B, T, D]"]),
    "rank 1": lambda s, bp, e: (s.reshape(-1), bp, {}, [state_arg(e), shape(s.reshape(-1)), "[B, T, D]"]),
    "feature size": lambda s, bp, e: (
        s[..., :-1], bp, {}, [state_arg(e), "115), expected", "state_dim=116", "slot_dim=31"]
    ),
    "integer state": lambda s, bp, e: (
        s.long(), bp, {}, [state_arg(e), "torch.int64", "torch.float32", "rejected"]
    ),
    "float64 state": lambda s, bp, e: (s.double(), bp, {}, [state_arg(e), "torch.float64", "torch.float32"]),
    "numpy state": lambda s, bp, e: (s.numpy(), bp, {}, [state_arg(e), "ndarray", "torch.Tensor"]),
    "state on another device": lambda s, bp, e: (
        s.to("meta"), bp, {}, [state_arg(e), "meta", "cpu"]
    ),
    "NaN in state": lambda s, bp, e: (_nan(s, float("nan")), bp, {}, [state_arg(e), "1 NaN", "non-finite"]),
    "inf in state": lambda s, bp, e: (_nan(s, float("inf")), bp, {}, [state_arg(e), "1 inf", "non-finite"]),
    "blueprint N": lambda s, bp, e: (s, bp[..., :2], {}, ["blueprint_indices", ", 2)", ", 3)", "N=3"]),
    "blueprint batch": lambda s, bp, e: (
        s, torch.cat([bp, bp[:1]]), {}, ["blueprint_indices", "(3,", "(2,"]
    ),
    "blueprint dtype": lambda s, bp, e: (
        s, bp.to(torch.int16), {}, ["blueprint_indices", "torch.int16", "torch.int64 or torch.int32"]
    ),
    "blueprint numpy": lambda s, bp, e: (s, bp.numpy(), {}, ["blueprint_indices", "ndarray", "torch.Tensor"]),
    "blueprint device": lambda s, bp, e: (s, bp.to("meta"), {}, ["blueprint_indices", "meta", "cpu"]),
    "blueprint -2": lambda s, bp, e: (
        s, _bp_at(bp, -2), {}, ["blueprint_indices", "[-2]", "-1 (empty slot) or 0..12"]
    ),
    "blueprint 13": lambda s, bp, e: (
        s, _bp_at(bp, 13), {}, ["blueprint_indices", "[13]", "-1 (empty slot) or 0..12"]
    ),
    "no blueprint and no active mask": lambda s, bp, e: (s, None, {}, ["blueprint_indices", "active_mask"]),
    "active_mask N": lambda s, bp, e: (
        s, None, {"active_mask": torch.ones(*bp.shape[:-1], 4, dtype=torch.bool)},
        ["active_mask", ", 4)", ", 3)"],
    ),
    "active_mask dtype": lambda s, bp, e: (
        s, None, {"active_mask": torch.ones(bp.shape)}, ["active_mask", "torch.float32", "torch.bool"]
    ),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", list(OBSERVATION_CASES))
def test_bad_observation_is_rejected_with_a_message(
    net: ActorCriticCore, entry: str, case: str
) -> None:
    state, bp = good_inputs(entry)
    bad_state, bad_bp, kwargs, fragments = OBSERVATION_CASES[case](state, bp, entry)
    expect_error(lambda: call(net, entry, bad_state, bad_bp, **kwargs), ValueError, fragments)


@pytest.mark.parametrize("entry", ["forward", "evaluate_actions", "predict_contributions"])
def test_empty_sequence_is_rejected(net: ActorCriticCore, entry: str) -> None:
    state, bp = good_inputs(entry)
    expect_error(
        lambda: call(net, entry, state[:, :0], bp[:, :0], actions=wait_actions(steps=0))
        if entry == "evaluate_actions" else call(net, entry, state[:, :0], bp[:, :0]),
        ValueError, [state_arg(entry), "T=0", "at least one time step"],
    )


def test_get_action_rejects_more_than_one_step(net: ActorCriticCore) -> None:
    state, bp = observation()
    expect_error(
        lambda: net.get_action(state, bp), ValueError, ["state", "(2, 3, 116)", "T=3", "[B, 1, D]"]
    )
    # [B, 1, D] is the other accepted form.
    assert net.get_action(state[:, :1], bp[:, :1]).values.shape == (B,)


# ---------------------------------------------------------------------- dtype rule
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_floating_observations_are_rejected_not_converted(
    net: ActorCriticCore, entry: str, dtype: torch.dtype
) -> None:
    state, bp = good_inputs(entry)
    expect_error(
        lambda: call(net, entry, state.to(dtype), bp), ValueError,
        [state_arg(entry), str(dtype), "floating", "not converted"],
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_floating_observation_must_match_parameters_outside_autocast(
    net: ActorCriticCore, entry: str
) -> None:
    state, bp = good_inputs(entry)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        expect_error(
            lambda d=dtype: call(net, entry, state.to(d), bp), ValueError,  # type: ignore[misc]
            [state_arg(entry), str(dtype), "torch.float32", f"{state_arg(entry)}.to(torch.float32)"],
        )
    # A float64 network takes float64 observations.
    net64 = copy.deepcopy(net).double()
    call(net64, entry, state.double(), bp)


@pytest.mark.parametrize("entry", ENTRIES)
def test_under_autocast_only_parameter_or_autocast_dtype_is_accepted(
    net: ActorCriticCore, entry: str
) -> None:
    state, bp = good_inputs(entry)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        call(net, entry, state, bp)  # fp32 = the parameters' dtype
        call(net, entry, state.bfloat16(), bp)  # bf16 = the autocast dtype
        for dtype in (torch.float64, torch.float16):
            expect_error(
                lambda d=dtype: call(net, entry, state.to(d), bp), ValueError,  # type: ignore[misc]
                [state_arg(entry), str(dtype), "torch.float32", "torch.bfloat16"],
            )


# ---------------------------------------------------------------------- bad masks
def _one_step(entry: str, mask: Tensor) -> Tensor:
    """A ``[B, T, n]`` mask as the entry point takes it (``[B, n]`` for get_action)."""
    return mask[:, 0] if entry == "get_action" else mask


def _all_true(n: int, batch: int = B) -> Tensor:
    return torch.ones(batch, T, n, dtype=torch.bool)


MASK_ENTRIES = ("forward", "get_action", "evaluate_actions")
MaskCase = Callable[[str], tuple[dict[str, Any], type[BaseException], list[str]]]


def _op_mask_with_empty_row(entry: str) -> Tensor:
    mask = _all_true(NUM_OPS)
    mask[1, 0] = False  # one row (batch 1, step 0) has no valid op
    return _one_step(entry, mask)


MASK_CASES: dict[str, MaskCase] = {
    "slot_mask int64": lambda e: (
        {"slot_mask": _one_step(e, _all_true(N).long())}, ValueError,
        ["slot_mask", "torch.int64", "torch.bool"],
    ),
    "op_mask float": lambda e: (
        {"op_mask": _one_step(e, _all_true(NUM_OPS).float())}, ValueError,
        ["op_mask", "torch.float32", "torch.bool"],
    ),
    "op_mask size": lambda e: (
        {"op_mask": _one_step(e, _all_true(5))}, ValueError, ["op_mask", ", 5)", ", 6)", "6 choices"]
    ),
    "slot_mask N": lambda e: (
        {"slot_mask": _one_step(e, _all_true(4))}, ValueError, ["slot_mask", ", 4)", ", 3)"]
    ),
    "blueprint_mask batch": lambda e: (
        {"blueprint_mask": _one_step(e, _all_true(13, batch=B + 1))}, ValueError,
        ["blueprint_mask", "(3,", "(2,"],
    ),
    "style_mask rank": lambda e: (
        {"style_mask": torch.ones(4, dtype=torch.bool)}, ValueError, ["style_mask", "(4,)", "(2,"]
    ),
    "op_mask numpy": lambda e: (
        {"op_mask": _one_step(e, _all_true(NUM_OPS)).numpy()}, ValueError,
        ["op_mask", "ndarray", "torch.Tensor"],
    ),
    "op_mask device": lambda e: (
        {"op_mask": _one_step(e, _all_true(NUM_OPS)).to("meta")}, ValueError,
        ["op_mask", "meta", "cpu"],
    ),
    "unknown head in masks": lambda e: (
        {"masks": {"bogus": _one_step(e, _all_true(2))}}, ValueError, ["masks", "bogus", "'op'"]
    ),
    "op_mask all-False row": lambda e: (
        {"op_mask": _op_mask_with_empty_row(e)}, InvalidStateMachineError,
        ["op_mask", "1 row(s)", "no valid action", "at least one True"],
    ),
}


@pytest.mark.parametrize("entry", MASK_ENTRIES)
@pytest.mark.parametrize("case", list(MASK_CASES))
def test_bad_mask_is_rejected_with_a_message(net: ActorCriticCore, entry: str, case: str) -> None:
    state, bp = good_inputs(entry)
    kwargs, exc, fragments = MASK_CASES[case](entry)
    expect_error(lambda: call(net, entry, state, bp, **kwargs), exc, fragments)


@pytest.mark.parametrize("entry", ["get_action", "evaluate_actions"])
def test_all_false_mask_of_a_head_relevant_to_the_op_is_rejected(
    net: ActorCriticCore, entry: str
) -> None:
    germinate_only = torch.zeros(B, T, NUM_OPS, dtype=torch.bool)
    germinate_only[..., 1] = True
    no_blueprint = torch.zeros(B, T, 13, dtype=torch.bool)
    state, bp = good_inputs(entry)
    kwargs: dict[str, Any] = {
        "op_mask": _one_step(entry, germinate_only), "blueprint_mask": _one_step(entry, no_blueprint)
    }
    if entry == "evaluate_actions":
        kwargs["actions"] = wait_actions(op=1)
    expect_error(
        lambda: call(net, entry, state, bp, **kwargs), InvalidStateMachineError,
        ["blueprint_mask", "chosen op", f"{B if entry == 'get_action' else B * T} row(s)",
         "no valid action"],
    )


def test_all_false_mask_of_an_irrelevant_head_is_fine(net: ActorCriticCore) -> None:
    # WAIT makes every other head irrelevant: each is forced to its canonical action with
    # log-prob exactly 0, whatever its own mask says (here: nothing valid).
    state, bp = good_inputs("get_action")
    wait_only = torch.zeros(B, NUM_OPS, dtype=torch.bool)
    wait_only[:, 0] = True
    no_choice = {
        f"{name}_mask": torch.zeros(B, n, dtype=torch.bool)
        for name, n in net.action_space.sizes.items() if name != "op"
    }
    result = net.get_action(state, bp, op_mask=wait_only, **no_choice)
    for name, canonical in WAIT_ACTIONS.items():
        assert torch.equal(result.actions[name], torch.full((B,), canonical)), name
        assert torch.equal(result.log_probs[name], torch.zeros(B)), name
        assert torch.equal(result.head_entropies[name], torch.zeros(B)), name


# ---------------------------------------------------------------------- slot_by_op
def _slot_by_op(entry: str, batch: int = B, num_slots: int = N, **kw: Any) -> Tensor:
    mask = torch.ones(batch, NUM_OPS, num_slots, dtype=torch.bool, **kw)
    return mask


SLOT_BY_OP_CASES: dict[str, tuple[Callable[[], Any], list[str]]] = {
    "N": (lambda: _slot_by_op("", num_slots=4), ["slot_by_op_mask", "(2, 6, 4)", "(2, 6, 3)", "N=3"]),
    "batch": (lambda: _slot_by_op("", batch=3), ["slot_by_op_mask", "(3, 6, 3)", "(2, 6, 3)"]),
    "transposed": (
        lambda: _slot_by_op("").transpose(1, 2), ["slot_by_op_mask", "(2, 3, 6)", "(2, 6, 3)"]
    ),
    "dtype": (lambda: _slot_by_op("").long(), ["slot_by_op_mask", "torch.int64", "torch.bool"]),
    "device": (lambda: _slot_by_op("").to("meta"), ["slot_by_op_mask", "meta", "cpu"]),
}


@pytest.mark.parametrize("entry", ["get_action", "evaluate_actions"])
@pytest.mark.parametrize("case", list(SLOT_BY_OP_CASES))
def test_bad_slot_by_op_is_rejected_with_a_message(
    net: ActorCriticCore, entry: str, case: str
) -> None:
    state, bp = good_inputs(entry)
    make, fragments = SLOT_BY_OP_CASES[case]
    expect_error(lambda: call(net, entry, state, bp, slot_by_op_mask=make()), ValueError, fragments)


@pytest.mark.parametrize("entry", ["get_action", "evaluate_actions"])
def test_slot_by_op_without_a_slot_for_the_chosen_op_is_rejected(
    net: ActorCriticCore, entry: str
) -> None:
    prune_only = torch.zeros(B, T, NUM_OPS, dtype=torch.bool)
    prune_only[..., 3] = True
    slot_by_op = torch.ones(B, NUM_OPS, N, dtype=torch.bool)
    slot_by_op[0, 3] = False  # environment 0 has no slot to prune
    state, bp = good_inputs(entry)
    kwargs: dict[str, Any] = {"op_mask": _one_step(entry, prune_only), "slot_by_op_mask": slot_by_op}
    if entry == "evaluate_actions":
        kwargs["actions"] = wait_actions(op=3)
    expect_error(
        lambda: call(net, entry, state, bp, **kwargs), InvalidStateMachineError,
        ["slot_by_op_mask", "no valid action"],
    )


# ---------------------------------------------------------------------- bad hidden state
HiddenCase = Callable[[tuple[Tensor, Tensor]], tuple[Any, list[str]]]
HIDDEN_CASES: dict[str, HiddenCase] = {
    "batch": lambda h: ((h[0][:, :1], h[1][:, :1]), ["hidden h", "(1, 1, 16)", "(1, 2, 16)"]),
    "layers": lambda h: (
        (torch.cat([h[0], h[0]]), torch.cat([h[1], h[1]])), ["hidden h", "(2, 2, 16)", "(1, 2, 16)"]
    ),
    "width": lambda h: ((h[0][..., :8], h[1][..., :8]), ["hidden h", "(1, 2, 8)", "(1, 2, 16)"]),
    "c only wrong": lambda h: ((h[0], h[1][:, :1]), ["hidden c", "(1, 1, 16)", "(1, 2, 16)"]),
    "float64": lambda h: ((h[0].double(), h[1].double()), ["hidden h", "torch.float64", "torch.float32"]),
    "int64": lambda h: ((h[0].long(), h[1].long()), ["hidden h", "torch.int64", "floating point"]),
    "device": lambda h: ((h[0].to("meta"), h[1].to("meta")), ["hidden h", "meta", "cpu"]),
    "list": lambda h: ([h[0], h[1]], ["hidden", "tuple", "list"]),
    "one tensor": lambda h: (h[0], ["hidden", "tuple", "Tensor"]),
    "tuple of one": lambda h: ((h[0],), ["hidden", "tuple", "length 1"]),
    "tuple of ints": lambda h: ((1, 2), ["hidden h", "Tensor", "int"]),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", list(HIDDEN_CASES))
def test_bad_hidden_is_rejected_with_a_message(net: ActorCriticCore, entry: str, case: str) -> None:
    state, bp = good_inputs(entry)
    hidden, fragments = HIDDEN_CASES[case](net.get_initial_hidden(B))
    expect_error(lambda: call(net, entry, state, bp, hidden=hidden), ValueError, fragments)


# ---------------------------------------------------------------------- bad actions
ACTION_CASES: dict[str, tuple[Callable[[], Any], type[BaseException], list[str]]] = {
    "missing head": (
        lambda: {k: v for k, v in wait_actions().items() if k != "op"}, KeyError, ["actions", "'op'"]
    ),
    "not a mapping": (lambda: list(wait_actions().values()), ValueError, ["actions", "mapping", "list"]),
    "int32": (
        lambda: {**wait_actions(), "op": torch.zeros(B, T, dtype=torch.int32)}, ValueError,
        ["actions['op']", "torch.int32", "torch.int64"],
    ),
    "shape": (
        lambda: {**wait_actions(), "op": torch.zeros(B, T - 1, dtype=torch.long)}, ValueError,
        ["actions['op']", "(2, 2)", "(2, 3)"],
    ),
    "numpy": (
        lambda: {**wait_actions(), "op": torch.zeros(B, T, dtype=torch.long).numpy()}, ValueError,
        ["actions['op']", "ndarray", "torch.Tensor"],
    ),
    "out of range": (
        lambda: {**wait_actions(), "op": torch.full((B, T), NUM_OPS, dtype=torch.long)}, ValueError,
        ["actions['op']", "[6]", "[0, 6)"],
    ),
    "device": (
        lambda: {**wait_actions(), "op": torch.zeros(B, T, dtype=torch.long, device="meta")},
        ValueError, ["actions['op']", "meta", "cpu"],
    ),
}


@pytest.mark.parametrize("case", list(ACTION_CASES))
def test_bad_actions_are_rejected_with_a_message(net: ActorCriticCore, case: str) -> None:
    state, bp = observation()
    make, exc, fragments = ACTION_CASES[case]
    expect_error(lambda: net.evaluate_actions(state, bp, make()), exc, fragments)


def test_actions_forbidden_by_the_masks_are_rejected(net: ActorCriticCore) -> None:
    state, bp = observation()
    no_wait = _all_true(NUM_OPS)
    no_wait[..., 0] = False
    expect_error(
        lambda: net.evaluate_actions(state, bp, wait_actions(), op_mask=no_wait), ValueError,
        ["actions", "masks forbid", f"'op': {B * T}"],
    )


@pytest.mark.parametrize("entry", ["forward", "get_action", "evaluate_actions"])
@pytest.mark.parametrize("floor", [1.0, -0.1, float("nan")])
def test_bad_probability_floor_is_rejected(net: ActorCriticCore, entry: str, floor: float) -> None:
    state, bp = good_inputs(entry)
    expect_error(
        lambda: call(net, entry, state, bp, probability_floor=floor), ValueError,
        ["probability_floor", str(floor), "[0, 1)"],
    )
    expect_error(
        lambda: call(net, entry, state, bp, probability_floor={"bogus": 0.1}), ValueError,
        ["probability_floor", "bogus", "'op'"],
    )


@pytest.mark.parametrize("entry", ["forward", "get_action", "evaluate_actions"])
def test_a_floor_that_cannot_hold_is_rejected(net: ActorCriticCore, entry: str) -> None:
    """A floor of 0.5 on the op head with its 6 ops valid (0.5 x 6 > 1) is an error, not a
    silently uniform op; 1/6 still holds."""
    state, bp = good_inputs(entry)
    expect_error(
        lambda: call(net, entry, state, bp, probability_floor={"op": 0.5}), ValueError,
        ["probability_floor for head 'op' is 0.5", "more than 1 / 0.5 = 2 valid", "cannot hold"],
    )
    call(net, entry, state, bp, probability_floor={"op": 1 / 6})


# ---------------------------------------------------------------------- N vs SlotConfig / layout
def test_transformer_slot_config_override_must_match_the_observation() -> None:
    net = make_net("transformer")
    grid = SlotConfig.for_grid(2, 2)
    state3, bp3 = observation(num_slots=3)
    state4, bp4 = observation(num_slots=4)
    # State sized for the constructor's 3 slots on a 4-slot grid.
    expect_error(
        lambda: net(state3, bp3, slot_config=grid), ValueError,
        ["state", "116), expected", "state_dim=147", "4 slots"],
    )
    # Blueprint indices for 3 slots with a 4-slot state and grid.
    expect_error(
        lambda: net(state4, bp3, slot_config=grid), ValueError,
        ["blueprint_indices", "(2, 3, 3)", "(2, 3, 4)", "N=4"],
    )
    # Masks sized for the wrong grid.
    expect_error(
        lambda: net(state4, bp4, slot_config=grid, slot_mask=_all_true(3)), ValueError,
        ["slot_mask", ", 3)", ", 4)"],
    )
    expect_error(
        lambda: net.get_action(
            state4[:, 0], bp4[:, 0], slot_config=grid, slot_by_op_mask=_slot_by_op("", num_slots=3)
        ),
        ValueError, ["slot_by_op_mask", "(2, 6, 3)", "N=4"],
    )
    # Matching inputs run.
    assert net(state4, bp4, slot_config=grid)["slot_logits"].shape == (B, T, 4)


def test_lstm_rejects_another_slot_config() -> None:
    net = make_net("lstm")
    state4, bp4 = observation(num_slots=4)
    expect_error(
        lambda: net(state4, bp4, slot_config=SlotConfig.for_grid(2, 2)), ValueError,
        ["slot_config", "3 slots", "4 slots", "SlotTransformerActorCritic"],
    )


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_rejects_state_dim_not_matching_the_layout(kind: str) -> None:
    cls = SlotTransformerActorCritic if kind == "transformer" else FactoredRecurrentActorCritic
    config_class = TransformerConfig if kind == "transformer" else LSTMConfig
    # An explicit slot_dim must fit state_dim, for both networks.
    expect_error(
        lambda: cls(115, config=config_class(slot_dim=31)), ValueError,  # type: ignore[arg-type]
        ["state_dim=115", "base_dim=23", "slot_dim=31", "116"]
    )
    # The older 39-feature layout is inferred.
    assert cls(23 + 3 * 39).layout.slot_dim == 39
    if kind == "lstm":  # the flat network reads the vector whole: any state_dim (reference)
        net = cls(115)
        assert net.layout is None and net.state_dim == 115
        expect_error(
            lambda: net(SlotObservation(torch.randn(1, 1, 23), torch.randn(1, 1, 3, 31)), None),
            ValueError, ["flat observations only", "state_dim=115", "slot_dim="],
        )
        return
    expect_error(lambda: cls(115), ValueError, ["state_dim=115", "base_dim=23", "3", "positive integer"])
    expect_error(
        lambda: cls(STATE_DIM, slot_config=SlotConfig.for_grid(2, 2)), ValueError,
        ["state_dim=116", "4", "23.25", "positive integer"],
    )
    expect_error(lambda: cls(STATE_DIM, config=config_class(base_dim=120)), ValueError,  # type: ignore[arg-type]
                 ["state_dim=116", "base_dim=120"])


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_rejects_action_space_of_another_slot_count(kind: str) -> None:
    from slotformer.actions import ActionSpace

    cls = SlotTransformerActorCritic if kind == "transformer" else FactoredRecurrentActorCritic
    expect_error(
        lambda: cls(STATE_DIM, action_space=ActionSpace.default(4)), ValueError,
        ["action_space", "4 choices", "3 slots"],
    )


def test_transformer_rejects_more_slots_than_max_slots() -> None:
    grid = SlotConfig.for_grid(5, 13)  # 65 slots
    expect_error(
        lambda: SlotTransformerActorCritic(BASE_DIM + 65 * SLOT_DIM, slot_config=grid),
        ValueError, ["65 slots", "max_slots=64"],
    )
    net = make_net("transformer")
    state, bp = observation(num_slots=65)
    expect_error(
        lambda: net(state, bp, slot_config=grid), ValueError, ["N=65", "max_slots=64"]
    )


# ---------------------------------------------------------------------- encoder and layout
def _encoder_inputs(num_slots: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    features = torch.randn(B, T, num_slots, SLOT_DIM)
    active = torch.rand(B, T, num_slots) < 0.5
    return features, active, torch.zeros(num_slots, dtype=torch.long), torch.arange(num_slots)


ENCODER_CASES: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], tuple[tuple[Any, ...], list[str]]]] = {
    "rank 3 features": lambda f, a, r, c: (
        (f[0], a, r, c), ["slot_features", "[B, T, N, slot_dim=31]", "(3, 3, 31)"]
    ),
    "slot_dim": lambda f, a, r, c: (
        (f[..., :30], a, r, c), ["slot_features", "slot_dim=31", "(2, 3, 3, 30)"]
    ),
    "integer features": lambda f, a, r, c: (
        (f.long(), a, r, c), ["slot_features", "floating dtype", "torch.int64"]
    ),
    "mask dtype": lambda f, a, r, c: (
        (f, a.float(), r, c), ["slot_active_mask", "bool", "torch.float32"]
    ),
    "mask shape": lambda f, a, r, c: (
        (f, a[..., :2], r, c), ["slot_active_mask", "(2, 3, 3)", "(2, 3, 2)"]
    ),
    "row_ids shape": lambda f, a, r, c: (
        (f, a, r[:2], c), ["row_ids", "(3,)", "(2,)"]
    ),
    "row_ids out of range": lambda f, a, r, c: (
        (f, a, r + 8, c), ["row_ids", "[0, 8)", "8"]
    ),
    "too many slots": lambda f, a, r, c: (
        (torch.randn(B, T, 65, SLOT_DIM), torch.ones(B, T, 65, dtype=torch.bool),
         torch.zeros(65, dtype=torch.long), torch.arange(65)),
        ["N=65", "max_slots=64"],
    ),
}


@pytest.mark.parametrize("case", list(ENCODER_CASES))
def test_encoder_rejects_bad_input_with_a_message(case: str) -> None:
    encoder = SlotTransformerEncoder(slot_dim=SLOT_DIM, embed_dim=16, num_heads=2, num_layers=1)
    args, fragments = ENCODER_CASES[case](*_encoder_inputs())
    expect_error(lambda: encoder(*args), ValueError, fragments)


def test_encoder_constructor_rejects_bad_sizes() -> None:
    expect_error(
        lambda: SlotTransformerEncoder(embed_dim=18, num_heads=4), ValueError,
        ["embed_dim", "num_heads", "18", "4"],
    )
    expect_error(lambda: SlotTransformerEncoder(dropout=1.0), ValueError, ["dropout", "1.0", "[0, 1)"])
    expect_error(lambda: SlotTransformerEncoder(max_slots=0), ValueError, ["max_slots", "positive int", "0"])


def test_layout_rejects_bad_input_with_a_message() -> None:
    expect_error(
        lambda: ObservationLayout.infer(115, 3), ValueError,
        ["state_dim=115", "(115 - 23) / 3", "30.6667", "positive integer"],
    )
    expect_error(lambda: ObservationLayout.infer(116, 0), ValueError, ["num_slots", "positive int", "0"])
    expect_error(lambda: ObservationLayout(num_slots=3, slot_dim=0), ValueError, ["slot_dim", "0"])
    layout = ObservationLayout.infer(STATE_DIM, N)
    expect_error(
        lambda: layout.split(torch.zeros(B, 115)), ValueError, ["state", "(2, 115)", "state_dim=116"]
    )
    expect_error(
        lambda: layout.active_mask(None, torch.ones(B, N)), ValueError,
        ["active_mask", "torch.float32", "torch.bool"],
    )
    expect_error(
        lambda: layout.active_mask(None, torch.ones(B, 4, dtype=torch.bool)), ValueError,
        ["active_mask", "(2, 4)", "N=3"],
    )
    expect_error(
        lambda: layout.active_mask(torch.zeros(B, 4, dtype=torch.long)), ValueError,
        ["blueprint_indices", "(2, 4)", "N=3"],
    )
    # Activity comes from blueprint_indices >= 0, never from a feature.
    assert layout.active_mask(torch.tensor([[-1, 0, 12]])).tolist() == [[False, True, True]]


# ---------------------------------------------------------------------- host syncs
# Every way Python code can pull a tensor value to the host. `torch.Tensor.__bool__` covers
# `if tensor:`, `__int__`/`__float__`/`__index__` cover int(t)/float(t)/range(t).
SYNC_METHODS = ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


class HostSyncError(RuntimeError):
    pass


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Any read of a tensor value on the host raises `HostSyncError` inside this block."""

    def refuse(self: Tensor, *args: Any, **kwargs: Any) -> Any:
        raise HostSyncError("a tensor value was read on the host")

    with pytest.MonkeyPatch.context() as patch:
        for method in SYNC_METHODS:
            patch.setattr(torch.Tensor, method, refuse)
        yield


def _every_entry_point(net: ActorCriticCore) -> None:
    """forward, get_action and evaluate_actions with masks, slot_by_op and a floor."""
    state, bp = observation()
    masks = {f"{n}_mask": _all_true(size) for n, size in net.action_space.sizes.items()}
    step_masks = {k: v[:, 0] for k, v in masks.items()}
    slot_by_op = _slot_by_op("")
    out = net(state, bp, **masks, probability_floor=0.01)
    out["value"].sum().backward()
    result = net.get_action(
        state[:, 0], bp[:, 0], net.get_initial_hidden(B), **step_masks,
        slot_by_op_mask=slot_by_op, probability_floor=0.01, return_op_logits=True,
    )
    actions = {k: v[:, None].expand(B, T).contiguous() for k, v in result.actions.items()}
    evaluated = net.evaluate_actions(
        state, bp, actions, **masks, probability_floor=0.01, slot_by_op_mask=slot_by_op
    )
    (evaluated.value.sum() + sum(lp.sum() for lp in evaluated.log_probs.values())).backward()
    net.predict_contributions(state[:, 0], bp[:, 0])


def test_no_host_sync_with_validation_off(net: ActorCriticCore) -> None:
    _every_entry_point(net)  # warm-up: caches (slot context) are filled outside the patch
    with validation(False):
        with forbid_host_sync():
            _every_entry_point(net)


def test_value_checks_do_read_values_with_validation_on(net: ActorCriticCore) -> None:
    _every_entry_point(net)
    with validation(True):
        with forbid_host_sync(), pytest.raises(HostSyncError):
            _every_entry_point(net)


def test_value_checks_are_skipped_with_validation_off(net: ActorCriticCore) -> None:
    state, bp = observation()
    bad_state = _nan(state, float("nan"))
    with validation(False):
        out = net(bad_state, bp)  # no check: the NaN flows through
    assert torch.isnan(out["value"]).any()
    with validation(True):
        expect_error(lambda: net(bad_state, bp), ValueError, ["state", "1 NaN"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync debug mode needs a GPU")
def test_no_cuda_sync_with_validation_off() -> None:
    for kind in KINDS:
        net = make_net(kind).cuda()
        state, bp = (t.cuda() for t in observation())
        actions = {k: v.cuda() for k, v in wait_actions().items()}
        net(state, bp)
        net.get_action(state[:, 0], bp[:, 0])
        net.evaluate_actions(state, bp, actions)
        torch.cuda.synchronize()
        with validation(False):
            torch.cuda.set_sync_debug_mode("error")
            try:
                net(state, bp)
                net.get_action(state[:, 0], bp[:, 0])
                net.evaluate_actions(state, bp, actions)
            finally:
                torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------- numerical safety
def _loss(net: ActorCriticCore, state: Tensor, bp: Tensor) -> Tensor:
    """A PPO-like loss over every documented output, so every parameter gets a gradient."""
    actions, _, _ = rollout(net, state, bp)  # valid (canonicalised) actions
    evaluated = net.evaluate_actions(state, bp, actions, aux_stop_gradient=False)
    return (
        sum(lp.sum() for lp in evaluated.log_probs.values())
        + sum(e.sum() for e in evaluated.entropies.values())
        + evaluated.value.float().sum()
        + evaluated.q_value.float().sum()  # Q is auxiliary (detached): it trains its own head
        + evaluated.pred_contributions.float().sum()
    )


def _assert_finite_outputs_and_gradients(net: ActorCriticCore, state: Tensor, bp: Tensor) -> None:
    out = net(state, bp)
    for key, value in out.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), key
    net.zero_grad()
    loss = _loss(net, state, bp)
    assert torch.isfinite(loss)
    loss.backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    result = net.get_action(state[:, 0], bp[:, 0])
    for name, log_prob in result.log_probs.items():
        assert torch.isfinite(log_prob).all(), name
    assert torch.isfinite(result.values).all()


@pytest.mark.parametrize("kind", KINDS)
def test_all_slots_empty_gives_finite_outputs_and_gradients(kind: str) -> None:
    net = make_net(kind)
    state, _ = observation()
    _assert_finite_outputs_and_gradients(net, state, torch.full((B, T, N), -1))


@pytest.mark.parametrize("kind", KINDS)
def test_single_slot_gives_finite_outputs_and_a_certain_slot_choice(kind: str) -> None:
    net = make_net(kind, slot_config=SlotConfig(("r0c0",)))
    state, bp = observation(num_slots=1)
    _assert_finite_outputs_and_gradients(net, state, bp)
    result = net.get_action(state[:, 0], bp[:, 0])
    assert torch.equal(result.actions["slot"], torch.zeros(B, dtype=torch.long))
    assert torch.equal(result.log_probs["slot"], torch.zeros(B))


@pytest.mark.parametrize("kind", KINDS)
def test_max_slots_8x8_grid_gives_finite_outputs_and_gradients(kind: str) -> None:
    grid = SlotConfig.for_grid(8, 8)
    net = make_net(kind, slot_config=grid)
    state, bp = observation(num_slots=64)
    _assert_finite_outputs_and_gradients(net, state, bp)
    if kind == "transformer":
        # The 3-slot network runs the same weights on the 64-slot grid.
        small = make_net("transformer")
        out = small(state, bp, slot_config=grid)
        assert out["slot_logits"].shape == (B, T, 64)
        assert torch.isfinite(out["slot_logits"]).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_features_of_magnitude_1e4_give_finite_outputs_and_gradients(kind: str, scale: float) -> None:
    net = make_net(kind)
    state, bp = observation()
    _assert_finite_outputs_and_gradients(net, state * scale, bp)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_near_the_masked_value_keep_an_exact_distribution(kind: str) -> None:
    # The op head outputs constant logits around MASKED_LOGIT_VALUE (-1e4) and below it.
    net = make_net(kind)
    op_out = [m for m in net.head_module("op").modules() if isinstance(m, torch.nn.Linear)][-1]
    biases = torch.tensor([-1e4, -1e4 + 0.5, -2e4, -1e4 - 1.0, -1e4 + 2.0, -3e4])
    with torch.no_grad():
        op_out.weight.zero_()
        op_out.bias.copy_(biases)
    op_mask = torch.tensor([True, True, False, True, False, True]).expand(64, NUM_OPS)
    state, bp = observation(batch=64, steps=1)
    result = net.get_action(state[:, 0], bp[:, 0], op_mask=op_mask)
    valid = op_mask[0]
    expected = torch.full((NUM_OPS,), float("-inf"))
    expected[valid] = torch.log_softmax(biases[valid].double(), dim=0).float()
    chosen = result.actions["op"]
    assert valid[chosen].all(), "a masked op was sampled"
    torch.testing.assert_close(result.log_probs["op"], expected[chosen], rtol=0, atol=1e-5)
    assert torch.isfinite(result.head_entropies["op"]).all()
    # -3e4 (far below the masked fill) is still a valid, finite choice: its log-prob is ~-2e4.
    actions = wait_actions(batch=64, steps=1, op=5)
    evaluated = net.evaluate_actions(state, bp, actions, op_mask=op_mask[:, None])
    torch.testing.assert_close(
        evaluated.log_probs["op"], expected[5].expand(64, 1), rtol=1e-6, atol=0
    )
    # The masked fill of the returned logits stays finite.
    logits = net(state, bp, op_mask=op_mask[:, None])["op_logits"]
    assert torch.isfinite(logits).all() and (logits[..., ~valid] == -1e4).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_network_gives_finite_outputs_and_gradients(
    kind: str, dtype: torch.dtype
) -> None:
    net = make_net(kind).to(dtype)
    state, bp = observation()
    state = state.to(dtype)
    out = net(state, bp)
    assert out["value"].dtype == dtype and out["op_logits"].dtype == dtype
    _assert_finite_outputs_and_gradients(net, state, bp)
    hidden = net.get_initial_hidden(B)
    assert hidden[0].dtype == dtype
    result = net.get_action(state[:, 0], bp[:, 0], hidden)
    # Distribution math is fp32 whatever the network's dtype.
    assert all(lp.dtype == torch.float32 for lp in result.log_probs.values())
    assert result.hidden[0].dtype == dtype


# bf16 keeps 8 significant bits (relative error ~4e-3 per rounding). With O(1) logits the
# log-probs measured max 0.06 and mean 0.003 away from fp32 (64 x 8 steps, 3 seeds).
BF16_LOG_PROB_MAX_ABS = 0.1
BF16_LOG_PROB_MEAN_ABS = 0.01


def _sharpen(net: ActorCriticCore) -> ActorCriticCore:
    """Re-initialise every head's output layer at gain 1 so logits are O(1), not ~0."""
    torch.manual_seed(7)
    for name in net.action_space.head_names:
        last = [m for m in net.head_module(name).modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.orthogonal_(last.weight, gain=1.0)
    return net


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_log_probs_are_close_to_fp32(kind: str) -> None:
    net = _sharpen(make_net(kind))
    state, bp = observation(batch=32, steps=4)
    actions, _, _ = rollout(net, state, bp)
    reference = net.evaluate_actions(state, bp, actions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net.evaluate_actions(state, bp, actions)
    diffs = []
    for name in actions:
        assert low.log_probs[name].dtype == torch.float32
        diffs.append((low.log_probs[name] - reference.log_probs[name]).abs().flatten())
    diff = torch.cat(diffs)
    assert diff.max() <= BF16_LOG_PROB_MAX_ABS and diff.mean() <= BF16_LOG_PROB_MEAN_ABS
    assert diff.max() > 0  # autocast really ran in bf16
    torch.testing.assert_close(low.value.float(), reference.value, rtol=0, atol=5e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_rollout_and_update_agree_exactly(kind: str) -> None:
    net = _sharpen(make_net(kind))
    state, bp = observation(batch=8, steps=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions, rollout_log_probs, rollout_values = rollout(net, state, bp)
        hidden = net.get_initial_hidden(state.shape[0])
        for t in range(state.shape[1]):
            step = net.evaluate_actions(
                state[:, t : t + 1], bp[:, t : t + 1],
                {k: v[:, t : t + 1] for k, v in actions.items()}, hidden=hidden,
            )
            hidden = step.hidden
            for name, log_prob in rollout_log_probs.items():
                assert torch.equal(step.log_probs[name][:, 0], log_prob[:, t]), (name, t)
            assert torch.equal(step.value[:, 0], rollout_values[:, t])


# ---------------------------------------------------------------------- determinism
def _assert_same_result(a: Any, b: Any) -> None:
    """Bit-for-bit equality of nested dicts / tuples of tensors."""
    if isinstance(a, Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_result(a[key], b[key])
    elif isinstance(a, tuple | list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_result(x, y)
    elif dataclasses.is_dataclass(a):  # the result records
        assert type(a) is type(b)
        for field in dataclasses.fields(a):
            _assert_same_result(getattr(a, field.name), getattr(b, field.name))
    else:
        assert a == b


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_and_inputs_give_the_same_actions_and_log_probs(kind: str) -> None:
    # Two networks built from the same seed (not copies), sampled under the same global seed.
    first = _build_net.__wrapped__(kind, None, 5)
    second = _build_net.__wrapped__(kind, None, 5)
    state, bp = observation()
    results = []
    for net in (first, second):
        torch.manual_seed(11)
        results.append(net.get_action(state[:, 0], bp[:, 0]))
    _assert_same_result(results[0], results[1])
    # With an explicit generator the global seed does not matter.
    torch.manual_seed(1)
    a = first.get_action(state[:, 0], bp[:, 0], generator=torch.Generator().manual_seed(3))
    torch.manual_seed(2)
    b = second.get_action(state[:, 0], bp[:, 0], generator=torch.Generator().manual_seed(3))
    _assert_same_result(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_actions_is_deterministic_in_train_mode(kind: str) -> None:
    net = make_net(kind).train()
    state, bp = observation(batch=8, steps=4)
    actions, _, _ = rollout(net, state, bp)
    first = net.evaluate_actions(state, bp, actions)
    second = net.evaluate_actions(state, bp, actions)
    # Policy and value path: no dropout, so bit for bit equal.
    _assert_same_result(first.log_probs, second.log_probs)
    _assert_same_result(first.entropies, second.entropies)
    _assert_same_result(first.hidden, second.hidden)
    for field in ("value", "q_value", "state_value"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    # The flat network's auxiliary contribution predictor has Dropout(0.1) (as the reference
    # network's), so in train mode its predictions differ between calls; the transformer's
    # has none by default (contribution_dropout=0.0). In eval mode neither differs.
    if kind == "lstm":
        assert not torch.equal(first.pred_contributions, second.pred_contributions)
    else:
        assert torch.equal(first.pred_contributions, second.pred_contributions)
    net.eval()
    third = net.evaluate_actions(state, bp, actions)
    fourth = net.evaluate_actions(state, bp, actions)
    assert torch.equal(third.pred_contributions, fourth.pred_contributions)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_reload_reproduces_outputs_bit_for_bit(kind: str) -> None:
    source = make_net(kind, seed=0).eval()
    target = make_net(kind, seed=1).eval()
    state, bp = observation(batch=4, steps=3)
    actions, _, _ = rollout(source, state, bp)
    assert not torch.equal(source(state, bp)["value"], target(state, bp)["value"])
    target.load_state_dict(source.state_dict())
    outputs = []
    for net in (source, target):
        torch.manual_seed(4)  # forward samples the op that Q is evaluated at
        forward = net(state, bp)
        step = net.get_action(state[:, 0], bp[:, 0], generator=torch.Generator().manual_seed(9))
        evaluated = net.evaluate_actions(state, bp, actions)
        contributions = net.predict_contributions(state[:, 0], bp[:, 0])
        outputs.append((forward, step, tuple(evaluated), evaluated.state_value, contributions))
    _assert_same_result(outputs[0], outputs[1])


# ---------------------------------------------------------------------- a bad row, validation off
@pytest.mark.parametrize("kind", KINDS)
def test_a_mask_row_with_no_valid_action_is_finite_and_counted_with_validation_off(
    kind: str,
) -> None:
    # One environment row whose op mask allows nothing used to give op 0 with log-prob -inf,
    # and so NaN PPO ratios for the whole minibatch. Now it falls back to action 0 (log-prob
    # 0, entropy 0, no gradient through that row) and network.empty_mask_rows counts it.
    net = make_net(kind).train()
    state, bp = observation(batch=4, steps=3)
    op_mask = torch.ones(4, 3, NUM_OPS, dtype=torch.bool)
    op_mask[1, 2] = False  # one bad row at batch 1, step 2
    blueprint_mask = torch.ones(4, 3, 13, dtype=torch.bool)
    blueprint_mask[2, 0] = False  # an empty row of a head that the chosen op may make irrelevant
    with validation(False):
        before = int(net.empty_mask_rows)
        step = net.get_action(state[:, 2], bp[:, 2], op_mask=op_mask[:, 2])
        assert int(step.actions["op"][1]) == 0 and float(step.log_probs["op"][1]) == 0.0
        assert int(net.empty_mask_rows) - before == 1
        hidden, steps = net.get_initial_hidden(4), []
        for t in range(3):  # the rollout meets the bad rows too
            out = net.get_action(
                state[:, t], bp[:, t], hidden,
                op_mask=op_mask[:, t], blueprint_mask=blueprint_mask[:, t],
            )
            hidden = out.hidden
            steps.append(out.actions)
        actions = {k: torch.stack([s[k] for s in steps], dim=1).clone() for k in steps[0]}
        at_rollout = int(net.empty_mask_rows) - before - 1
        result = net.evaluate_actions(
            state, bp, actions, op_mask=op_mask, blueprint_mask=blueprint_mask
        )
    # The op row, plus the blueprint row when its op made the head relevant (GERMINATE);
    # counted once by the rollout and once by the update.
    expected = 1 + int(int(actions["op"][2, 0]) == int(Op.GERMINATE))
    assert at_rollout == expected
    assert int(net.empty_mask_rows) - before - 1 == 2 * expected
    for name in result.log_probs:
        assert torch.isfinite(result.log_probs[name]).all(), name
        assert torch.isfinite(result.entropies[name]).all(), name
    assert float(result.log_probs["op"][1, 2].detach()) == 0.0
    loss = sum(lp.sum() for lp in result.log_probs.values()) + result.value.sum()
    loss = loss + sum(h.sum() for h in result.entropies.values())
    loss.backward()
    for name, param in net.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
    # With validation on, the same row is still the clear error.
    with pytest.raises(InvalidStateMachineError, match="op_mask"):
        net.get_action(state[:, 2], bp[:, 2], op_mask=op_mask[:, 2])
