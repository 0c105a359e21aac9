"""Timings of two checkouts of slotformer, interleaved in one run: is a change slower?

    git worktree add /tmp/before <commit>
    python benchmarks/ab_timing.py --before /tmp/before --after . --repeats 3

Each repeat runs ``benchmarks/compare.py --timings-only`` of the *before* tree, then of the
*after* tree, in fresh processes (each imports its own tree first on ``sys.path``), so both
see the same machine load over the run. Printed: per network and N, the median over repeats
of ``after / before`` for the update step and ``get_action`` at each rollout batch (below 1 =
faster after). Extra arguments after ``--`` go to ``compare.py`` (default: ``--threads 1
--no-validation --malloc tuned --slots 3 10 --rounds 3``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

FIGURES = ("update_ms", "act_b1_ms", "act_b64_ms")
DEFAULT_COMPARE_ARGS = [
    "--threads", "1", "--no-validation", "--malloc", "tuned", "--slots", "3", "10",
    "--rounds", "3", "--networks", "lstm", "transformer",
]


def run_tree(tree: Path, compare_args: list[str], out: Path) -> dict[tuple[str, int], dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [
        sys.executable, str(tree / "benchmarks" / "compare.py"), "--timings-only",
        "--json", str(out), *compare_args,
    ]
    subprocess.run(command, check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    rows = json.loads(out.read_text())["rows"]
    return {(r["network"], r["N"]): {k: r[k] for k in FIGURES if k in r} for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout before the change")
    parser.add_argument("--after", type=Path, default=Path("."), help="checkout after it")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each tree")
    parser.add_argument("compare_args", nargs="*", help="arguments for compare.py (after --)")
    args = parser.parse_args()
    compare_args = args.compare_args or DEFAULT_COMPARE_ARGS
    ratios: dict[tuple[str, int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            before = run_tree(args.before.resolve(), compare_args, Path(tmp) / f"b{repeat}.json")
            after = run_tree(args.after.resolve(), compare_args, Path(tmp) / f"a{repeat}.json")
            for key, figures in after.items():
                for name, value in figures.items():
                    ratios.setdefault((*key, name), []).append(value / before[key][name])
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    print(f"after / before, median of {args.repeats} interleaved runs "
          f"(compare.py {' '.join(compare_args)})")
    print("| network | N | figure | after / before | runs |")
    print("|---|---|---|---|---|")
    for (network, n, name), values in sorted(ratios.items()):
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {network} | {n} | {name} | {statistics.median(values):.2f} | {runs} |")


if __name__ == "__main__":
    main()
