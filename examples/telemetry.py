"""Attention telemetry during an update: statistics, a text heatmap, TensorBoard.

    python examples/telemetry.py [--logdir runs/telemetry]

Capture is off by default and then costs nothing. Switching it on for one update is one
line (``with capture_attention(policy): ...``); the network keeps the statistics of the last
captured forward, hooks registered with ``register_telemetry_hook`` receive them, and
``policy_diagnostics`` turns them into a JSON-serialisable payload for the trainer's logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slotformer import (
    SlotConfig,
    capture_attention,
    create_policy,
    network_badge,
    policy_diagnostics,
    render_attention_heatmap,
)
from slotformer.envs import SlotGardenEnv, heuristic_policy


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=None, help="write a TensorBoard event file here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    slots = SlotConfig.for_grid(2, 3)
    env = SlotGardenEnv(num_envs=8, slot_config=slots, episode_length=32, seed=0)
    policy = create_policy("transformer", slot_config=slots)

    # A short rollout with the scripted policy fills some slots, so attention has a pattern.
    step = env.reset()
    states, blueprints = [], []
    for _ in range(12):
        states.append(step.obs)
        blueprints.append(step.blueprint_indices)
        step = env.step(heuristic_policy(step))
    states_t, blueprints_t = torch.stack(states, 1), torch.stack(blueprints, 1)  # [E, T, ...]

    calls: list[int] = []
    handle = policy.network.register_telemetry_hook(lambda net, stats: calls.append(1))
    with capture_attention(policy), torch.no_grad():
        policy.network(states_t, blueprints_t)  # any forward (an update's evaluate_actions too)
    handle.remove()

    stats = policy.network.get_attention_stats()
    assert stats is not None
    print(network_badge(policy.network_type), f"hook calls: {len(calls)}")
    print(render_attention_heatmap(stats.slot_slot, stats.slot_ids, title="slot -> slot"))
    print(render_attention_heatmap(stats.slot_distribution, stats.slot_ids, title="CLS -> slot"))
    diagnostics = policy_diagnostics(policy)
    print(json.dumps(diagnostics, indent=1))

    if args.logdir:
        from slotformer.tensorboard import create_summary_writer, log_attention

        writer = create_summary_writer(args.logdir)
        log_attention(writer, stats, step=0)
        writer.close()
        print(f"TensorBoard event file written to {args.logdir}")
    return diagnostics


if __name__ == "__main__":
    main()
