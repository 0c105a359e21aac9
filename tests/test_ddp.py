"""Both networks train under DistributedDataParallel (gloo, 2 processes, this machine).

DDP wraps a module's ``forward``; ``evaluate_actions`` is a method, so the test wraps it in a
thin ``nn.Module`` (`PPOLossModule`) whose ``forward`` calls ``net.evaluate_actions`` and
returns the loss, and wraps *that* in DDP. With ``find_unused_parameters=False`` every
parameter must receive a gradient in every step, so the loss uses every documented output:
the log-probs of all heads (each head has its own parameters), ``value`` (V(s) by default),
``q_value`` (Q(s, op): an auxiliary head, detached from the trunk, trained by its own
regression) and ``pred_contributions`` (the auxiliary contribution head). Leaving out the
Q or the contribution term makes DDP fail at the next step with "Expected to have finished
reduction in the prior iteration ...", which the test checks too; a network built without
those heads (``use_q_head=False, use_contribution_head=False``) trains under DDP with a plain
PPO loss.

Each rank writes its gradients and parameters to ``tmp_path``; the parent compares them.
Rendezvous is a ``file://`` store in ``tmp_path`` (no port is opened).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from slotformer.config import SlotConfig
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.lstm import FactoredRecurrentActorCritic, LSTMConfig
from slotformer.networks.transformer import SlotTransformerActorCritic, TransformerConfig

WORLD_SIZE = 2
KINDS = ("transformer", "lstm")
B, T = 4, 3
BASE_DIM, SLOT_DIM = 23, 31
CONFIG = SlotConfig.for_grid(1, 3)
STATE_DIM = BASE_DIM + CONFIG.num_slots * SLOT_DIM
CLIP = 0.2


def make_net(kind: str, aux_heads: bool = True) -> ActorCriticCore:
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    aux = {"use_q_head": aux_heads, "use_contribution_head": aux_heads}
    if kind == "transformer":
        config = TransformerConfig(embed_dim=16, transformer_layers=1, transformer_heads=2,
                                   head_hidden=16, lstm_hidden_dim=16, **aux)
        return SlotTransformerActorCritic(STATE_DIM, slot_config=CONFIG, config=config)
    return FactoredRecurrentActorCritic(STATE_DIM, 16, 16, config=LSTMConfig(**aux))


class PPOLossModule(nn.Module):
    """``forward`` = PPO loss of ``net.evaluate_actions``; wrap this in DDP, not the network.

    Args:
        net: either network.
        aux_coef: weight of the contribution-prediction loss (0 drops the term).
        q_coef: weight of the auxiliary Q(s, op) regression (0 drops the term).
    """

    def __init__(self, net: ActorCriticCore, aux_coef: float = 0.1, q_coef: float = 0.1):
        super().__init__()
        self.net = net
        self.aux_coef = aux_coef
        self.q_coef = q_coef

    def forward(self, batch: dict[str, Any]) -> Tensor:
        out = self.net.evaluate_actions(batch["states"], batch["blueprint_indices"], batch["actions"])
        log_prob = sum(out.log_probs.values())  # every head's log-prob: [B, T]
        old_log_prob = sum(batch["old_log_probs"].values())
        ratio = torch.exp(log_prob - old_log_prob)
        advantages = batch["advantages"]
        policy_loss = -torch.min(
            ratio * advantages, ratio.clamp(1 - CLIP, 1 + CLIP) * advantages
        ).mean()
        entropy = sum(e.mean() for e in out.entropies.values())
        loss = policy_loss - 0.01 * entropy + 0.5 * (out.value - batch["returns"]).pow(2).mean()
        if self.q_coef:
            loss = loss + self.q_coef * (out.q_value - batch["returns"]).pow(2).mean()
        if self.aux_coef:
            active = batch["blueprint_indices"] >= 0
            error = (out.pred_contributions - batch["contributions"]).pow(2)
            loss = loss + self.aux_coef * (error * active).sum() / active.sum().clamp(min=1)
        return loss


def make_batch(net: ActorCriticCore, seed: int) -> dict[str, Any]:
    """Rollout data for one rank: actions and log-probs from get_action, random targets."""
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(B, T, STATE_DIM, generator=gen)
    bp = torch.randint(-1, 13, (B, T, CONFIG.num_slots), generator=gen)
    hidden = net.get_initial_hidden(B)
    actions: dict[str, list[Tensor]] = {}
    log_probs: dict[str, list[Tensor]] = {}
    for t in range(T):
        step = net.get_action(states[:, t], bp[:, t], hidden, generator=gen)
        hidden = step.hidden
        for name in step.actions:
            actions.setdefault(name, []).append(step.actions[name])
            log_probs.setdefault(name, []).append(step.log_probs[name])
    return {
        "states": states,
        "blueprint_indices": bp,
        "actions": {k: torch.stack(v, 1) for k, v in actions.items()},
        "old_log_probs": {k: torch.stack(v, 1) for k, v in log_probs.items()},
        "advantages": torch.randn(B, T, generator=gen),
        "returns": torch.randn(B, T, generator=gen),
        "contributions": torch.randn(B, T, CONFIG.num_slots, generator=gen),
    }


def _grads(module: nn.Module) -> dict[str, Tensor]:
    return {
        n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None
    }


def _params(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{os.path.join(tmp, 'rendezvous')}",
        rank=rank, world_size=WORLD_SIZE,
    )
    try:
        record: dict[str, Any] = {}
        for kind in KINDS:
            net = make_net(kind)
            batches = [make_batch(net, seed=100 * step + rank) for step in range(2)]
            # This rank's own gradient, without DDP: DDP's must be the mean over ranks.
            # The same RNG state before both forwards: the contribution head's dropout masks
            # then match.
            local = PPOLossModule(make_net(kind))
            torch.manual_seed(1000 + rank)
            local(batches[0]).backward()
            local_grads = _grads(local)

            model = DistributedDataParallel(PPOLossModule(net), find_unused_parameters=False)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            initial = _params(model.module)
            torch.manual_seed(1000 + rank)
            model(batches[0]).backward()
            grads = _grads(model.module)
            optimizer.step()
            optimizer.zero_grad()
            # A second step: with an unused parameter DDP would raise here.
            model(batches[1]).backward()
            optimizer.step()
            record[kind] = {
                "local_grads": local_grads, "grads": grads, "initial": initial,
                "params": _params(model.module),
                "num_params": sum(1 for _ in model.module.parameters()),
            }

        # Without the auxiliary heads a plain PPO loss (policy, value, entropy) uses every
        # parameter: two steps with find_unused_parameters=False.
        for kind in KINDS:
            model = DistributedDataParallel(
                PPOLossModule(make_net(kind, aux_heads=False), aux_coef=0.0, q_coef=0.0),
                find_unused_parameters=False,
            )
            batch = make_batch(model.module.net, seed=rank)
            for _ in range(2):
                model.zero_grad()
                model(batch).backward()
            record[f"plain_{kind}"] = {
                "num_params": sum(1 for _ in model.parameters()),
                "num_grads": sum(p.grad is not None for p in model.parameters()),
                "aux_heads": [n for n, _ in model.module.named_parameters() if "q_head" in n or "contribution" in n],
            }

        # A loss without the contribution or the Q term leaves that head's parameters unused.
        for label, kwargs in (("no_aux", {"aux_coef": 0.0}), ("no_q", {"q_coef": 0.0})):
            net = make_net("transformer")
            batch = make_batch(net, seed=rank)
            model = DistributedDataParallel(PPOLossModule(net, **kwargs), find_unused_parameters=False)
            message = ""
            try:
                for _ in range(2):
                    model(batch).backward()
            except RuntimeError as error:
                message = str(error)
            record[label] = message
            record[f"{label}_names"] = [n for n, _ in model.module.named_parameters()]
        torch.save(record, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp),), nprocs=WORLD_SIZE, join=True)
    return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_and_parameters_are_identical_across_ranks(
    ddp_records: list[dict[str, Any]], kind: str
) -> None:
    rank0, rank1 = (r[kind] for r in ddp_records)
    # Every parameter got a gradient (find_unused_parameters=False holds).
    assert len(rank0["grads"]) == rank0["num_params"] > 0
    for name, grad in rank0["grads"].items():
        assert torch.equal(grad, rank1["grads"][name]), name
    for name, param in rank0["params"].items():
        assert torch.equal(param, rank1["params"][name]), name
        assert torch.equal(rank0["initial"][name], rank1["initial"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_ddp_gradient_is_the_mean_of_the_ranks_gradients(
    ddp_records: list[dict[str, Any]], kind: str
) -> None:
    rank0, rank1 = (r[kind] for r in ddp_records)
    differ = 0
    for name, grad in rank0["grads"].items():
        local0, local1 = rank0["local_grads"][name], rank1["local_grads"][name]
        torch.testing.assert_close(grad, (local0 + local1) / 2, rtol=1e-4, atol=1e-6)
        differ += not torch.equal(local0, local1)
    assert differ > 0  # the ranks saw different data, so the sync did real work
    moved = sum(not torch.equal(rank0["params"][n], rank0["initial"][n]) for n in rank0["params"])
    assert moved == rank0["num_params"]  # Adam moved every parameter


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_plain_ppo_loss_trains_under_ddp_without_auxiliary_heads(
    ddp_records: list[dict[str, Any]], kind: str
) -> None:
    for record in ddp_records:
        plain = record[f"plain_{kind}"]
        assert plain["aux_heads"] == []  # switched off: no parameters at all
        assert plain["num_grads"] == plain["num_params"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("label", ["no_aux", "no_q"])
def test_loss_without_an_auxiliary_term_fails_under_ddp(
    ddp_records: list[dict[str, Any]], label: str
) -> None:
    unused_module = {"no_aux": "net.contribution_predictor.", "no_q": "net.q_head."}
    for rank, record in enumerate(ddp_records):
        message = record[label]
        assert "Expected to have finished reduction in the prior iteration" in message
        # The error lists the parameter indices without a gradient: exactly that head's.
        match = re.search(rf"did not receive grad for rank {rank}: ([\d ]+)", message)
        assert match is not None, message
        names = [record[f"{label}_names"][int(i)] for i in match.group(1).split()]
        expected = [n for n in record[f"{label}_names"] if n.startswith(unused_module[label])]
        assert names == expected and names
