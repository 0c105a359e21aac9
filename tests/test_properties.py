"""Hypothesis properties of both networks over random grids, masks, activity and ops.

For any grid (the transformer runs one set of weights on every grid; the flat network is
built per slot count), any activity pattern, any masks with at least one valid action per
row, any ``slot_by_op`` and an optional probability floor:

* every output is finite;
* a sampled action is always valid under the mask that applies to it (the op's mask, the
  head's own mask for a head relevant to the op, ``slot_by_op[op]`` for the slot head);
* the log-prob of every sampled action is finite, and ``evaluate_actions`` re-scoring the
  steps one at a time (the rollout's shapes) reproduces it bit for bit;
* a head irrelevant to the chosen op takes its canonical action (the slot head: the first
  valid index of its mask) with log-prob exactly 0 and normalised entropy exactly 0.

The relevance table below is written out from DESIGN.md, independently of
`slotformer.actions`, so that it is an oracle rather than a copy.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from slotformer.config import SlotConfig
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.lstm import FactoredRecurrentActorCritic
from slotformer.networks.transformer import SlotTransformerActorCritic, TransformerConfig

BASE_DIM, SLOT_DIM = 23, 31
NUM_OPS = 6
WAIT, GERMINATE, SET_ALPHA_TARGET, PRUNE, FOSSILIZE, ADVANCE = range(NUM_OPS)
SIZES = {
    "blueprint": 13, "style": 4, "tempo": 3, "alpha_target": 3, "alpha_speed": 4,
    "alpha_curve": 5, "op": NUM_OPS,
}
RELEVANT_OPS = {
    "slot": {GERMINATE, SET_ALPHA_TARGET, PRUNE, FOSSILIZE, ADVANCE},
    "blueprint": {GERMINATE},
    "style": {GERMINATE, SET_ALPHA_TARGET},
    "tempo": {GERMINATE},
    "alpha_target": {GERMINATE, SET_ALPHA_TARGET},
    "alpha_speed": {SET_ALPHA_TARGET, PRUNE},
    "alpha_curve": {SET_ALPHA_TARGET, PRUNE},
    "op": set(range(NUM_OPS)),
}
CANONICAL = {"blueprint": 0, "style": 2, "tempo": 1, "alpha_target": 2, "alpha_speed": 0, "alpha_curve": 0}
PROPERTY_SETTINGS = settings(deadline=None, max_examples=25)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@functools.cache
def _transformer() -> ActorCriticCore:
    torch.manual_seed(0)
    return SlotTransformerActorCritic(BASE_DIM + 3 * SLOT_DIM, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, transformer_layers=1, transformer_heads=2, head_hidden=16))


@functools.cache
def _lstm(num_slots: int) -> ActorCriticCore:
    torch.manual_seed(0)
    return FactoredRecurrentActorCritic(
        BASE_DIM + num_slots * SLOT_DIM, feature_dim=16, lstm_hidden_dim=16,
        slot_config=SlotConfig.for_grid(1, num_slots),
    )


@dataclass
class Scenario:
    kind: str
    grid: SlotConfig
    batch: int
    state: Tensor  # [B, T, D]
    blueprint_indices: Tensor  # [B, T, N]
    masks: dict[str, Tensor]  # head -> [B, T, n]
    slot_by_op: Tensor | None  # [B, num_ops, N]
    floor: float | None
    seed: int

    @property
    def num_slots(self) -> int:
        return self.grid.num_slots

    def net(self) -> ActorCriticCore:
        if self.kind == "transformer":
            return _transformer()
        return _lstm(self.num_slots)

    def slot_config(self) -> SlotConfig | None:
        return self.grid if self.kind == "transformer" else None


def _bool_rows(draw: st.DrawFn, shape: tuple[int, ...], n: int, p_true: float) -> Tensor:
    """Random bool ``[*shape, n]`` with at least one True in every row."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, n, generator=gen) < p_true
    forced = torch.randint(0, n, shape, generator=gen)
    return mask | torch.nn.functional.one_hot(forced, n).bool()


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    kind = draw(st.sampled_from(["transformer", "lstm"]))
    if kind == "transformer":
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    else:
        rows, cols = 1, draw(st.integers(1, 4))
    grid = SlotConfig.for_grid(rows, cols)
    num_slots = grid.num_slots
    batch, steps = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1.0, 100.0]))
    state = torch.randn(batch, steps, BASE_DIM + num_slots * SLOT_DIM, generator=gen) * scale
    activity = draw(st.sampled_from(["empty", "full", "random"]))
    bp = torch.randint(0, 13, (batch, steps, num_slots), generator=gen)
    if activity == "empty":
        bp = torch.full_like(bp, -1)
    elif activity == "random":
        bp = torch.where(torch.rand(bp.shape, generator=gen) < 0.5, -1, bp)
    p_true = draw(st.sampled_from([0.2, 0.6, 1.0]))
    masks = {"slot": _bool_rows(draw, (batch, steps), num_slots, p_true)}
    for name, n in SIZES.items():
        masks[name] = _bool_rows(draw, (batch, steps), n, p_true)
    slot_by_op = None
    if draw(st.booleans()):
        slot_by_op = _bool_rows(draw, (batch, NUM_OPS), num_slots, p_true)
    floor = draw(st.sampled_from([None, 0.0, 0.05]))
    return Scenario(kind, grid, batch, state, bp, masks, slot_by_op, floor, seed)


