"""The learning protocol: LSTM vs Slot Transformer on Slot Garden over many seeds, and
zero-shot transfer.

    python benchmarks/training_comparison.py --json docs/training_results.json \
        --checkpoints runs/comparison                 # the docs/training.md run (10 seeds)
    python benchmarks/training_comparison.py --grids 5x10 --seeds 0 1 2 --json big.json
    python benchmarks/training_comparison.py --steps 20000 --seeds 0 1 --json out.json
    python benchmarks/training_comparison.py --merge a.json b.json --json all.json  # no runs

For each grid (default 1x3 and 2x5) and network (lstm, transformer), trains with
`examples/train_slot_garden.py` for the same environment-step budget on every seed (default
0-9), each run in a fresh process with one thread. Each (grid, network) figure is
mean(learned) / mean(heuristic) with a paired 95% bootstrap interval over seeds, the lowest
seed and the collapses (`benchmarks/learning_protocol.py`); with the learned, random and
heuristic returns, env steps per second, training time and the run's peak resident memory.
The transformers trained on ``--transfer-from`` (2x5) are then scored without further
training on the ``--transfer-grids`` (3x4, 4x4 and 2x8, wider than any trained on) against the
heuristic on the same environments (the flat LSTM's input layer is sized for one grid, so it
cannot run there).

Returns differ between CPUs as much as between seeds: quote the interval, not one machine's
returns. The JSON (``--json``) records every run with its learning curve
(``benchmarks/plot_training.py`` draws it), the summaries, the settings and the machine.
Prints which run starts (run k of n) and each run's result as it ends, then markdown tables.
``--merge`` trains nothing: it pools the runs of earlier JSON files (each run keeps its file's
settings, machine and name), joins repeats of one run (their returns must agree: runs are
deterministic on one machine) and prints and saves the tables of the pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.learning_protocol import bootstrap_ratio, machine, summary_dict
from examples.train_slot_garden import (
    TRANSFORMER_SIZE_FIELDS,
    Args,
    op_entropy_end,
    policy_fn,
    train,
)
from slotformer import SlotConfig, TransformerConfig
from slotformer.checkpoint import load_checkpoint
from slotformer.envs import (
    SlotGardenEnv,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)

TRANSFER_GRIDS = ("3x4", "4x4", "2x8")


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def describe(spec: dict[str, object]) -> str:
    return (f"run {spec['index']}/{spec['of']}: {spec['network']} on {spec['rows']}x{spec['cols']},"
            f" seed {spec['seed']}")


def summary(run: dict[str, object]) -> str:
    """One finished run in a line: time, returns, speed, transfer scores."""
    figures = {k: float(v) for k, v in run.items() if isinstance(v, (int, float))}
    transfer = "".join(f"  {k} {v:.3f}" for k, v in figures.items()
                       if k.startswith("transfer_") and not k.endswith(("_random", "_heuristic")))
    return (f"{figures['run_s']:.0f} s: learned {figures['learned']:.3f}  random "
            f"{figures['random']:.3f}  heuristic {figures['heuristic']:.3f}  "
            f"{figures['env_steps_per_s']:.0f} env steps/s  peak RSS "
            f"{figures['peak_rss_mb']:.0f} MB{transfer}")


def parse_grid(text: str, parser: argparse.ArgumentParser) -> tuple[int, int]:
    rows, _, cols = text.partition("x")
    if not (rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        parser.error(f"--grids takes ROWSxCOLS such as 2x5; got {text!r}")
    return int(rows), int(cols)


def parse_overrides(items: list[str], parser: argparse.ArgumentParser) -> dict[str, object]:
    """``field=value`` pairs typed like the trainer's ``Args`` defaults."""
    fields = {f.name: f for f in dataclasses.fields(Args)}
    overrides: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            parser.error(f"--set takes FIELD=VALUE with FIELD one of {sorted(fields)}; got {item!r}")
        default = getattr(Args, name)
        annotation = str(fields[name].type)
        try:
            if text == "none" and "None" in annotation:  # an optional field, set to None
                overrides[name] = None
            elif (default is None or default == "auto") and text != "auto" and \
                    annotation.startswith(("float", "int")):  # an optional or auto number
                overrides[name] = (float if annotation.startswith("float") else int)(text)
            elif isinstance(default, bool):
                if text not in ("true", "false"):
                    raise ValueError("expected true or false")
                overrides[name] = text == "true"
            elif isinstance(default, (int, float)):
                overrides[name] = type(default)(text)
            else:
                overrides[name] = text
        except ValueError as error:
            parser.error(f"--set {name}: {error} (default {default!r}); got {text!r}")
    return overrides


