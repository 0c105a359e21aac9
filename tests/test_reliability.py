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

from typing import Any

import pytest
import torch
from torch import Tensor

from slotformer.config import SlotConfig
from slotformer.networks.core import ActorCriticCore
from slotformer.networks.lstm import FactoredRecurrentActorCritic
from slotformer.networks.transformer import SlotTransformerActorCritic

B, T, N = 2, 3, 3
BASE_DIM, SLOT_DIM = 23, 31
STATE_DIM = BASE_DIM + N * SLOT_DIM  # 116
NUM_OPS = 6
KINDS = ("transformer", "lstm")


def make_net(kind: str, slot_config: SlotConfig | None = None, seed: int = 0) -> ActorCriticCore:
    """A tiny network of either kind (tests run in milliseconds)."""
    config = slot_config if slot_config is not None else SlotConfig.default()
    state_dim = BASE_DIM + config.num_slots * SLOT_DIM
    torch.manual_seed(seed)
    if kind == "transformer":
        return SlotTransformerActorCritic(
            state_dim, slot_config=config, embed_dim=16, lstm_hidden_dim=16,
            transformer_layers=1, transformer_heads=2, head_hidden=16,
        )
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
