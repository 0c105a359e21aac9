"""The loop users run: environment steps per second of `examples/train_slot_garden.py`.

    python benchmarks/trainer_loop.py                        # 1x3, 2x5, 5x10; both networks
    python benchmarks/trainer_loop.py --grids 1x3 --updates 8 --repeats 2 --json loop.json
    python benchmarks/trainer_loop.py --trees before=/tmp/before after=.   # a change, A/B
    python benchmarks/trainer_loop.py --networks transformer --variants lean:head_hidden=128,ff_mult=2
    python benchmarks/trainer_loop.py --grids 2x3 --variants two:threads=2 --beside 1  # under load

Each measurement is the real trainer (rollouts of ``get_action`` at B = 32 environments, PPO
updates over minibatches of 8 sequences x 24 steps, its losses and its Adam), one thread, in
a fresh process: env steps per second from the end of update 1 (warm-up) to the end of the
last update, and the process's peak resident memory. Configurations run interleaved, repeat
by repeat, so every ratio (transformer / flat LSTM, or after / before) is measured under the
same machine load; the medians over repeats are printed. Compare ratios, not absolute figures
across runs or machines. ``--beside K`` keeps K other one-thread training processes running
throughout (a machine shared with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_ONE = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from examples.train_slot_garden import Args, train
network, rows, cols, updates = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
args = Args(**{"policy": network, "rows": rows, "cols": cols, "total_steps": updates * 32 * 24,
               "seed": 0, "eval_episodes": 1, "checkpoint": "", "quiet": True, "threads": 1,
               "attention_every": 0, **json.loads(sys.argv[6])})
stamps = []
train(args, on_update=lambda steps, ret: stamps.append((steps, time.perf_counter())))
(s0, t0), (s1, t1) = stamps[0], stamps[-1]
print(json.dumps({"env_steps_per_s": (s1 - s0) / (t1 - t0),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(tree: Path, network: str, grid: str, updates: int,
            overrides: dict[str, object]) -> dict[str, float]:
    rows, cols = grid.split("x")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE, str(tree), network, rows, cols, str(updates),
         json.dumps(overrides)],
        capture_output=True, text=True, env=env, cwd=tree, check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", default=["1x3", "2x5", "5x10"])
    parser.add_argument("--networks", nargs="+", default=["transformer", "lstm"])
    parser.add_argument("--updates", type=int, default=12, help="updates per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--trees", nargs="+", default=[f"main={ROOT}"], metavar="NAME=PATH",
                        help="checkouts to compare (default: this one)")
    parser.add_argument("--variants", nargs="*", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="extra trainer settings to compare (their network only), e.g. "
                             "lean:head_hidden=128,ff_mult=2; each runs as its own tree row")
    parser.add_argument("--beside", type=int, default=0,
                        help="other training processes kept running meanwhile (load)")
    parser.add_argument("--json", default=None, help="write every figure here")
    cli = parser.parse_args(argv)
    load = [subprocess.Popen(  # 2x5 transformer trainers, long enough to outlast the run
        [sys.executable, "examples/train_slot_garden.py", "--rows", "2", "--cols", "5",
         "--total-steps", "100000000", "--quiet", "--checkpoint", "", "--seed", str(k)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(cli.beside)]
    try:
        run(cli)
    finally:
        for process in load:
            process.kill()


def run(cli: argparse.Namespace) -> None:
    trees = dict(item.split("=", 1) for item in cli.trees)
    settings: dict[str, dict[str, object]] = {key: {} for key in trees}
    for item in cli.variants:
        name, _, fields = item.partition(":")
        settings[name] = {k: json.loads(v) for k, v in
                          (field.split("=", 1) for field in fields.split(",") if field)}
        trees[name] = trees[next(iter(trees))]
    figures: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    configs = [(t, n, g) for g in cli.grids for n in cli.networks for t in trees]
    for repeat in range(cli.repeats):
        for tree, network, grid in configs:
            result = measure(Path(trees[tree]).resolve(), network, grid, cli.updates,
                             settings[tree])
            figures.setdefault((tree, network, grid), []).append(result)
            print(f"repeat {repeat + 1}/{cli.repeats}: {tree} {network} {grid}: "
                  f"{result['env_steps_per_s']:.0f} env steps/s, peak RSS "
                  f"{result['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)

    def median(key: tuple[str, str, str], name: str) -> float:
        return statistics.median(r[name] for r in figures[key])

    print(f"\nenv steps/s of the trainer (1 thread unless a variant says, {cli.updates} updates, "
          f"medians of {cli.repeats} interleaved repeats; peak RSS of the process; "
          f"{cli.beside} other training processes beside it)\n")
    print("| tree | grid | " + " | ".join(f"{n} steps/s | {n} RSS MB" for n in cli.networks)
          + (" | transformer / lstm steps/s | RSS |" if len(cli.networks) == 2 else " |"))
    print("|---" * (2 + 2 * len(cli.networks) + (2 if len(cli.networks) == 2 else 0)) + "|")
    for tree in trees:
        for grid in cli.grids:
            cells = [f"{median((tree, n, grid), 'env_steps_per_s'):.0f} | "
                     f"{median((tree, n, grid), 'peak_rss_mb'):.0f}" for n in cli.networks]
            ratio = ""
            if set(cli.networks) == {"transformer", "lstm"}:
                steps = [statistics.median(t["env_steps_per_s"] / lstm["env_steps_per_s"]
                         for t, lstm in zip(figures[(tree, "transformer", grid)],
                                            figures[(tree, "lstm", grid)]))]
                rss = median((tree, "transformer", grid), "peak_rss_mb") / median(
                    (tree, "lstm", grid), "peak_rss_mb")
                ratio = f" | {steps[0]:.2f} | {rss:.2f}"
            print(f"| {tree} | {grid} | " + " | ".join(cells) + ratio + " |")
    if len(trees) > 1:
        first, *others = trees
        print(f"\nper repeat ratio against {first}, median (above 1 = faster):\n")
        for other in others:
            for grid in cli.grids:
                for network in cli.networks:
                    ratio = statistics.median(
                        b["env_steps_per_s"] / a["env_steps_per_s"]
                        for a, b in zip(figures[(first, network, grid)],
                                        figures[(other, network, grid)]))
                    print(f"{other} / {first} {network} {grid}: {ratio:.2f}x")
    if cli.json:
        Path(cli.json).write_text(json.dumps(
            {"updates": cli.updates, "repeats": cli.repeats, "trees": trees,
             "settings": settings, "runs": [{"tree": t, "network": n, "grid": g, **r}
                      for (t, n, g), results in figures.items() for r in results]}, indent=2))


if __name__ == "__main__":
    main()