def reference_scores(rows: int, cols: int, seed: int, num_envs: int, episode_length: int,
                     episodes: int) -> tuple[float, float]:
    """(random, heuristic) mean returns on the environments a seed's policy is scored on."""
    config = SlotConfig.for_grid(rows, cols)
    scores = []
    for fn in (random_valid_policy, heuristic_policy):
        env = SlotGardenEnv(num_envs, config, episode_length, seed=seed + 1000, table_seed=seed)
        scores.append(evaluate_policy(env, fn, num_episodes=episodes))
    return scores[0], scores[1]


def run_one(spec: dict[str, object]) -> dict[str, object]:
    """Train one (network, grid, seed) run in this (fresh) process; for the transformer on
    the transfer source grid, also score it zero-shot on the transfer grids."""
    torch.set_num_threads(1)  # one run per core: these small models gain little from two
    # Printed by the worker, so it appears when the run really starts (not when queued).
    print(f"{describe(spec)} starts ({spec['steps']} env steps)", flush=True)
    began = time.perf_counter()
    network, rows, cols, seed = spec["network"], spec["rows"], spec["cols"], spec["seed"]
    assert isinstance(rows, int) and isinstance(cols, int) and isinstance(seed, int)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = str(Path(folder) / "policy.pt")
        args = Args(policy=str(network), rows=rows, cols=cols, seed=seed,  # type: ignore[arg-type]
                    total_steps=int(str(spec["steps"])),
                    eval_episodes=int(str(spec["eval_episodes"])), checkpoint=ckpt, quiet=True)
        args = dataclasses.replace(args, **spec["set"])  # type: ignore[arg-type]
        curve: list[tuple[int, float | None]] = []  # None (JSON null) before an episode ends
        metrics, _ = train(args, on_update=lambda steps, ret: curve.append(
            (steps, None if math.isnan(ret) else ret)))
        run: dict[str, object] = {"network": network, "grid": f"{rows}x{cols}", "seed": seed,
                                  **metrics, "curve": curve}
        # Peak resident memory of this process (a run per process): training and evaluation.
        run["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if spec["checkpoints"]:
            folder_out = Path(str(spec["checkpoints"]))
            folder_out.mkdir(parents=True, exist_ok=True)
            shutil.copy(ckpt, folder_out / f"{network}_{rows}x{cols}_seed{seed}.pt")
        if network == "transformer" and f"{rows}x{cols}" == spec["transfer_from"]:
            for grid in spec["transfer_grids"]:  # type: ignore[attr-defined]
                t_rows, t_cols = (int(x) for x in str(grid).split("x"))
                config = SlotConfig.for_grid(t_rows, t_cols)
                policy = load_checkpoint(ckpt, slot_config=config)
                env = SlotGardenEnv(args.num_envs, config, args.episode_length,
                                    seed=seed + 1000, table_seed=seed)
                run[f"transfer_{grid}"] = evaluate_policy(
                    env, policy_fn(policy, args.num_envs, False), num_episodes=args.eval_episodes)
                run[f"transfer_{grid}_random"], run[f"transfer_{grid}_heuristic"] = (
                    reference_scores(t_rows, t_cols, seed, args.num_envs, args.episode_length,
                                     args.eval_episodes))
    run["run_s"] = time.perf_counter() - began  # training, evaluation and transfer
    return run


def floats(runs: list[dict[str, object]], key: str) -> list[float]:
    return [float(str(r[key])) for r in runs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Args.total_steps,
                        help=f"env steps per run (default: the trainer's, {Args.total_steps})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)),
                        help="one run per seed, grid and network (default: 0-9)")
    parser.add_argument("--eval-episodes", type=int, default=2,
                        help="evaluation episodes per environment (default: 2)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs in parallel, 1 thread each (default: 1, which leaves a "
                             "core of a 2-core machine free and times each run alone)")
    parser.add_argument("--json", type=str, default=None,
                        help="write every run (with its learning curve) to this file")
    parser.add_argument("--checkpoints", type=str, default=None,
                        help="keep each run's checkpoint in this folder (default: discard)")
    parser.add_argument("--networks", nargs="+", choices=("lstm", "transformer"),
                        default=["lstm", "transformer"], help="networks to train (default: both)")
    parser.add_argument("--grids", nargs="+", default=["1x3", "2x5"],
                        help="grids to train on, ROWSxCOLS (default: 1x3 2x5)")
    parser.add_argument("--transfer-from", default="2x5",
                        help="the grid whose transformers are scored zero-shot (default: 2x5)")
    parser.add_argument("--transfer-grids", nargs="*", default=list(TRANSFER_GRIDS),
                        help="grids to score them on (default: 3x4 4x4 2x8)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override trainer arguments (examples/train_slot_garden.py's "
                             "Args fields), e.g. --set learning_rate=3e-4 gamma=0.99")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="train nothing: pool the runs of these files (see above)")
    cli = parser.parse_args(argv)
    if cli.merge:
        runs, total_s = merged_runs(cli.merge)
        cli.grids = list(dict.fromkeys(str(r["grid"]) for r in runs))
        cli.networks = list(dict.fromkeys(str(r["network"]) for r in runs))
        cli.transfer_grids = list(dict.fromkeys(
            k[len("transfer_"):] for r in runs for k in r
            if k.startswith("transfer_") and k.count("_") == 1))
        cli.seeds = sorted({int(str(r["seed"])) for r in runs})
        cli.workers, cli.set = 1, []
        report(cli, runs, {}, total_s)
        return
    grids = [parse_grid(text, parser) for text in cli.grids]
    for text in [cli.transfer_from, *cli.transfer_grids]:
        parse_grid(text, parser)
    overrides = parse_overrides(cli.set, parser)

    specs = [{"network": network, "rows": rows, "cols": cols, "seed": seed,
              "steps": cli.steps, "eval_episodes": cli.eval_episodes,
              "checkpoints": cli.checkpoints, "set": overrides,
              "transfer_from": cli.transfer_from, "transfer_grids": cli.transfer_grids}
             for rows, cols in grids for network in cli.networks for seed in cli.seeds]
    for index, spec in enumerate(specs, start=1):
        spec.update(index=index, of=len(specs))
    print(f"{len(specs)} runs ({len(grids)} grids x {len(cli.networks)} networks x "
          f"{len(cli.seeds)} seeds) of {cli.steps} env steps, {cli.workers} at a time",
          flush=True)
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    finished: dict[int, dict[str, object]] = {}
    # A fresh process per run: each run's peak memory is its own, and no run inherits
    # another's allocator state.
    with ProcessPoolExecutor(max_workers=cli.workers, mp_context=context,
                             max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_one, spec): spec for spec in specs}
        for future in as_completed(futures):
            spec, run = futures[future], future.result()
            finished[int(str(spec["index"]))] = run
            print(f"{describe(spec)} done in {summary(run)} ({len(finished)}/{len(specs)} "
                  f"finished, {time.perf_counter() - started:.0f} s elapsed)", flush=True)
    runs = [finished[index] for index in sorted(finished)]  # the order of specs
    report(cli, runs, overrides, time.perf_counter() - started)


