"""What the reference project's PPO agent (esper-lite's ``PPOAgent``) needs of a network,
checked without the reference (it is not a dependency; ``compat/`` runs its own tests).

* With ``weight_decay > 0`` it builds three AdamW groups from module attributes: every
  action head (actor, no decay), ``state_value_head`` and ``q_head`` (critic, decayed) and
  ``feature_net``, ``lstm``, ``lstm_ln``, ``blueprint_embedding`` and
  ``contribution_predictor`` (shared, no decay). Its own test requires every parameter in
  exactly one group.
* Its ``PPOAgent.load`` reads the slot count from the flat slot head's last layer, which the
  Slot Transformer does not have; docs/migration.md gives the way to resume
  instead, checked here on slotformer's own checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from slotformer import (
    FactoredRecurrentActorCritic,
    LSTMConfig,
    SlotTransformerActorCritic,
    TransformerConfig,
)
from slotformer.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from slotformer.networks.core import ActorCriticCore
from slotformer.policy import create_policy

# The attribute names the reference agent's weight-decay grouping reads, by group.
CRITIC = ("state_value_head", "q_head")
SHARED = ("feature_net", "lstm", "lstm_ln", "blueprint_embedding", "contribution_predictor")


def actor_names(net: ActorCriticCore) -> tuple[str, ...]:
    return tuple(f"{name}_head" for name in net.action_space.head_names)


def make_network(kind: str) -> ActorCriticCore:
    torch.manual_seed(0)
    if kind == "lstm":
        return FactoredRecurrentActorCritic(116, 32, 32, config=LSTMConfig())
    return SlotTransformerActorCritic(
        116, lstm_hidden_dim=32, config=TransformerConfig(embed_dim=16, head_hidden=32)
    )


def reference_groups(net: ActorCriticCore, weight_decay: float) -> list[dict]:
    def params(names: tuple[str, ...]) -> list[nn.Parameter]:
        return [p for name in names for p in getattr(net, name).parameters()]

    return [
        {"params": params(actor_names(net)), "weight_decay": 0.0, "name": "actor"},
        {"params": params(SHARED), "weight_decay": 0.0, "name": "shared"},
        {"params": params(CRITIC), "weight_decay": weight_decay, "name": "critic"},
    ]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_the_reference_weight_decay_groups_hold_every_parameter_once(kind: str) -> None:
    net = make_network(kind)
    groups = reference_groups(net, 0.01)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    names = {id(p): name for name, p in net.named_parameters()}
    missing = sorted(names[i] for i in set(names) - set(grouped))
    assert not missing, f"parameters in no group (they would never train): {missing}"
    assert set(grouped) == set(names)
    # Only the value heads decay.
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    value_heads = {id(p) for name in CRITIC for p in getattr(net, name).parameters()}
    assert decayed == value_heads
    torch.optim.AdamW(groups, lr=1e-3)  # refuses a parameter given twice


def test_the_transformer_trunk_is_the_shared_feature_net() -> None:
    net = make_network("transformer")
    assert isinstance(net, SlotTransformerActorCritic)
    in_feature_net = {id(p) for p in net.feature_net.parameters()}
    trunk = {id(p) for m in (net.global_encoder, net.encoder) for p in m.parameters()}
    assert in_feature_net == trunk and trunk
    assert list(net.lstm_ln.parameters()) == []
    # Views only: the module tree and the state dict are unchanged.
    children = dict(net.named_children())
    assert "feature_net" not in children and "lstm_ln" not in children
    assert not any(key.startswith(("feature_net.", "lstm_ln.")) for key in net.state_dict())


def test_the_flat_network_has_the_reference_modules() -> None:
    net = make_network("lstm")
    children = dict(net.named_children())
    assert isinstance(children["feature_net"], nn.Sequential)
    assert list(children["lstm_ln"].parameters()) == []


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_resuming_from_a_checkpoint_with_the_optimizer_state_is_exact(
    kind: str, tmp_path: Path
) -> None:
    """docs/migration.md's way to save and resume training (policy and optimizer) without the
    reference agent's ``load``: a resumed run takes the very step the original takes."""
    small = {"lstm_hidden_dim": 16, "embed_dim": 16, "head_hidden": 16} if kind == "transformer" \
        else {"lstm_hidden_dim": 16, "feature_dim": 16}
    torch.manual_seed(0)
    policy = create_policy(kind, **small)
    g = torch.Generator().manual_seed(1)
    state = torch.randn(4, 3, policy.state_dim, generator=g)
    blueprint = torch.randint(-1, 13, (4, 3, policy.slot_config.num_slots), generator=g)

    def step(network: ActorCriticCore, optimizer: torch.optim.Optimizer) -> None:
        out = network(state, blueprint)
        loss = out["value"].square().mean() + out["op_logits"].logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def optimizer_for(network: ActorCriticCore) -> torch.optim.Optimizer:
        return torch.optim.AdamW(reference_groups(network, 0.01), lr=1e-2, eps=1e-5)

    optimizer = optimizer_for(policy.network)
    for _ in range(2):
        step(policy.network, optimizer)
    path = save_checkpoint(tmp_path / "policy.pt", policy,
                           extra={"optimizer": optimizer.state_dict(), "train_steps": 2})
    step(policy.network, optimizer)

    resumed = load_checkpoint(path)
    extra = read_checkpoint(path)["extra"]
    resumed_optimizer = optimizer_for(resumed.network)
    resumed_optimizer.load_state_dict(extra["optimizer"])
    assert extra["train_steps"] == 2
    step(resumed.network, resumed_optimizer)
    original = policy.network.state_dict()
    for key, value in resumed.network.state_dict().items():
        assert torch.equal(value, original[key]), key
