"""Both networks' update and forward paths trace with torch.compile(fullgraph=True).

A regression guard: formatting an error message's shape strings on every call once broke
fullgraph compile of evaluate_actions, and only the benchmark noticed. The `eager` backend
runs dynamo's full trace (any graph break fails) without inductor's code generation.
"""

from __future__ import annotations

import pytest
import torch

from slotformer import FactoredRecurrentActorCritic, SlotTransformerActorCritic
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.transformer import TransformerConfig

B, T, N, STATE_DIM = 2, 3, 3, 23 + 3 * 31


def small_network(kind: str) -> ActorCriticCore:
    torch.manual_seed(0)
    if kind == "transformer":
        return SlotTransformerActorCritic(STATE_DIM, lstm_hidden_dim=16, config=TransformerConfig(embed_dim=16, head_hidden=16))
    return FactoredRecurrentActorCritic(STATE_DIM, feature_dim=16, lstm_hidden_dim=16)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_evaluate_actions_and_forward_compile_fullgraph(kind: str) -> None:
    torch._dynamo.reset()
    net = small_network(kind).eval()
    state = torch.randn(B, T, STATE_DIM)
    blueprints = torch.tensor([[[-1, 3, -1]] * T] * B)
    with torch.no_grad():
        sampled = net(state, blueprints)
    actions = {name: torch.zeros(B, T, dtype=torch.long) for name in net.action_space.head_names}
    actions["op"] = torch.zeros(B, T, dtype=torch.long)  # WAIT: every other head canonical
    for name in ("blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve"):
        actions[name].fill_(net.action_space.head(name).canonical_action or 0)
    eager = net.evaluate_actions(state, blueprints, actions)
    compiled_eval = torch.compile(net.evaluate_actions, backend="eager", fullgraph=True, dynamic=True)
    traced = compiled_eval(state, blueprints, actions)
    for name in net.action_space.head_names:
        assert torch.equal(traced[0][name], eager[0][name]), name
    assert torch.equal(traced[1], eager[1])
    loss = traced[1].sum() + sum(lp.sum() for lp in traced[0].values())
    loss.backward()
    # With every optional input the update passes: the masks dict (slot_by_op included), a
    # start state and episode starts; each goes through the boundary's shape checks.
    masks = {name: torch.ones(B, T, size, dtype=torch.bool)
             for name, size in net.action_space.sizes.items()}
    masks["slot_by_op"] = torch.ones(B, T, net.action_space.num_ops, N, dtype=torch.bool)
    hidden = net.get_initial_hidden(B)
    starts = torch.zeros(B, T, dtype=torch.bool)
    full = net.evaluate_actions(state, blueprints, actions, masks=masks, hidden=hidden,
                                episode_starts=starts)
    traced_full = compiled_eval(state, blueprints, actions, masks=masks, hidden=hidden,
                                episode_starts=starts)
    assert torch.equal(traced_full[1], full[1])
    compiled_forward = torch.compile(net, backend="eager", fullgraph=True, dynamic=True)
    out = compiled_forward(state, blueprints)
    assert out["slot_logits"].shape == sampled["slot_logits"].shape == (B, T, N)
