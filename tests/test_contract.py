"""The reference network's contract, exactly (issue #14): what a caller of esper-lite's
``FactoredRecurrentActorCritic`` relies on, checked on both networks.

V(s) as ``value``; Q(s, op) for any op from ``forward``'s ``lstm_out``, detached from the
trunk; the clip-and-renormalise floor; irrelevant heads scoring 0 whatever was stored;
finite log-probs for forbidden stored actions with validation off; ``[B, 1, n]`` masks; any
``state_dim`` for the flat network; the size attributes and argument order; int32 blueprint
indices. Also the generic inputs built on it: structured observations, ``episode_starts``
and the optional auxiliary heads.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from slotformer import (
    LOG_PROB_MIN,
    ActionSpace,
    FactoredRecurrentActorCritic,
    HeadSpec,
    SlotConfig,
    SlotObservation,
    SlotTransformerActorCritic,
    validation,
)
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.inputs import read_inputs
from slotformer.networks.lstm import LSTMConfig
from slotformer.networks.transformer import TransformerConfig

KINDS = ("transformer", "lstm")
B, T, N = 3, 5, 3
STATE_DIM = 23 + 31 * N
WAIT, GERMINATE, PRUNE = 0, 1, 3


def make_net(kind: str, **kwargs: Any) -> ActorCriticCore:
    """A small network; ``kwargs``: ``state_dim``, ``action_space`` or config fields."""
    torch.manual_seed(0)
    state_dim = kwargs.pop("state_dim", STATE_DIM)
    space = kwargs.pop("action_space", None)
    if kind == "transformer":
        config = TransformerConfig(embed_dim=16, transformer_layers=1, transformer_heads=2,
                                   head_hidden=16, lstm_hidden_dim=16, **kwargs)
        return SlotTransformerActorCritic(state_dim, config=config, action_space=space)
    return FactoredRecurrentActorCritic(state_dim, 16, 16, config=LSTMConfig(**kwargs),
                                       action_space=space)


def observation(seed: int = 0, steps: int = T) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(B, steps, STATE_DIM, generator=gen)
    bp = torch.randint(-1, 13, (B, steps, N), generator=gen)
    return state, bp


def rollout_actions(net: ActorCriticCore, state: Tensor, bp: Tensor) -> dict[str, Tensor]:
    """Valid stored actions for every step (from get_action, step by step)."""
    hidden = None
    steps = []
    for t in range(state.shape[1]):
        step = net.get_action(state[:, t], bp[:, t], hidden, generator=torch.Generator().manual_seed(t))
        hidden = step.hidden
        steps.append(step.actions)
    return {k: torch.stack([s[k] for s in steps], dim=1) for k in steps[0]}


# ---------------------------------------------------------------------- values
@pytest.mark.parametrize("kind", KINDS)
def test_value_is_v_of_s_by_default_and_q_on_request(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    out = net(state, bp)
    assert torch.equal(out["value"], out["state_value"])
    step = net.get_action(state[:, 0], bp[:, 0])
    torch.testing.assert_close(step.value, out["state_value"][:, 0], atol=1e-6, rtol=0)
    actions = rollout_actions(net, state, bp)
    ev = net.evaluate_actions(state, bp, actions)
    assert torch.equal(ev.value, ev.state_value)
    assert torch.equal(ev.to_tuple()[1], ev.state_value)  # the reference's tuple: V(s)
    q_net = make_net(kind, value_baseline="q")
    ev_q = q_net.evaluate_actions(state, bp, actions)
    assert torch.equal(ev_q.value, ev_q.q_value)


@pytest.mark.parametrize("kind", KINDS)
def test_compute_q_on_lstm_out_gives_q_of_any_op(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    out = net(state, bp)
    torch.testing.assert_close(net._compute_q(out["lstm_out"], out["sampled_op"]), out["q_value"])
    torch.testing.assert_close(net._compute_state_value(out["lstm_out"]), out["state_value"])
    # Q of every op at once, as the reference's PPO update asks for it.
    lstm_out = out["lstm_out"][:1, :1]  # [1, 1, H]
    ops = torch.arange(net.num_ops).view(-1, 1)  # [O, 1]
    every = net.compute_q(lstm_out.expand(net.num_ops, 1, -1), ops).view(-1)  # [O]
    one_by_one = torch.stack([net.compute_q(lstm_out, torch.tensor([[o]])).view(()) for o in range(net.num_ops)])
    torch.testing.assert_close(every, one_by_one)
    with pytest.raises(ValueError, match=r"op has dtype torch.int32, expected torch.int64"):
        net.compute_q(lstm_out, torch.zeros(1, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"lstm_out has shape \(1, 1, 7\).*lstm_hidden_dim=16"):
        net.compute_q(torch.zeros(1, 1, 7), torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize("kind", KINDS)
def test_q_loss_trains_the_q_head_only(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    ev = net.evaluate_actions(state, bp, rollout_actions(net, state, bp))
    ev.q_value.pow(2).sum().backward()
    trained = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(n.startswith("q_head.") for n in trained), sorted(trained)
    assert any(n.startswith("q_head.") for n in trained)


# ---------------------------------------------------------------------- floors and scoring
@pytest.mark.parametrize("kind", KINDS)
def test_floor_below_every_probability_leaves_the_policy_unchanged(kind: str) -> None:
    net = make_net(kind)  # near-uniform initial policy: every p is far above 0.01
    state, bp = observation()
    actions = rollout_actions(net, state, bp)
    plain = net.evaluate_actions(state, bp, actions)
    floored = net.evaluate_actions(state, bp, actions, probability_floor=0.01)
    for name in plain.log_probs:
        torch.testing.assert_close(floored.log_probs[name], plain.log_probs[name], atol=1e-6, rtol=0)
    mixed = make_net(kind, floor_mode="mix").evaluate_actions(state, bp, actions, probability_floor=0.01)
    assert not torch.allclose(mixed.log_probs["op"], plain.log_probs["op"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("validate", [True, False])
def test_irrelevant_heads_score_zero_whatever_was_stored(kind: str, validate: bool) -> None:
    net = make_net(kind)
    state, bp = observation()
    gen = torch.Generator().manual_seed(3)
    actions = {
        name: torch.randint(0, size, (B, T), generator=gen) for name, size in net.action_space.sizes.items()
    }
    actions["op"] = torch.full((B, T), WAIT)  # WAIT: every head but op is irrelevant
    with validation(validate):
        ev = net.evaluate_actions(state, bp, actions)
    for name, lp in ev.log_probs.items():
        if name != "op":
            assert (lp == 0).all(), name
            assert (ev.entropies[name] == 0).all(), name
    assert torch.isfinite(ev.log_probs["op"]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_forbidden_stored_action_is_an_error_with_validation_and_finite_without(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    actions = rollout_actions(net, state, bp)
    actions["op"] = torch.full((B, T), PRUNE)
    op_mask = torch.ones(B, T, net.num_ops, dtype=torch.bool)
    op_mask[..., PRUNE] = False
    with pytest.raises(ValueError, match=r"masks forbid.*'op': 15"):
        net.evaluate_actions(state, bp, actions, op_mask=op_mask)
    with validation(False):
        ev = net.evaluate_actions(state, bp, actions, op_mask=op_mask)
    assert (ev.log_probs["op"] == LOG_PROB_MIN).all()
    total = sum(lp.sum() for lp in ev.log_probs.values()) + ev.value.sum()
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


# ---------------------------------------------------------------------- inputs
@pytest.mark.parametrize("kind", KINDS)
def test_masks_of_one_step_broadcast_over_time(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    op_mask = torch.tensor([True, True, False, True, True, False]).expand(B, 1, 6)
    actions = rollout_actions(net, state, bp)
    actions["op"] = torch.where((actions["op"] == 2) | (actions["op"] == 5), WAIT, actions["op"])
    one = net.evaluate_actions(state, bp, actions, op_mask=op_mask)
    full = net.evaluate_actions(state, bp, actions, op_mask=op_mask.expand(B, T, 6))
    for name in one.log_probs:
        assert torch.equal(one.log_probs[name], full.log_probs[name])
    assert torch.equal(net(state, bp, op_mask=op_mask)["op_logits"], net(state, bp, op_mask=op_mask.expand(B, T, 6))["op_logits"])


def test_flat_network_takes_any_state_dim() -> None:
    net = make_net("lstm", state_dim=51)  # (51 - 23) / 3 slots is not a whole slot block
    state = torch.randn(B, T, 51)
    bp = torch.full((B, T, N), -1)
    ev = net.evaluate_actions(state, bp, rollout_actions(net, state, bp))
    assert ev.value.shape == (B, T) and net.layout is None
    with pytest.raises(ValueError, match=r"50\), expected \[B, T, D\] .* D=state_dim=51"):
        net(torch.randn(B, T, 50), bp)


@pytest.mark.parametrize("kind", KINDS)
def test_size_attributes_are_the_reference_networks(kind: str) -> None:
    net = make_net(kind)
    sizes = (net.num_slots, net.num_blueprints, net.num_styles, net.num_tempo,
             net.num_alpha_targets, net.num_alpha_speeds, net.num_alpha_curves, net.num_ops)
    assert sizes == (3, 13, 4, 3, 3, 4, 5, 6)
    custom = ActionSpace(
        (HeadSpec("op", 2), HeadSpec("target", N, frozenset({1}))), op_head="op", pointer_head="target"
    )
    other = make_net(kind, action_space=custom)
    assert other.num_slots == N and dict(other.action_space.sizes) == {"op": 2, "target": N}
    assert not hasattr(other, "num_blueprints")  # no such head here: see action_space.sizes
    state, bp = observation()
    assert other(state, bp)["target_logits"].shape == (B, T, N)


@pytest.mark.parametrize("kind", KINDS)
def test_get_action_takes_slot_by_op_mask_fifth_and_int32_blueprints(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation(steps=1)
    by_op = torch.zeros(B, net.num_ops, N, dtype=torch.bool)
    by_op[..., 2] = True  # every op may only target slot 2
    op_mask = torch.zeros(B, net.num_ops, dtype=torch.bool)
    op_mask[:, GERMINATE] = True
    step = net.get_action(
        state[:, 0], bp[:, 0], None, None, by_op, None, None, None, None, None, None, op_mask
    )
    assert (step.actions["slot"] == 2).all() and (step.actions["op"] == GERMINATE).all()
    deterministic = {"deterministic": True}
    wide = net.get_action(state[:, 0], bp[:, 0], **deterministic)
    narrow = net.get_action(state[:, 0], bp[:, 0].int(), **deterministic)
    for name in wide.actions:
        assert torch.equal(wide.actions[name], narrow.actions[name])
        assert torch.equal(wide.log_probs[name], narrow.log_probs[name])


# ---------------------------------------------------------------------- structured observations
@pytest.mark.parametrize("kind", KINDS)
def test_structured_observation_equals_the_flat_vector(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    obs = SlotObservation.from_flat(state, net.layout, slot_types=bp)
    actions = rollout_actions(net, state, bp)
    flat = net.evaluate_actions(state, bp, actions)
    structured = net.evaluate_actions(obs, None, actions)
    for name in flat.log_probs:
        assert torch.equal(flat.log_probs[name], structured.log_probs[name])
    assert torch.equal(flat.value, structured.value)
    # Separate tensors (not views of one vector) give the same result.
    copied = SlotObservation(obs.base.clone(), obs.slots.clone(), bp.int())
    assert torch.equal(net(copied, None)["op_logits"], net(state, bp)["op_logits"])
    step = net.get_action(SlotObservation(obs.base[:, 0], obs.slots[:, 0], bp[:, 0]), None, deterministic=True)
    assert step.value.shape == (B,)


def test_flat_observations_are_split_into_views_not_copied() -> None:
    net = make_net("transformer")
    state, bp = observation()
    inputs = read_inputs(net.slot_context(), next(net.parameters()), state, bp)
    assert inputs.base is not None and inputs.slots is not None
    assert inputs.base.data_ptr() == state.data_ptr() == inputs.slots.data_ptr() - 23 * 4
    assert inputs.slots.shape == (B, T, N, 31)
    obs = SlotObservation(torch.randn(B, T, 23), torch.randn(B, T, N, 31))
    structured = read_inputs(net.slot_context(), next(net.parameters()), obs, None)
    assert structured.base is obs.base and structured.slots is obs.slots
    assert structured.active.all()  # no types and no activity given: every slot active


@pytest.mark.parametrize("kind", KINDS)
def test_bad_structured_observation_names_the_part(kind: str) -> None:
    net = make_net(kind)
    base, slots = torch.randn(B, T, 23), torch.randn(B, T, N, 31)
    with pytest.raises(ValueError, match=r"state.base has shape \(3, 5, 22\).*base_dim=23"):
        net(SlotObservation(base[..., :22], slots), None)
    with pytest.raises(ValueError, match=r"state.slots has shape \(3, 5, 3, 30\), expected \(3, 5, 3, 31\)"):
        net(SlotObservation(base, slots[..., :30]), None)
    with pytest.raises(ValueError, match="blueprint_indices=None with a SlotObservation"):
        net(SlotObservation(base, slots), torch.full((B, T, N), -1))
    with pytest.raises(ValueError, match=r"slot_types has dtype torch.float32"):
        net(SlotObservation(base, slots, torch.zeros(B, T, N)), None)


# ---------------------------------------------------------------------- episode starts
@pytest.mark.parametrize("kind", KINDS)
def test_episode_starts_equal_separate_sequences_from_zero_state(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation()
    actions = rollout_actions(net, state, bp)
    starts = torch.zeros(B, T, dtype=torch.bool)
    starts[0, 2] = True  # env 0: a new episode at step 2
    starts[1, 0] = True  # env 1: the given hidden state is dropped
    gen = torch.Generator().manual_seed(9)
    hidden = tuple(torch.randn(1, B, 16, generator=gen) for _ in range(2))

    joined = net.evaluate_actions(state, bp, actions, hidden=hidden, episode_starts=starts)
    joined_loss = sum(lp.sum() for lp in joined.log_probs.values()) + joined.value.sum()
    joined_grads = torch.autograd.grad(joined_loss, list(net.parameters()), allow_unused=True)

    def part(rows: slice, steps: slice, start_hidden: Any) -> Any:
        return net.evaluate_actions(
            state[rows, steps], bp[rows, steps], {k: v[rows, steps] for k, v in actions.items()},
            hidden=start_hidden,
        )

    h0 = (hidden[0][:, 0:1], hidden[1][:, 0:1])
    pieces = [part(slice(0, 1), slice(0, 2), h0), part(slice(0, 1), slice(2, T), None),
              part(slice(1, 2), slice(0, T), None),
              part(slice(2, 3), slice(0, T), (hidden[0][:, 2:3], hidden[1][:, 2:3]))]
    split_loss = sum(sum(lp.sum() for lp in p.log_probs.values()) + p.value.sum() for p in pieces)
    split_grads = torch.autograd.grad(split_loss, list(net.parameters()), allow_unused=True)

    for name in joined.log_probs:
        row0 = torch.cat([pieces[0].log_probs[name], pieces[1].log_probs[name]], dim=1)
        expected = torch.cat([row0, pieces[2].log_probs[name], pieces[3].log_probs[name]])
        torch.testing.assert_close(joined.log_probs[name], expected, atol=1e-5, rtol=0)
    expected_value = torch.cat([torch.cat([pieces[0].value, pieces[1].value], 1), pieces[2].value, pieces[3].value])
    torch.testing.assert_close(joined.value, expected_value, atol=1e-5, rtol=0)
    for a, b in zip(joined_grads, split_grads):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # The final state is that of the last piece of each row.
    torch.testing.assert_close(joined.hidden[0][:, 0:1], pieces[1].hidden[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_get_action_episode_starts_reset_those_rows(kind: str) -> None:
    net = make_net(kind)
    state, bp = observation(steps=1)
    hidden = tuple(torch.randn(1, B, 16) for _ in range(2))
    starts = torch.tensor([True, False, True])
    step = net.get_action(state[:, 0], bp[:, 0], hidden, deterministic=True, episode_starts=starts)
    fresh = net.get_action(state[:, 0], bp[:, 0], None, deterministic=True)
    kept = net.get_action(state[:, 0], bp[:, 0], hidden, deterministic=True)
    torch.testing.assert_close(step.value[starts], fresh.value[starts], atol=1e-6, rtol=0)
    torch.testing.assert_close(step.value[~starts], kept.value[~starts], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"episode_starts has dtype torch.int64, expected torch.bool"):
        net.get_action(state[:, 0], bp[:, 0], hidden, episode_starts=starts.long())


# ---------------------------------------------------------------------- auxiliary heads
@pytest.mark.parametrize("kind", KINDS)
def test_auxiliary_heads_can_be_switched_off(kind: str) -> None:
    net = make_net(kind, use_q_head=False, use_contribution_head=False)
    assert not [n for n, _ in net.named_parameters() if "q_head" in n or "contribution" in n]
    state, bp = observation()
    out = net(state, bp)
    assert out["q_value"] is None and torch.equal(out["value"], out["state_value"])
    ev = net.evaluate_actions(state, bp, rollout_actions(net, state, bp))
    assert ev.q_value is None and ev.pred_contributions is None
    # A plain PPO loss (log-probs, entropies, value) reaches every parameter.
    loss = sum(lp.sum() for lp in ev.log_probs.values()) + ev.value.sum()
    loss = loss + sum(e.sum() for e in ev.entropies.values())
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="use_contribution_head=False"):
        net.predict_contributions(state, bp)
    with pytest.raises(ValueError, match="use_q_head=False"):
        net.compute_q(out["lstm_out"], out["sampled_op"])
    with pytest.raises(ValueError, match='value_baseline="q" needs the Q head'):
        make_net(kind, use_q_head=False, value_baseline="q")


def test_slot_vocabulary_is_configurable() -> None:
    net = make_net("transformer", num_slot_types=5)
    state, _ = observation()
    ok = torch.randint(-1, 5, (B, T, N))
    assert net(state, ok)["value"].shape == (B, T)
    with pytest.raises(ValueError, match=r"blueprint_indices.*\[5\]"):
        net(state, torch.full((B, T, N), 5))
    assert SlotConfig.for_grid(1, 3).num_slots == N


def test_a_transposed_slot_by_op_is_detected_when_slots_and_ops_are_as_many() -> None:
    """On a 2x3 grid (6 slots, 6 ops, the README's grid) a [B, N, num_ops] slot_by_op passes
    every shape check; with validation on, its rows for forbidden ops betray it."""
    import warnings

    from slotformer import SlotConfig, create_policy
    from slotformer.envs import SlotGardenEnv, random_valid_policy
    from slotformer.validation import validation

    slots = SlotConfig.for_grid(2, 3)
    env = SlotGardenEnv(8, slots, episode_length=12, seed=0)
    policy = create_policy("transformer", slot_config=slots, lstm_hidden_dim=16, embed_dim=16,
                           head_hidden=16)
    out, generator = env.reset(), torch.Generator().manual_seed(0)
    for _ in range(6):
        right = {**out.masks, "slot_by_op": out.slot_by_op}
        wrong = {**out.masks, "slot_by_op": out.slot_by_op.transpose(1, 2)}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            policy.get_action(out.obs, out.blueprint_indices, right)  # no warning
        with pytest.warns(UserWarning, match=r"\[B, num_ops, N\] \(op first\), not \[B, N, num_ops\]"):
            policy.get_action(out.obs, out.blueprint_indices, wrong)
        with validation(False), warnings.catch_warnings():
            warnings.simplefilter("error")  # no value checks, no warning, no host sync
            policy.get_action(out.obs, out.blueprint_indices, wrong)
        out = env.step(random_valid_policy(out, generator))
