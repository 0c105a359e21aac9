"""Does compiling the rollout step pay on this machine? Eager vs compiled ``get_action``.

    python benchmarks/compiled_rollout.py --threads 1                 # N = 10, B = 1 and 64
    python benchmarks/compiled_rollout.py --slots 50 --batches 64 --mode max-autotune-no-cudagraphs

For each network (default sizes, validation off, as in production rollouts) it compiles
``bundle.get_action`` with ``bundle.compile(mode, dynamic=False)`` (one graph per B; inductor
on CPU), then times eager and compiled calls interleaved, round by round, and prints the
latencies, their ratio and the compile time (the first call minus a steady-state call).
Compiling takes minutes per graph on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._workload import build_policy, build_rollout_inputs
from slotformer.allocator import configure_malloc
from slotformer.validation import set_validation


def measure(
    network: str,
    num_slots: int,
    batch: int,
    mode: str,
    rounds: int,
    calls: int,
    backend: str = "inductor",
) -> dict[str, Any]:
    """Eager and compiled ``get_action`` latency of one network at one (N, B)."""
    eager_inputs = build_rollout_inputs(build_policy(network, num_slots), batch)
    compiled_policy = build_policy(network, num_slots)
    compiled_policy.compile(mode=mode, dynamic=False, backend=backend)
    compiled_inputs = build_rollout_inputs(compiled_policy, batch)
    start = time.perf_counter()
    compiled_inputs.act()
    first_call = time.perf_counter() - start
    compiled_inputs.act()  # a second call may still specialise
    eager_inputs.act()
    samples: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name, inputs in (("eager", eager_inputs), ("compiled", compiled_inputs)):
            start = time.perf_counter()
            for _ in range(calls):
                inputs.act()
            samples[name].append((time.perf_counter() - start) / calls)
    eager, compiled = (statistics.median(samples[k]) for k in ("eager", "compiled"))
    return {
        "network": network,
        "N": num_slots,
        "B": batch,
        "mode": mode,
        "backend": backend,
        "eager_ms": 1e3 * eager,
        "compiled_ms": 1e3 * compiled,
        "eager_over_compiled": eager / compiled,
        "compile_s": first_call - compiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["lstm", "transformer"])
    parser.add_argument("--slots", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--mode", default="default", help="inductor mode (bundle.compile)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed sample")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configure_malloc()
    set_validation(False)
    rows = []
    for network in args.networks:
        for batch in args.batches:
            print(f"compiling {network} get_action, N={args.slots}, B={batch} ...", file=sys.stderr,
                  flush=True)
            rows.append(
                measure(network, args.slots, batch, args.mode, args.rounds, args.calls, args.backend)
            )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), backend "
          f"{args.backend}, mode {args.mode!r}, validation off, malloc tuned\n")
    print("| network | N | B | eager ms | compiled ms | eager / compiled | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['N']} | {r['B']} | {r['eager_ms']:.2f} | "
              f"{r['compiled_ms']:.2f} | {r['eager_over_compiled']:.2f} | {r['compile_s']:.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
