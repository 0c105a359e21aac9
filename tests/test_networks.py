"""The two actor-critic networks against the compatibility contract of DESIGN.md.

Both `SlotTransformerActorCritic` and `FactoredRecurrentActorCritic` are checked on the same
things: output keys, shapes and dtypes; op-conditioned canonicalisation; masks; the
rollout/update log-prob identity; gradients; empty grids; state dicts; input errors. The
transformer alone is checked on grid transfer, parameter count, attention locality of the
contribution predictor and telemetry. Sizes are small so the file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn

from slotformer.actions import ActionSpace, canonicalize_masks
from slotformer.config import SlotConfig
from slotformer.distributions import (
    MASKED_LOGIT_VALUE,
    masked_log_probs,
    normalised_entropy,
    sample_actions,
)
from slotformer.networks import (
    ActorCriticCore,
    EvaluateActionsResult,
    FactoredRecurrentActorCritic,
    GetActionResult,
    SlotTransformerActorCritic,
)
from slotformer.networks.lstm import LSTMConfig
from slotformer.networks.transformer import PointerHead, TransformerConfig
from slotformer.presets.seed_lifecycle import (
    HEAD_NAMES,
    AlphaCurve,
    AlphaSpeed,
    AlphaTarget,
    BlueprintAction,
    Op,
    Style,
    Tempo,
)

BASE_DIM = 23
HIDDEN = 32  # lstm_hidden_dim of both test networks
NETWORKS = ("transformer", "lstm")
CANONICAL = {
    "blueprint": int(BlueprintAction.NOOP),
    "style": int(Style.SIGMOID_ADD),
    "tempo": int(Tempo.STANDARD),
    "alpha_target": int(AlphaTarget.FULL),
    "alpha_speed": int(AlphaSpeed.INSTANT),
    "alpha_curve": int(AlphaCurve.LINEAR),
}
"""DESIGN.md's canonical action of every non-pointer head that WAIT makes irrelevant."""


# --------------------------------------------------------------------------- helpers
def make_network(
    kind: str,
    num_slots: int = 3,
    slot_dim: int = 31,
    *,
    slot_config: SlotConfig | None = None,
    value_baseline: str = "q",
    lstm_layers: int = 1,
    seed: int = 0,
) -> ActorCriticCore:
    """A small network of either kind (state_dim = 23 + N * slot_dim)."""
    torch.manual_seed(seed)
    if slot_config is None:
        slot_config = SlotConfig.for_grid(1, num_slots)
    state_dim = BASE_DIM + slot_config.num_slots * slot_dim
    if kind == "transformer":
        return SlotTransformerActorCritic(state_dim, slot_config, lstm_hidden_dim=HIDDEN, lstm_layers=lstm_layers, config=TransformerConfig(embed_dim=32, head_hidden=64, value_baseline=value_baseline))
    return FactoredRecurrentActorCritic(state_dim, feature_dim=32, lstm_hidden_dim=HIDDEN, lstm_layers=lstm_layers, slot_config=slot_config, config=LSTMConfig(value_baseline=value_baseline))


