"""One markdown row per ablation: the saved runs of `training_comparison.py --json`, side by side.

    python benchmarks/ablation_table.py --grid 2x5 \\
        "old defaults=docs/ablations/base_2x5_120k.json" \\
        "op entropy 0.1 -> 0.01=docs/ablations/op_ent_2x5_120k.json"

For each ``LABEL=PATH`` (a JSON written by ``benchmarks/training_comparison.py --json``) the
row gives, on one grid: each seed's final return per network, how many runs learned (a
final return above 0.5; the others sit on the do-nothing policy at about 0), the mean return
of each network as a multiple of the heuristic's mean on the same environments, and the
lowest seed's multiple. Rows are printed in the order given; the docs/training.md ablation
tables are this script's output.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

LEARNED = 0.5  # a final return above this left the do-nothing policy (which scores 0)


def row(label: str, results: dict[str, Any], grid: str, networks: list[str]) -> str:
    cells = [label]
    learned = total = 0
    ratios = []
    for network in networks:
        runs = sorted((r for r in results["runs"]
                       if r["grid"] == grid and r["network"] == network),
                      key=lambda r: r["seed"])
        if not runs:
            cells.append("-")
            ratios.append("-")
            continue
        returns = [float(r["learned"]) for r in runs]
        heuristic = [float(r["heuristic"]) for r in runs]
        cells.append(" / ".join(f"{v:.2f}" for v in returns))
        learned += sum(v > LEARNED for v in returns)
        total += len(returns)
        lowest = min(v / h for v, h in zip(returns, heuristic))
        ratios.append(f"{statistics.mean(returns) / statistics.mean(heuristic):.2f}x "
                      f"(lowest seed {lowest:.2f}x)")
    return "| " + " | ".join([*cells, f"{learned} of {total}", *ratios]) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", metavar="LABEL=PATH",
                        help="a row's label and the training_comparison JSON it comes from")
    parser.add_argument("--grid", default="2x5", help="the grid to tabulate (default: 2x5)")
    parser.add_argument("--networks", nargs="+", default=["lstm", "transformer"],
                        help="network columns, in order (default: lstm transformer)")
    cli = parser.parse_args(argv)
    header = (["change"] + [f"{n} per seed" for n in cli.networks] + ["learned"]
              + [f"{n} mean / heuristic" for n in cli.networks])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for item in cli.rows:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            parser.error(f"rows take LABEL=PATH; got {item!r}")
        print(row(label, json.loads(Path(path).read_text()), cli.grid, cli.networks))


if __name__ == "__main__":
    main()
