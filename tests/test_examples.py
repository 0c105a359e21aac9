"""The examples run as a user would run them, and PPO on Slot Garden learns."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from examples.telemetry import main as telemetry_main
from examples.train_slot_garden import (
    Args,
    collect_rollout,
    make_env,
    make_policy,
    rescore,
    train,
)
from slotformer import SlotConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parity
def test_quickstart_runs_and_reloads_identically() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    # Rollout scores one step at a time, the update all T steps at once; the matmul kernel
    # (MKL picks it by shape, e.g. on AVX-512 CPUs) may round those differently, so the
    # guarantee is fp32 rounding (~1e-6 measured on AVX-512), not bit equality.
    found = re.search(r"max \|ratio - 1\| = (\S+)", done.stdout)
    assert found is not None, done.stdout
    assert float(found.group(1)) <= 1e-5, done.stdout
    assert "reloaded identical: True" in done.stdout


def test_telemetry_example_prints_diagnostics_and_writes_events(tmp_path: Path) -> None:
    diagnostics = telemetry_main(["--logdir", str(tmp_path)])
    assert diagnostics["network_type"] == "transformer"
    distribution = diagnostics["slot_attention_distribution"]
    assert isinstance(distribution, list) and len(distribution) == 6
    assert list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_ppo_smoke_run_beats_the_random_policy(tmp_path: Path) -> None:
    """A seeded, CI-sized PPO run of the transformer on 1x3 clearly beats random valid play."""
    args = Args(policy="transformer", rows=1, cols=3, total_steps=9_216, seed=0,
                eval_episodes=1, checkpoint=str(tmp_path / "policy.pt"), quiet=True)
    metrics, _ = train(args)
    assert metrics["random"] < 0.0
    assert metrics["learned"] > metrics["random"] + 0.75, metrics
    assert (tmp_path / "policy.pt").exists()


@pytest.mark.parity
@pytest.mark.parametrize("network", ["lstm", "transformer"])
def test_staggered_rollout_rescores_with_ratio_one(network: str) -> None:
    """With unequal episode lengths, episodes begin inside the stored sequences; the update
    re-scores them with the rollout's episode_starts, so before any gradient step every
    log-prob and value equals the rollout's. Without the flags the recurrent state runs on
    across the boundary and every step after it is scored wrongly."""
    torch.manual_seed(0)
    args = Args(policy=network, num_envs=8, episode_length=10, rollout_length=12,
                stagger=True, hidden_dim=32)
    slot_config = SlotConfig.for_grid(1, 3)
    env = make_env(args, slot_config, seed=0, stagger=True)
    policy = make_policy(args, slot_config)
    floor = {"op": args.op_floor}
    step, hidden = env.reset(), policy.initial_hidden(8)
    starts = torch.ones(8, dtype=torch.bool)
    # A first rollout, so that the second starts mid-episode from a non-zero state; as long
    # as environment 0's first episode, so that its next one begins at the second's step 0.
    first_length = int(env.episode_lengths[0])
    _, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts, first_length,
                                              floor)
    rollout, *_ = collect_rollout(policy, env, step, hidden, starts, 12, floor)
    assert rollout.episode_starts[0, 0] and not rollout.episode_starts[:, 0].all()
    inside = rollout.episode_starts[:, 1:]
    assert inside.any(1).all()  # every sequence crosses a boundary...
    assert not inside.all(0).any()  # ...and not all at the same step
    assert torch.equal(rollout.episode_starts[:, 1:], rollout.done[:, :-1])

    everyone = torch.arange(8)
    with torch.no_grad():
        ev = rescore(policy, rollout, everyone, floor)
        stale = policy.evaluate_actions(
            rollout.obs, rollout.blueprint_indices, rollout.actions, rollout.masks,
            rollout.start_hidden, probability_floor=floor,
        )
    log_ratio = sum(ev.log_probs.values()) - rollout.log_prob  # [E, T]
    assert log_ratio.abs().max() <= 1e-5
    assert (ev.state_value - rollout.value).abs().max() <= 1e-5

    # Omitting episode_starts: right up to each sequence's first boundary, wrong after it.
    stale_error = (sum(stale.log_probs.values()) - rollout.log_prob).abs()
    after = inside.cumsum(1) > 0  # [E, T - 1], at or after the first boundary inside
    crossed = torch.cat([torch.zeros(8, 1, dtype=torch.bool), after], dim=1)
    first_start = rollout.episode_starts[:, :1]  # folded into the start state by rescore
    assert stale_error[~crossed & ~first_start.expand_as(crossed)].max() <= 1e-5
    assert stale_error[crossed].max() > 1e-3


@pytest.mark.parity
@pytest.mark.parametrize("network", ["lstm", "transformer"])
def test_rollouts_that_begin_episodes_rescore_with_ratio_one(network: str) -> None:
    """Equal lengths, one episode per rollout: every sequence after the first begins an
    episode at step 0, from a non-zero stored state. Those starts need no per-step flags
    (rescore folds them into the start state) and the ratio is still 1."""
    torch.manual_seed(1)
    args = Args(policy=network, num_envs=4, episode_length=6, rollout_length=6, hidden_dim=32)
    slot_config = SlotConfig.for_grid(1, 3)
    env = make_env(args, slot_config, seed=1, stagger=False)
    policy = make_policy(args, slot_config)
    floor = {"op": args.op_floor}
    step, hidden = env.reset(), policy.initial_hidden(4)
    starts = torch.ones(4, dtype=torch.bool)
    _, step, hidden, starts = collect_rollout(policy, env, step, hidden, starts, 6, floor)
    rollout, *_ = collect_rollout(policy, env, step, hidden, starts, 6, floor)
    assert rollout.episode_starts[:, 0].all() and not rollout.episode_starts[:, 1:].any()
    assert rollout.start_hidden[0].abs().max() > 0  # the finished episodes' state
    with torch.no_grad():
        ev = rescore(policy, rollout, torch.arange(4), floor)
    assert (sum(ev.log_probs.values()) - rollout.log_prob).abs().max() <= 1e-5


def test_staggered_ppo_run_finishes_with_finite_losses(tmp_path: Path) -> None:
    """A short --stagger run (episodes of 12..24 steps, rollouts of 16) trains and evaluates."""
    args = Args(policy="transformer", num_envs=8, episode_length=24, rollout_length=16,
                stagger=True, total_steps=8 * 16 * 3, update_epochs=2, num_minibatches=2,
                hidden_dim=32, eval_episodes=1, checkpoint=None, quiet=True)
    metrics, _ = train(args)
    for name in ("loss", "pg_loss", "v_loss", "entropy", "aux_loss", "learned"):
        assert math.isfinite(metrics[name]), (name, metrics)
