"""TorchRL's distributed collectors around the TorchRL adapter (examples/torchrl_distributed.py):
after a weight sync, the next batch was collected with the new weights (re-scored here within
1e-5), through Ray actors and through torch.distributed (gloo, mp launcher)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("torchrl")
pytest.importorskip("ray")

from tensordict import TensorDictBase
from torchrl.modules import set_recurrent_mode

from examples.torchrl_distributed import Args, make_collector
from slotformer import create_policy
from slotformer.integrations.torchrl import make_actor_critic


def rescore(actor: Any, stacked: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
    """The local actor's log-prob of a ``[C, E, T]`` batch's actions, and the stored one."""
    batch = stacked.reshape(-1, stacked.shape[-1])  # [C E, T]: independent sequences
    with torch.no_grad(), set_recurrent_mode(True):
        dist = actor.get_dist(batch.clone())
        return dist.log_prob(batch["action"]), batch["action_log_prob"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ray", "distributed"])
def test_the_next_batch_is_collected_with_the_synced_weights(kind: str) -> None:
    torch.manual_seed(0)
    policy = create_policy("lstm", lstm_hidden_dim=16, trunk_dim=16)
    actor, _critic = make_actor_critic(policy)
    # Episodes of 3 steps in sequences of 4: episodes begin inside the sequences.
    args = Args(collector=kind, collectors=2, num_envs=4, rollout_length=4, episode_length=3,
                policy="lstm", hidden_dim=16)
    collector = make_collector(args, actor, layers=1, hidden=16, total_frames=2 * 4 * 4)
    try:
        collector.update_policy_weights_()
        batches = iter(collector)
        first = next(batches)
        assert first.batch_size == (2, 2, 4)  # [collectors, envs each, steps]
        new, old = rescore(actor, first)
        assert (new - old).abs().max() <= 1e-5  # collected with this process's weights
        with torch.no_grad():  # a training step's worth of change
            for parameter in policy.network.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        new, old = rescore(actor, first)
        assert (new - old).abs().max() > 1e-3  # so a stale collector would be caught
        collector.update_policy_weights_()
        new, old = rescore(actor, next(batches))
        assert (new - old).abs().max() <= 1e-5
    finally:
        collector.shutdown()