def _step_masks(scenario: Scenario, t: int) -> dict[str, Tensor]:
    return {f"{name}_mask": mask[:, t] for name, mask in scenario.masks.items()}


@PROPERTY_SETTINGS
@given(scenarios())
def test_forward_outputs_are_finite(scenario: Scenario) -> None:
    net = scenario.net()
    masks = {f"{name}_mask": mask for name, mask in scenario.masks.items()}
    out = net(
        scenario.state, scenario.blueprint_indices, **masks,
        probability_floor=scenario.floor, slot_config=scenario.slot_config(),
    )
    for key, value in out.items():
        if isinstance(value, Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all(), key
    assert out["slot_logits"].shape[-1] == scenario.num_slots
    assert scenario.masks["op"].gather(-1, out["sampled_op"].unsqueeze(-1)).all()


@pytest.mark.parity
@PROPERTY_SETTINGS
@given(scenarios(), st.booleans())
def test_sampled_actions_are_valid_canonical_and_reproduced_by_update(
    scenario: Scenario, deterministic: bool
) -> None:
    net = scenario.net()
    gen = torch.Generator().manual_seed(scenario.seed)
    hidden = net.get_initial_hidden(scenario.batch)
    steps = scenario.state.shape[1]
    rows = torch.arange(scenario.batch)
    taken: dict[str, list[Tensor]] = {}
    rollout_log_probs: dict[str, list[Tensor]] = {}
    for t in range(steps):
        result = net.get_action(
            scenario.state[:, t], scenario.blueprint_indices[:, t], hidden,
            **_step_masks(scenario, t), slot_by_op_mask=scenario.slot_by_op,
            deterministic=deterministic, probability_floor=scenario.floor,
            slot_config=scenario.slot_config(), generator=gen,
        )
        hidden = result.hidden
        assert torch.isfinite(result.values).all()
        assert torch.isfinite(hidden[0]).all() and torch.isfinite(hidden[1]).all()
        op = result.actions["op"]
        assert torch.equal(op, result.sampled_op)
        for name, action in result.actions.items():
            log_prob = result.log_probs[name]
            entropy = result.head_entropies[name]
            assert torch.isfinite(log_prob).all(), name
            assert ((entropy >= 0) & (entropy <= 1)).all(), name
            relevant = torch.tensor([int(o) in RELEVANT_OPS[name] for o in op])
            if name == "slot" and scenario.slot_by_op is not None:
                valid_under = scenario.slot_by_op[rows, op]  # [B, N]
            else:
                valid_under = scenario.masks[name][:, t]  # [B, n]
            chosen_valid = valid_under[rows, action]
            # Relevant heads: never a masked action.
            assert chosen_valid[relevant].all(), name
            # Irrelevant heads: the canonical action, log-prob and entropy exactly 0.
            if name == "slot":
                canonical = scenario.masks["slot"][:, t].to(torch.uint8).argmax(-1)
            elif name != "op":
                canonical = torch.full_like(action, CANONICAL[name])
            if name != "op":
                assert torch.equal(action[~relevant], canonical[~relevant]), name
            assert (log_prob[~relevant] == 0).all(), name
            assert (entropy[~relevant] == 0).all(), name
            taken.setdefault(name, []).append(action)
            rollout_log_probs.setdefault(name, []).append(log_prob)

    # The update re-scores the stored actions with the same log-probs, step by step.
    hidden = net.get_initial_hidden(scenario.batch)
    for t in range(steps):
        evaluated = net.evaluate_actions(
            scenario.state[:, t : t + 1], scenario.blueprint_indices[:, t : t + 1],
            {k: v[t][:, None] for k, v in taken.items()},
            **{k: v[:, None] for k, v in _step_masks(scenario, t).items()},
            hidden=hidden, probability_floor=scenario.floor,
            slot_by_op_mask=scenario.slot_by_op, slot_config=scenario.slot_config(),
        )
        hidden = evaluated.hidden
        for name, log_probs in rollout_log_probs.items():
            assert torch.equal(evaluated.log_probs[name][:, 0], log_probs[t]), (name, t)
        assert torch.isfinite(evaluated.pred_contributions).all()
        assert torch.isfinite(evaluated.q_value).all() and torch.isfinite(evaluated.state_value).all()


@PROPERTY_SETTINGS
@given(scenarios())
def test_update_gradients_are_finite(scenario: Scenario) -> None:
    net = copy.deepcopy(scenario.net())
    gen = torch.Generator().manual_seed(scenario.seed)
    first = net.get_action(
        scenario.state[:, 0], scenario.blueprint_indices[:, 0], **_step_masks(scenario, 0),
        slot_by_op_mask=scenario.slot_by_op, probability_floor=scenario.floor,
        slot_config=scenario.slot_config(), generator=gen,
    )
    evaluated = net.evaluate_actions(
        scenario.state[:, :1], scenario.blueprint_indices[:, :1],
        {k: v[:, None] for k, v in first.actions.items()},
        **{k: v[:, None] for k, v in _step_masks(scenario, 0).items()},
        probability_floor=scenario.floor, slot_by_op_mask=scenario.slot_by_op,
        slot_config=scenario.slot_config(), aux_stop_gradient=False,
    )
    loss = (
        sum(lp.sum() for lp in evaluated.log_probs.values())
        + sum(e.sum() for e in evaluated.entropies.values())
        + evaluated.value.sum() + evaluated.state_value.sum()
        + evaluated.pred_contributions.sum()
    )
    loss.backward()
    for name, param in net.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), name