def _default(field: str, network: str) -> object:
    """The trainer's default for ``field`` on ``network``: for a transformer size left to the
    network (None), the network config's; an ``"auto"`` resolved."""
    if field == "op_ent_coef_end":
        return op_entropy_end(Args(policy=network))  # type: ignore[arg-type]
    value = getattr(Args, field, None)
    if value is None and field in TRANSFORMER_SIZE_FIELDS:
        value = getattr(TransformerConfig(), TRANSFORMER_SIZE_FIELDS[field])
    return value


def merged_runs(paths: list[str]) -> tuple[list[dict[str, object]], float]:
    """The runs of several result files, each tagged with its file's settings and machine;
    a run repeated across files (same network, grid, seed and settings) becomes one, with
    the transfer scores of all its copies. An override equal to the trainer's default now
    is dropped (a run made with ``--set`` before that value became the default pools with
    the runs made after)."""
    pooled: dict[str, dict[str, object]] = {}
    total_s = 0.0
    for path in paths:
        data = json.loads(Path(path).read_text())
        total_s += float(data.get("total_s", 0.0))
        for run in data["runs"]:
            settings = run.get("set", data.get("set", {}))
            settings = {k: v for k, v in settings.items() if _default(k, run["network"]) != v}
            run = {**run, "set": settings,
                   "steps": run.get("steps", data.get("steps")),
                   "machine": run.get("machine", data.get("machine")),
                   "source": run.get("source", Path(path).name)}
            key = json.dumps([run["network"], run["grid"], run["seed"], run["set"],
                              run["steps"]], sort_keys=True)
            if key in pooled:
                first = pooled[key]
                if abs(float(str(first["learned"])) - float(str(run["learned"]))) > 1e-6:
                    raise SystemExit(f"{path}: run {key} learned {run['learned']}, but "
                                     f"{first['source']} has {first['learned']}")
                first.update({k: v for k, v in run.items() if k.startswith("transfer_")})
            else:
                pooled[key] = run
    return list(pooled.values()), total_s