def observation(
    batch: tuple[int, ...], num_slots: int = 3, slot_dim: int = 31, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Random flat states ``[*batch, D]`` and blueprint indices ``[*batch, N]`` (-1 = empty)."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(*batch, BASE_DIM + num_slots * slot_dim, generator=g)
    blueprint_indices = torch.randint(-1, 13, (*batch, num_slots), generator=g)
    return state, blueprint_indices


def random_masks(space: ActionSpace, batch: tuple[int, ...], seed: int) -> dict[str, Tensor]:
    """Random bool masks per head, each row with at least one valid action."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for head in space.heads:
        mask = torch.rand(*batch, head.size, generator=g) < 0.5
        forced = torch.randint(head.size, batch, generator=g)
        masks[head.name] = mask | nn.functional.one_hot(forced, head.size).bool()
    return masks


def mask_kwargs(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{name}_mask": mask for name, mask in masks.items()}


def valid_actions(space: ActionSpace, batch: tuple[int, ...], seed: int) -> dict[str, Tensor]:
    """Actions valid under all-True masks, canonical where irrelevant; ops cycle through all."""
    g = torch.Generator().manual_seed(seed)
    ops = (torch.arange(int(torch.tensor(batch).prod())) % space.num_ops).view(batch)
    masks = {h.name: torch.ones(*batch, h.size, dtype=torch.bool) for h in space.heads}
    canonical = canonicalize_masks(space, masks, ops)
    actions = {
        name: sample_actions(masked_log_probs(torch.zeros(*batch, space.sizes[name]), mask), g)
        for name, mask in canonical.items()
    }
    actions[space.op_head] = ops
    return actions


def relevant(space: ActionSpace, name: str, ops: Tensor) -> Tensor:
    """Bool like ``ops``: is head ``name`` relevant for each op."""
    relevant_ops = space.head(name).relevant_ops
    if relevant_ops is None:
        return torch.ones_like(ops, dtype=torch.bool)
    return torch.isin(ops, torch.tensor(sorted(relevant_ops)))


def ppo_loss(result: EvaluateActionsResult, seed: int = 0) -> Tensor:
    """A PPO-style loss touching every output a trainer uses."""
    g = torch.Generator().manual_seed(seed)
    advantage = torch.randn(result.value.shape, generator=g)
    returns = torch.randn(result.value.shape, generator=g)
    log_prob = torch.stack(list(result.log_probs.values())).sum(0)  # [B, T]
    ratio = torch.exp(log_prob - log_prob.detach())
    policy = -(ratio * advantage).mean()
    entropy = torch.stack(list(result.entropies.values())).mean()
    value = (result.value - returns).pow(2).mean()
    q_value = (result.q_value - returns).pow(2).mean()
    state_value = (result.state_value - returns).pow(2).mean()
    contribution = (result.pred_contributions - 1.0).pow(2).mean()
    return policy - 0.01 * entropy + value + q_value + state_value + contribution


# --------------------------------------------------------------------------- shapes, keys, dtypes
@pytest.mark.parametrize("slot_dim", [31, 39])
@pytest.mark.parametrize("kind", NETWORKS)
def test_forward_keys_shapes_and_dtypes(kind: str, slot_dim: int) -> None:
    net = make_network(kind, slot_dim=slot_dim)
    assert net.state_dim == {31: 116, 39: 140}[slot_dim]
    B, T, N = 2, 4, 3
    state, bp = observation((B, T), N, slot_dim)
    out = net(state, bp)
    sizes = {"slot": N, "blueprint": 13, "style": 4, "tempo": 3, "alpha_target": 3,
             "alpha_speed": 4, "alpha_curve": 5, "op": 6}
    expected_keys = {f"{h}_logits" for h in HEAD_NAMES} | {
        "value", "state_value", "q_value", "lstm_out", "sampled_op", "hidden"}
    assert set(out) == expected_keys
    for head, n in sizes.items():
        assert out[f"{head}_logits"].shape == (B, T, n), head
        assert out[f"{head}_logits"].dtype == torch.float32
    for key in ("value", "state_value", "q_value"):
        assert out[key].shape == (B, T) and out[key].dtype == torch.float32
    assert out["lstm_out"].shape == (B, T, HIDDEN)
    assert out["sampled_op"].shape == (B, T) and out["sampled_op"].dtype == torch.int64
    h, c = out["hidden"]
    assert h.shape == c.shape == (1, B, HIDDEN)
    # value_baseline="q": value is Q(s, sampled op).
    assert torch.equal(out["value"], out["q_value"])


@pytest.mark.parametrize("slot_dim", [31, 39])
@pytest.mark.parametrize("kind", NETWORKS)
def test_get_action_outputs(kind: str, slot_dim: int) -> None:
    net = make_network(kind, slot_dim=slot_dim)
    B, N = 5, 3
    state, bp = observation((B,), N, slot_dim)
    result = net.get_action(state, bp, net.get_initial_hidden(B))
    assert isinstance(result, GetActionResult)
    assert tuple(result.actions) == HEAD_NAMES  # the load-bearing head order
    assert tuple(result.log_probs) == HEAD_NAMES and tuple(result.head_entropies) == HEAD_NAMES
    for name in HEAD_NAMES:
        assert result.actions[name].shape == (B,) and result.actions[name].dtype == torch.int64
        assert result.log_probs[name].shape == (B,)
        assert result.log_probs[name].dtype == torch.float32
        entropy = result.head_entropies[name]
        assert entropy.shape == (B,) and entropy.dtype == torch.float32
        assert bool(((entropy >= 0) & (entropy <= 1)).all())
    assert result.values.shape == (B,) and result.values.dtype == torch.float32
    assert torch.equal(result.sampled_op, result.actions["op"])
    assert result.op_logits is None
    assert result.hidden[0].shape == result.hidden[1].shape == (1, B, HIDDEN)
    assert result.values.is_inference()  # get_action runs under torch.inference_mode

    # [B, 1, D] is accepted too, and return_op_logits gives the masked op logits.
    with_logits = net.get_action(state[:, None], bp[:, None], return_op_logits=True)
    assert with_logits.op_logits is not None
    assert with_logits.op_logits.shape == (B, 6)
    assert with_logits.actions["slot"].shape == (B,)


@pytest.mark.parametrize("value_baseline", ["q", "v"])
@pytest.mark.parametrize("slot_dim", [31, 39])
@pytest.mark.parametrize("kind", NETWORKS)
def test_evaluate_actions_outputs(kind: str, slot_dim: int, value_baseline: str) -> None:
    net = make_network(kind, slot_dim=slot_dim, value_baseline=value_baseline)
    B, T, N = 2, 6, 3
    state, bp = observation((B, T), N, slot_dim)
    result = net.evaluate_actions(state, bp, valid_actions(net.action_space, (B, T), seed=1))
    assert isinstance(result, EvaluateActionsResult)
    log_probs, value, entropy, hidden, pred_contributions, q_value = result  # the 6-tuple
    assert tuple(log_probs) == HEAD_NAMES and tuple(entropy) == HEAD_NAMES
    for name in HEAD_NAMES:
        assert log_probs[name].shape == (B, T) and log_probs[name].dtype == torch.float32
        assert bool(torch.isfinite(log_probs[name]).all())
        assert entropy[name].shape == (B, T) and entropy[name].dtype == torch.float32
    assert value.shape == q_value.shape == result.state_value.shape == (B, T)
    assert pred_contributions.shape == (B, T, N)
    assert hidden[0].shape == hidden[1].shape == (1, B, HIDDEN)
    selected = q_value if value_baseline == "q" else result.state_value
    assert torch.equal(value, selected)
    assert not torch.equal(q_value, result.state_value)


@pytest.mark.parametrize("kind", NETWORKS)
def test_predict_contributions_and_initial_hidden(kind: str) -> None:
    net = make_network(kind, lstm_layers=2)
    state, bp = observation((4, 3))
    assert net.predict_contributions(state[:, 0], bp[:, 0]).shape == (4, 3)
    assert net.predict_contributions(state, bp).shape == (4, 3, 3)
    h, c = net.get_initial_hidden(5, torch.device("cpu"))
    assert h.shape == c.shape == (2, 5, HIDDEN)
    assert h.dtype == c.dtype == torch.float32
    assert not bool(h.any()) and not bool(c.any())
    out = net(state, bp, (h[:, :4], c[:, :4]))
    assert out["hidden"][0].shape == (2, 4, HIDDEN)


# --------------------------------------------------------------------------- canonicalisation
@pytest.mark.parametrize("kind", NETWORKS)
def test_forced_wait_gives_canonical_actions_and_zero_log_prob(kind: str) -> None:
    net = make_network(kind)
    B, N = 64, 3
    state, bp = observation((B,), N)
    op_mask = torch.zeros(B, 6, dtype=torch.bool)
    op_mask[:, Op.WAIT] = True
    for slot_mask, expected_slot in ((None, 0), (torch.tensor([False, False, True]), N - 1)):
        masks = {"op_mask": op_mask}
        if slot_mask is not None:
            masks["slot_mask"] = slot_mask.expand(B, N)
        result = net.get_action(state, bp, **masks)
        assert bool((result.actions["op"] == Op.WAIT).all())
        assert bool((result.actions["slot"] == expected_slot).all())
        for name, action in CANONICAL.items():
            assert bool((result.actions[name] == action).all()), name
        for name in HEAD_NAMES:  # op too: it has a single valid action
            assert bool((result.log_probs[name] == 0.0).all()), name
            assert bool((result.head_entropies[name] == 0.0).all()), name
        evaluated = net.evaluate_actions(state[:, None], bp[:, None], result.actions, **masks)
        for name in HEAD_NAMES:
            assert bool((evaluated.log_probs[name] == 0.0).all()), name
            assert bool((evaluated.entropies[name] == 0.0).all()), name


@pytest.mark.parametrize("kind", NETWORKS)
def test_every_op_canonicalises_exactly_its_irrelevant_heads(kind: str) -> None:
    # DESIGN.md's relevance table, op by op: irrelevant heads are canonical with log-prob 0
    # and entropy 0; relevant heads keep a real choice (entropy > 0 with all actions valid).
    net = make_network(kind)
    space = net.action_space
    B = 16
    state, bp = observation((B,), seed=2)
    for op in Op:
        op_mask = nn.functional.one_hot(torch.full((B,), int(op)), 6).bool()
        result = net.get_action(state, bp, op_mask=op_mask)
        ops = result.actions["op"]
        assert bool((ops == op).all())
        for name in HEAD_NAMES:
            if name == "op":
                continue
            if bool(relevant(space, name, ops)[0]):
                assert bool((result.head_entropies[name] > 0).all()), (op.name, name)
                continue
            expected = CANONICAL.get(name, 0)  # the slot head: first valid index (all valid)
            assert bool((result.actions[name] == expected).all()), (op.name, name)
            assert bool((result.log_probs[name] == 0.0).all()), (op.name, name)
            assert bool((result.head_entropies[name] == 0.0).all()), (op.name, name)


@pytest.mark.parametrize("kind", NETWORKS)
def test_wait_with_no_valid_slot_still_acts(kind: str) -> None:
    # Every slot masked (nothing to act on): WAIT must still work, with log-prob 0.
    net = make_network(kind)
    state, bp = observation((8,))
    op_mask = nn.functional.one_hot(torch.zeros(8, dtype=torch.long), 6).bool()
    slot_mask = torch.zeros(8, 3, dtype=torch.bool)
    result = net.get_action(state, bp, op_mask=op_mask, slot_mask=slot_mask)
    assert bool((result.actions["op"] == Op.WAIT).all())
    assert bool((result.log_probs["slot"] == 0.0).all())


@pytest.mark.parametrize("kind", NETWORKS)
def test_slot_by_op_mask_is_respected(kind: str) -> None:
    net = make_network(kind)
    B, N = 64, 3
    state, bp = observation((B,), N)
    slot_by_op = torch.ones(B, 6, N, dtype=torch.bool)
    slot_by_op[:, Op.GERMINATE] = torch.tensor([False, True, False])
    slot_by_op[:, Op.PRUNE] = torch.tensor([True, False, True])

    germinate_only = torch.zeros(B, 6, dtype=torch.bool)
    germinate_only[:, Op.GERMINATE] = True
    for seed in range(3):
        result = net.get_action(
            state, bp, op_mask=germinate_only, slot_by_op_mask=slot_by_op,
            generator=torch.Generator().manual_seed(seed),
        )
        assert bool((result.actions["slot"] == 1).all())
        assert bool((result.log_probs["slot"] == 0.0).all())

    germinate_or_prune = germinate_only.clone()
    germinate_or_prune[:, Op.PRUNE] = True
    result = net.get_action(state, bp, op_mask=germinate_or_prune, slot_by_op_mask=slot_by_op)
    op, slot = result.actions["op"], result.actions["slot"]
    assert bool(((op == Op.GERMINATE) | (op == Op.PRUNE)).all())
    assert bool((slot[op == Op.GERMINATE] == 1).all())
    assert bool((slot[op == Op.PRUNE] != 1).all())


@pytest.mark.parametrize("kind", NETWORKS)
def test_pointer_never_masks_slots_for_being_empty(kind: str) -> None:
    # GERMINATE targets empty slots: validity comes only from the caller's masks.
    net = make_network(kind)
    B, N = 32, 3
    state, bp = observation((B,), N)
    bp[:, 0] = 5  # slot 0 active, slots 1 and 2 empty
    bp[:, 1:] = -1
    out = net(state[:, None], bp[:, None])
    assert bool((out["slot_logits"] > MASKED_LOGIT_VALUE / 2).all())
    op_mask = nn.functional.one_hot(torch.full((B,), int(Op.GERMINATE)), 6).bool()
    empty = bp < 0
    result = net.get_action(state, bp, op_mask=op_mask, slot_mask=empty)
    assert bool(empty.gather(1, result.actions["slot"][:, None]).all())


# --------------------------------------------------------------------------- masks and argmax
@pytest.mark.parametrize("kind", NETWORKS)
def test_masked_actions_are_never_chosen(kind: str) -> None:
    net = make_network(kind)
    space = net.action_space
    B = 256
    state, bp = observation((B,), seed=3)
    masks = random_masks(space, (B,), seed=4)
    for call, floor in enumerate((None, None, 0.05, {"slot": 0.2, "op": 0.1})):
        result = net.get_action(
            state, bp, **mask_kwargs(masks), probability_floor=floor,
            generator=torch.Generator().manual_seed(call),
        )
        op = result.actions["op"]
        for name in HEAD_NAMES:
            chosen_valid = masks[name].gather(1, result.actions[name][:, None])[:, 0]
            # An irrelevant head is forced to its canonical action whatever its mask says.
            must_be_valid = relevant(space, name, op) | (name == "slot")
            assert bool(chosen_valid[must_be_valid].all()), (name, floor)
            assert bool(torch.isfinite(result.log_probs[name]).all())


@pytest.mark.parametrize("kind", NETWORKS)
def test_deterministic_mode_picks_the_argmax(kind: str) -> None:
    net = make_network(kind).eval()
    space = net.action_space
    B = 64
    state, bp = observation((B,), seed=5)
    masks = random_masks(space, (B,), seed=6)
    hidden = net.get_initial_hidden(B)
    result = net.get_action(
        state, bp, hidden, **mask_kwargs(masks), deterministic=True, return_op_logits=True
    )
    assert result.op_logits is not None
    op = result.actions["op"]
    assert torch.equal(op, result.op_logits.argmax(-1))
    with torch.no_grad():
        out = net(state[:, None], bp[:, None], hidden, **mask_kwargs(masks))
    assert torch.equal(result.op_logits, out["op_logits"][:, 0])
    for name in HEAD_NAMES:
        rows = relevant(space, name, op)
        argmax = out[f"{name}_logits"][:, 0].argmax(-1)
        assert torch.equal(result.actions[name][rows], argmax[rows]), name
    again = net.get_action(state, bp, hidden, **mask_kwargs(masks), deterministic=True)
    for name in HEAD_NAMES:
        assert torch.equal(again.actions[name], result.actions[name])


@pytest.mark.parity
@pytest.mark.parametrize("floor", [None, 0.05, {"blueprint": 0.02, "op": 0.1}], ids=["none", "float", "map"])
@pytest.mark.parametrize("kind", NETWORKS)
def test_log_probs_and_entropies_are_each_heads_own_distribution(
    kind: str, floor: float | dict[str, float] | None
) -> None:
    # The policy step scores most heads padded side by side; every head must still get
    # exactly its own masked distribution: compare with masked_log_probs head by head.
    net = make_network(kind)
    space = net.action_space
    state, bp = observation((8, 3), seed=21)
    masks = random_masks(space, (8, 3), seed=22)
    flat = {k: v.flatten(0, 1) for k, v in masks.items()}
    rollout = net.get_action(state.flatten(0, 1), bp.flatten(0, 1), **mask_kwargs(flat))
    actions = {k: v.clone().view(8, 3) for k, v in rollout.actions.items()}  # valid actions
    with torch.no_grad():
        evaluated = net.evaluate_actions(
            state, bp, actions, **mask_kwargs(masks), probability_floor=floor
        )
        out = net(state, bp, **mask_kwargs(masks))
    canonical = canonicalize_masks(space, masks, actions["op"])
    floors = floor if isinstance(floor, dict) else dict.fromkeys(space.head_names, floor)
    for name in space.head_names:
        raw = out[f"{name}_logits"]  # masked with the base mask: same log-softmax
        log_probs = masked_log_probs(raw, canonical[name], floors.get(name))
        expected = log_probs.gather(-1, actions[name][..., None])[..., 0]
        torch.testing.assert_close(evaluated.log_probs[name], expected, rtol=0, atol=2e-6)
        entropy = normalised_entropy(log_probs, canonical[name])
        torch.testing.assert_close(evaluated.entropies[name], entropy, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- rollout == update
@pytest.mark.parity
@pytest.mark.parametrize("use_slot_by_op", [False, True])
@pytest.mark.parametrize(
    "floor", [None, 0.05, {"slot": 0.2, "op": 0.1, "blueprint": 0.02}], ids=["none", "float", "map"]
)
@pytest.mark.parametrize("kind", NETWORKS)
def test_get_action_log_probs_equal_evaluate_actions(
    kind: str, floor: float | dict[str, float] | None, use_slot_by_op: bool
) -> None:
    net = make_network(kind)
    space = net.action_space
    B = 32
    state, bp = observation((2, B), seed=7)
    masks = random_masks(space, (B,), seed=8)
    slot_by_op = None
    if use_slot_by_op:
        slot_by_op = torch.rand(B, 6, 3, generator=torch.Generator().manual_seed(9)) < 0.5
        slot_by_op |= nn.functional.one_hot(torch.randint(3, (B, 6)), 3).bool()
    # A non-zero hidden state, as mid-episode.
    hidden = net.get_action(state[0], bp[0]).hidden
    result = net.get_action(
        state[1], bp[1], hidden, **mask_kwargs(masks), slot_by_op_mask=slot_by_op,
        probability_floor=floor,
    )
    # get_action's outputs (inference tensors) go straight back in.
    evaluated = net.evaluate_actions(
        state[1][:, None], bp[1][:, None], result.actions, **mask_kwargs(masks),
        hidden=hidden, probability_floor=floor,
        slot_by_op_mask=slot_by_op,
    )
    for name in HEAD_NAMES:
        assert torch.equal(evaluated.log_probs[name][:, 0], result.log_probs[name]), name
        assert torch.equal(evaluated.entropies[name][:, 0], result.head_entropies[name]), name
    assert torch.equal(evaluated.value[:, 0], result.values)
    ppo_loss(evaluated).backward()  # inference-mode inputs did not poison the graph


@pytest.mark.parametrize("kind", NETWORKS)
def test_sequence_evaluation_matches_step_by_step_rollout(kind: str) -> None:
    net = make_network(kind)
    space = net.action_space
    B, T = 8, 4
    state, bp = observation((B, T), seed=10)
    masks = random_masks(space, (B, T), seed=11)
    start = net.get_initial_hidden(B)
    hidden = start
    steps = []
    for t in range(T):
        step_masks = {name: mask[:, t] for name, mask in masks.items()}
        result = net.get_action(state[:, t], bp[:, t], hidden, **mask_kwargs(step_masks))
        steps.append(result)
        hidden = result.hidden
    actions = {name: torch.stack([s.actions[name] for s in steps], 1) for name in HEAD_NAMES}
    evaluated = net.evaluate_actions(state, bp, actions, **mask_kwargs(masks), hidden=start)
    for name in HEAD_NAMES:
        rollout = torch.stack([s.log_probs[name] for s in steps], 1)
        torch.testing.assert_close(evaluated.log_probs[name], rollout, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluated.hidden[0], hidden[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", NETWORKS)
def test_log_probs_are_fp32_under_bf16_autocast(kind: str) -> None:
    net = make_network(kind)
    state, bp = observation((8,), seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = net.get_action(state, bp)
        evaluated = net.evaluate_actions(state[:, None], bp[:, None], result.actions)
    for name in HEAD_NAMES:
        assert result.log_probs[name].dtype == torch.float32
        assert evaluated.log_probs[name].dtype == torch.float32
        assert result.head_entropies[name].dtype == torch.float32
        assert torch.equal(evaluated.log_probs[name][:, 0], result.log_probs[name]), name


@pytest.mark.parametrize("kind", NETWORKS)
def test_evaluate_actions_is_deterministic_in_train_mode(kind: str) -> None:
    net = make_network(kind).train()
    B, T = 4, 5
    state, bp = observation((B, T), seed=13)
    actions = valid_actions(net.action_space, (B, T), seed=14)
    first = net.evaluate_actions(state, bp, actions)
    second = net.evaluate_actions(state, bp, actions)
    for name in HEAD_NAMES:
        assert torch.equal(first.log_probs[name], second.log_probs[name]), name
        assert torch.equal(first.entropies[name], second.entropies[name]), name
    assert torch.equal(first.value, second.value)
    assert torch.equal(first.q_value, second.q_value)
    assert torch.equal(first.state_value, second.state_value)


@pytest.mark.parametrize("kind", NETWORKS)
def test_get_action_rejects_more_than_one_step(kind: str) -> None:
    net = make_network(kind)
    state, bp = observation((2, 3))
    with pytest.raises(ValueError, match=r"get_action takes one time step.*T=3"):
        net.get_action(state, bp)


# --------------------------------------------------------------------------- inference tensors
@pytest.mark.parametrize("kind", NETWORKS)
def test_differentiable_calls_after_a_first_get_action(kind: str) -> None:
    # Regression: the per-grid context (position ids) was cached by the first call; when that
    # was get_action, the ids were inference tensors and every later evaluate_actions failed
    # ("Inference tensors cannot be saved for backward").
    net = make_network(kind)
    state, bp = observation((4,), seed=15)
    result = net.get_action(state, bp)
    evaluated = net.evaluate_actions(state[:, None], bp[:, None], result.actions, hidden=None)
    ppo_loss(evaluated).backward()
    # forward and predict_contributions accept get_action's hidden state under autograd too.
    net.zero_grad()
    out = net(state[:, None], bp[:, None], result.hidden)
    (out["value"].sum() + out["op_logits"].sum()).backward()
    contributions = net.predict_contributions(state, bp, result.hidden, stop_gradient=False)
    contributions.sum().backward()
    assert all(p.grad is not None for p in net.lstm.parameters())


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("value_baseline", ["q", "v"])
@pytest.mark.parametrize("kind", NETWORKS)
def test_every_parameter_gets_a_gradient(kind: str, value_baseline: str) -> None:
    net = make_network(kind, value_baseline=value_baseline)
    B, T = 2, 9  # 18 rows: every op appears three times
    state, bp = observation((B, T), seed=16)
    result = net.evaluate_actions(state, bp, valid_actions(net.action_space, (B, T), seed=17))
    ppo_loss(result).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert bool(torch.isfinite(param.grad).all()), name
        # Embedding tables get zeros in unused rows only; the used rows make the sum nonzero.
        assert bool(param.grad.any()), name


def test_pointer_head_has_no_parameter_the_softmax_cancels() -> None:
    # Regression: a key bias adds query . bias to every slot's logit alike, so the softmax
    # over slots ignored it and it never learned. Every parameter must move the distribution.
    torch.manual_seed(0)
    head = PointerHead(temporal_dim=8, slot_dim=4)
    temporal, slot_repr = torch.randn(3, 2, 8), torch.randn(3, 2, 5, 4)
    with torch.no_grad():
        before = head(temporal, slot_repr).log_softmax(-1)
        for name, param in head.named_parameters():
            saved = param.clone()
            param.add_(torch.randn_like(param))
            after = head(temporal, slot_repr).log_softmax(-1)
            param.copy_(saved)
            assert (after - before).abs().max() > 1e-3, name


def test_pointer_head_scores_slots_as_query_dot_projected_key() -> None:
    # The head projects the query into slot space instead of projecting every slot; the
    # logits must still be query . key(slot) of the documented formula.
    torch.manual_seed(0)
    head = PointerHead(temporal_dim=8, slot_dim=4)
    temporal, slot_repr = torch.randn(3, 2, 8), torch.randn(3, 2, 5, 4)
    query = head.query(temporal) * head.scale  # [B, T, D]
    keys = head.key(slot_repr)  # [B, T, N, D]
    expected = (query.unsqueeze(-2) * keys).sum(-1)  # [B, T, N]
    torch.testing.assert_close(head(temporal, slot_repr), expected, rtol=1e-5, atol=1e-6)


def test_transformer_contribution_predictor_width_and_dropout_are_options() -> None:
    net = SlotTransformerActorCritic(116, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, head_hidden=32))
    linears = [m for m in net.contribution_predictor.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [64, 32, 1]  # default width 64, not 32
    assert not any(isinstance(m, nn.Dropout) for m in net.contribution_predictor.modules())
    wide = SlotTransformerActorCritic(116, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, contribution_hidden=8, contribution_dropout=0.2))
    linears = [m for m in wide.contribution_predictor.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [8, 4, 1]
    drops = [m for m in wide.contribution_predictor.modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in drops] == [0.2, 0.2]
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\), got dropout=1.5"):
        SlotTransformerActorCritic(116, config=TransformerConfig(contribution_dropout=1.5))


def test_transformer_feed_forward_width_is_an_option() -> None:
    net = SlotTransformerActorCritic(116, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, transformer_ff_mult=4))
    assert [block.ff_in.out_features for block in net.encoder.blocks] == [64, 64]
    default = SlotTransformerActorCritic(116, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16))
    assert [block.ff_in.out_features for block in default.encoder.blocks] == [32, 32]
    with pytest.raises(ValueError, match="transformer_ff_mult must be a positive int, got 0"):
        SlotTransformerActorCritic(116, config=TransformerConfig(transformer_ff_mult=0))


def test_lean_memory_setting_keeps_outputs_and_gradients() -> None:
    # Chunked recomputation of the encoder and the contribution predictor (several chunks
    # here) gives the same outputs and gradients as the plain path, up to fp32 rounding.
    torch.manual_seed(0)
    config = SlotConfig.for_grid(2, 3)
    net = SlotTransformerActorCritic(23 + 6 * 31, config, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, head_hidden=16)).train()
    g = torch.Generator().manual_seed(1)
    state = torch.randn(3, 5, 23 + 6 * 31, generator=g)
    bp = torch.randint(-1, 13, (3, 5, 6), generator=g)

    def outputs_and_grads() -> tuple[list[Tensor], dict[str, Tensor]]:
        net.zero_grad(set_to_none=True)
        out = net(state, bp)
        contributions = net.predict_contributions(state, bp, stop_gradient=False)
        loss = out["slot_logits"].square().sum() + out["state_value"].sum()
        (loss + contributions.square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        return [out["slot_logits"], out["state_value"], contributions], grads

    plain, plain_grads = outputs_and_grads()
    net.encoder.gradient_checkpointing = True
    net.encoder.checkpoint_chunk_tokens = 14  # 2 steps of N + 1 = 7 tokens per chunk
    lean, lean_grads = outputs_and_grads()
    for a, b in zip(plain, lean):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == lean_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", NETWORKS)
def test_all_slots_empty_gives_finite_outputs_and_gradients(kind: str) -> None:
    net = make_network(kind)
    B, T = 2, 6
    state, _ = observation((B, T), seed=18)
    bp = torch.full((B, T, 3), -1)
    out = net(state, bp)
    for key, value in out.items():
        if isinstance(value, Tensor):
            assert bool(torch.isfinite(value.float()).all()), key
    result = net.evaluate_actions(state, bp, valid_actions(net.action_space, (B, T), seed=19))
    assert bool(torch.isfinite(result.pred_contributions).all())
    ppo_loss(result).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name


# --------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("kind", NETWORKS)
def test_state_dict_round_trip_gives_identical_outputs(kind: str) -> None:
    net = make_network(kind, seed=0).eval()
    fresh = make_network(kind, seed=1).eval()
    fresh.load_state_dict(net.state_dict())  # strict: same keys
    B, T = 3, 4
    state, bp = observation((B, T), seed=20)
    actions = valid_actions(net.action_space, (B, T), seed=21)
    outputs = []
    for model in (net, fresh):
        torch.manual_seed(123)  # forward samples an op for Q
        with torch.no_grad():
            out = model(state, bp)
            evaluated = model.evaluate_actions(state, bp, actions)
        contributions = model.predict_contributions(state, bp)
        outputs.append((out, evaluated, contributions))
    (out_a, ev_a, pc_a), (out_b, ev_b, pc_b) = outputs
    for key, value in out_a.items():
        if isinstance(value, Tensor):
            assert torch.equal(value, out_b[key]), key
    for name in HEAD_NAMES:
        assert torch.equal(ev_a.log_probs[name], ev_b.log_probs[name]), name
    assert torch.equal(ev_a.value, ev_b.value) and torch.equal(ev_a.q_value, ev_b.q_value)
    assert torch.equal(pc_a, pc_b)


# --------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("kind", NETWORKS)
def test_wrong_state_dim_is_rejected_at_construction(kind: str) -> None:
    cls = SlotTransformerActorCritic if kind == "transformer" else FactoredRecurrentActorCritic
    if kind == "lstm":  # any state_dim, as the reference; a slot_dim must fit it
        assert cls(117).state_dim == 117
        with pytest.raises(ValueError, match=r"state_dim=117.*slot_dim=31"):
            cls(117, config=LSTMConfig(slot_dim=31))
        return
    with pytest.raises(ValueError, match=r"state_dim=117.*num_slots"):
        cls(117)  # (117 - 23) / 3 slots is not an integer


@pytest.mark.parametrize("kind", NETWORKS)
def test_mismatched_inputs_raise_clear_errors(kind: str) -> None:
    net = make_network(kind)
    B, T = 2, 3
    state, bp = observation((B, T))
    wrong_state = torch.randn(B, T, 140)
    with pytest.raises(ValueError, match=r"state has shape \(2, 3, 140\).*state_dim=116"):
        net(wrong_state, bp)
    with pytest.raises(ValueError, match=r"blueprint_indices has shape \(2, 3, 4\).*\(2, 3, 3\)"):
        net(state, torch.full((B, T, 4), -1))
    with pytest.raises(ValueError, match=r"slot_mask has shape \(2, 3, 4\).*\(2, 3, 3\)"):
        net(state, bp, slot_mask=torch.ones(B, T, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"op_mask has shape \(2, 5\)"):
        net(state, bp, op_mask=torch.ones(B, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"slot_by_op_mask has shape \(2, 6, 4\).*N=3"):
        net.get_action(state[:, 0], bp[:, 0], slot_by_op_mask=torch.ones(B, 6, 4, dtype=torch.bool))
    actions = valid_actions(net.action_space, (B, T), seed=0)
    actions["slot"] = actions["slot"][:, :2]
    with pytest.raises(ValueError, match=r"actions\['slot'\] has shape \(2, 2\).*\(2, 3\)"):
        net.evaluate_actions(state, bp, actions)
    with pytest.raises(ValueError, match=r"states has shape \(2, 3, 140\)"):
        net.evaluate_actions(wrong_state, bp, valid_actions(net.action_space, (B, T), seed=0))
    with pytest.raises(ValueError, match=r"blueprint_indices has shape \(2, (1, )?4\)"):
        net.predict_contributions(state[:, 0], torch.full((B, 4), -1))


def test_flat_network_rejects_another_grid() -> None:
    net = make_network("lstm")
    state, bp = observation((2, 1), num_slots=4)
    with pytest.raises(ValueError, match=r"FactoredRecurrentActorCritic is fixed.*3 slots.*4 slots"):
        net(state, bp, slot_config=SlotConfig.for_grid(2, 2))
    same_state, same_bp = observation((2, 1))
    out = net(same_state, same_bp, slot_config=SlotConfig.default())  # its own grid is fine
    assert out["slot_logits"].shape == (2, 1, 3)


# --------------------------------------------------------------------------- transformer only
def test_transformer_runs_the_same_weights_on_another_grid() -> None:
    net = make_network("transformer")
    grid = SlotConfig.for_grid(4, 4)
    B, T, N = 2, 3, 16
    state, bp = observation((B, T), num_slots=N, seed=22)
    assert state.shape[-1] == BASE_DIM + 16 * 31
    out = net(state, bp, slot_config=grid)
    assert out["slot_logits"].shape == (B, T, N)
    actions = valid_actions(net.action_space.with_num_slots(N), (B, T), seed=23)
    evaluated = net.evaluate_actions(state, bp, actions, slot_config=grid)
    assert evaluated.pred_contributions.shape == (B, T, N)
    ppo_loss(evaluated).backward()
    assert net.predict_contributions(state[:, 0], bp[:, 0], slot_config=grid).shape == (B, N)
    result = net.get_action(state[:, 0], bp[:, 0], slot_config=grid)
    assert bool((result.actions["slot"] < N).all())
    small_state, small_bp = observation((B, T))
    assert net(small_state, small_bp)["slot_logits"].shape == (B, T, 3)  # and back to 3 slots
    with pytest.raises(ValueError, match=r"state has shape \(2, 3, 116\).*state_dim=519"):
        net(small_state, small_bp, slot_config=grid)


def test_transformer_parameter_count_does_not_depend_on_slot_count() -> None:
    def count(network: nn.Module) -> int:
        return sum(p.numel() for p in network.parameters())

    three = make_network("transformer", slot_config=SlotConfig.for_grid(1, 3))
    fifty = make_network("transformer", slot_config=SlotConfig.for_grid(5, 10))
    assert count(three) == count(fifty)
    flat_three = make_network("lstm", slot_config=SlotConfig.for_grid(1, 3))
    flat_fifty = make_network("lstm", slot_config=SlotConfig.for_grid(5, 10))
    assert count(flat_fifty) > count(flat_three)  # the baseline's input layer grows with N


def test_transformer_contributions_see_active_slots_only() -> None:
    net = make_network("transformer").eval()  # eval: no dropout in the predictor
    B, T, N, S = 2, 3, 4, 31
    state, bp = observation((B, T), num_slots=N, seed=24)
    slot_config = SlotConfig.for_grid(1, N)
    bp[..., :3] = torch.tensor([2, 7, 11])  # slots 0-2 active
    bp[..., 3] = -1  # slot 3 empty

    def contributions(s: Tensor) -> Tensor:
        return net.predict_contributions(s, bp, slot_config=slot_config)

    def with_slot_changed(slot: int) -> Tensor:
        changed = state.clone()
        start = BASE_DIM + slot * S
        changed[..., start : start + S] += 3.0
        return changed

    base = contributions(state)
    inactive_changed = contributions(with_slot_changed(3))
    torch.testing.assert_close(inactive_changed[..., :3], base[..., :3], rtol=0, atol=1e-6)
    active_changed = contributions(with_slot_changed(1))
    for k in (0, 2):  # another active slot's features reach slot k through attention
        assert (active_changed[..., k] - base[..., k]).abs().min() > 1e-6, k


def test_transformer_attention_telemetry() -> None:
    net = make_network("transformer")
    assert isinstance(net, SlotTransformerActorCritic)
    state, bp = observation((2, 3), seed=25)
    bp[..., 2] = -1  # slot 2 empty everywhere
    bp[..., :2] = 4
    calls: list[object] = []
    handle = net.register_telemetry_hook(lambda network, stats: calls.append((network, stats)))

    net(state, bp)  # capture off: no statistics, no hook call
    assert net.get_attention_stats() is None and calls == []

    net.capture_attention = True
    net(state, bp)
    stats = net.get_attention_stats()
    assert stats is not None
    assert len(stats.slot_distribution) == 3
    assert stats.slot_distribution[2] == 0.0
    assert stats.slot_distribution[0] > 0.0 and stats.slot_distribution[1] > 0.0
    assert calls == [(net, stats)]
    net.get_action(state[:, 0], bp[:, 0])
    assert len(calls) == 2
    handle.remove()
    net(state, bp)
    assert len(calls) == 2


def test_two_d_call_errors_quote_the_shapes_the_caller_passed() -> None:
    """Regression: a [B, D] call's error quoted blueprint_indices after adding the T axis."""
    net = SlotTransformerActorCritic(116, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, head_hidden=16))
    bad_blueprints = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"blueprint_indices has shape \(2, 4\), expected \(2, 3\)"):
        net.get_action(torch.zeros(2, 116), bad_blueprints)


def test_named_mask_for_a_head_the_action_space_lacks_is_an_error() -> None:
    """Regression: style_mask= on an action space without a style head was silently ignored."""
    from slotformer.actions import ActionSpace, HeadSpec

    space = ActionSpace(
        heads=(HeadSpec("slot", 3, frozenset({1}), None), HeadSpec("op", 2)),
        op_head="op", pointer_head="slot",
    )
    net = FactoredRecurrentActorCritic(116, feature_dim=16, lstm_hidden_dim=16, action_space=space)
    out = net(torch.zeros(2, 1, 116), torch.full((2, 1, 3), -1))
    assert set(out) >= {"slot_logits", "op_logits"}
    with pytest.raises(ValueError, match=r"_mask argument names unknown heads \['style'\]"):
        net(torch.zeros(2, 1, 116), torch.full((2, 1, 3), -1),
            style_mask=torch.zeros(2, 4, dtype=torch.bool))