def report(cli: argparse.Namespace, runs: list[dict[str, object]],
           overrides: dict[str, object], total_s: float) -> None:
    """Summarise ``runs`` per (grid, network) and per transfer grid; print, and save with
    ``--json``."""
    grids = [parse_grid(text, argparse.ArgumentParser()) for text in cli.grids]
    cells: dict[str, dict[str, object]] = {}
    rows_out = []
    for rows, cols in grids:
        for network in cli.networks:
            grid = f"{rows}x{cols}"
            sel = [r for r in runs if r["network"] == network and r["grid"] == grid]
            if not sel:
                continue
            learned, heuristic = floats(sel, "learned"), floats(sel, "heuristic")
            cell = bootstrap_ratio(learned, heuristic)
            cells[f"{network} {grid}"] = summary_dict(cell)
            rows_out.append(
                f"| {grid} | {network} | {cell.text()} | {cell.collapsed} of {cell.seeds} | "
                f"{mean_std(learned)} | {mean_std(heuristic)} | "
                f"{mean_std(floats(sel, 'random'))} | "
                f"{statistics.mean(floats(sel, 'env_steps_per_s')):.0f} | "
                f"{statistics.mean(floats(sel, 'wall_s')):.0f} | "
                f"{max(floats(sel, 'peak_rss_mb')):.0f} |")
    transfer_rows = []
    transfer: dict[str, list[float]] = {}
    for grid in cli.transfer_grids:
        sources = [r for r in runs if r["network"] == "transformer"
                   and r["grid"] == cli.transfer_from and f"transfer_{grid}" in r]
        if not sources:
            continue
        learned = transfer[grid] = floats(sources, f"transfer_{grid}")
        heuristic = floats(sources, f"transfer_{grid}_heuristic")
        cell = bootstrap_ratio(learned, heuristic)
        cells[f"transformer {cli.transfer_from} -> {grid}"] = summary_dict(cell)
        transfer_rows.append(
            f"| {grid} | {cell.text()} | {cell.collapsed} of {cell.seeds} | "
            f"{mean_std(learned)} | {mean_std(heuristic)} | "
            f"{mean_std(floats(sources, f'transfer_{grid}_random'))} |")
    if cli.json:
        Path(cli.json).write_text(json.dumps(
            {"steps": cli.steps, "seeds": cli.seeds, "set": overrides,
             "eval_episodes": cli.eval_episodes, "transfer_from": cli.transfer_from,
             "machine": machine(), "total_s": total_s, "summary": cells, "runs": runs,
             "transfer": transfer, **({"merged": cli.merge} if cli.merge else {})},
            indent=2))

    print(f"\n{cli.steps} env steps per run, seeds {cli.seeds}, trainer overrides "
          f"{overrides or ('per file' if cli.merge else 'none')}, "
          f"{cli.eval_episodes} evaluation episodes x 32 envs; all runs took "
          f"{total_s:.0f} s, {cli.workers} at a time\n")
    print("| grid | network | mean / heuristic mean [95% CI] | collapsed | learned | heuristic "
          "| random | env steps/s | train s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_out))
    if transfer_rows:
        print(f"\nZero-shot transfer of the transformers trained on {cli.transfer_from}:\n")
        print("| grid | mean / heuristic mean [95% CI] | collapsed | transformer | heuristic "
              "| random |")
        print("|---|---|---|---|---|---|")
        print("\n".join(transfer_rows))


if __name__ == "__main__":
    main()
