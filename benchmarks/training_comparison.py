"""LSTM vs Slot Transformer on Slot Garden: which learns better, and zero-shot transfer.

    python benchmarks/training_comparison.py --json docs/training_results.json \
        --checkpoints runs/comparison                            # the docs/training.md run
    python benchmarks/training_comparison.py --steps 20000 --seeds 0 1 --workers 2 --json out.json

For each grid (1x3, 2x5) and network (lstm, transformer), trains with
`examples/train_slot_garden.py` for the same environment-step budget on several seeds and
reports the final mean return (mean +- std over seeds), env steps per second and wall time.
The transformers trained on 2x5 are then evaluated on 3x4, 4x4 and 2x8 grids (2x8 is wider
than any trained on) without further training (the flat LSTM's input layer is sized for one
grid, so it cannot run there).
Each run's learning curve (mean training return after every update) goes into the JSON;
``benchmarks/plot_training.py`` draws it. Prints which run starts (run k of n) and each run's result as it ends, with its time and
the time since the start; then a markdown table. Writes JSON with every run when ``--json``
is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.train_slot_garden import Args, policy_fn, train
from slotformer import SlotConfig
from slotformer.checkpoint import load_checkpoint
from slotformer.envs import (
    SlotGardenEnv,
    evaluate_policy,
    heuristic_policy,
    random_valid_policy,
)

GRIDS = ((1, 3), (2, 5))
TRANSFER_GRIDS = ((3, 4), (4, 4), (2, 8))


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def per_seed(values: list[float], heuristic: list[float]) -> str:
    """``2.88 (1.04x) / 2.44 (1.52x)``: each seed's return and its ratio to that seed's
    heuristic (the same environments)."""
    return " / ".join(f"{v:.2f} ({v / h:.2f}x)" for v, h in zip(values, heuristic))


def ratio(values: list[float], heuristic: list[float]) -> str:
    return f"{statistics.mean(values) / statistics.mean(heuristic):.2f}x"


def describe(spec: dict[str, object]) -> str:
    return (f"run {spec['index']}/{spec['of']}: {spec['network']} on {spec['rows']}x{spec['cols']},"
            f" seed {spec['seed']}")


def summary(run: dict[str, object]) -> str:
    """One finished run in a line: time, returns, speed, transfer scores."""
    figures = {k: float(v) for k, v in run.items() if isinstance(v, (int, float))}
    transfer = "".join(f"  {k} {v:.3f}" for k, v in figures.items() if k.startswith("transfer_"))
    return (f"{figures['run_s']:.0f} s: learned {figures['learned']:.3f}  random "
            f"{figures['random']:.3f}  heuristic {figures['heuristic']:.3f}  "
            f"{figures['env_steps_per_s']:.0f} env steps/s{transfer}")


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
            elif default is None and annotation.startswith(("float", "int")):
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


def run_one(spec: dict[str, object]) -> dict[str, object]:
    """Train one (network, grid, seed) run; for the 2x5 transformer, also evaluate transfer."""
    torch.set_num_threads(1)  # one run per core: these small models gain little from two
    # Printed by the worker, so it appears when the run really starts (not when queued).
    print(f"{describe(spec)} starts ({spec['steps']} env steps)", flush=True)
    began = time.perf_counter()
    network, rows, cols, seed = spec["network"], spec["rows"], spec["cols"], spec["seed"]
    assert isinstance(rows, int) and isinstance(cols, int) and isinstance(seed, int)
    with tempfile.TemporaryDirectory() as folder:
        ckpt = str(Path(folder) / "policy.pt")
        args = Args(policy=str(network), rows=rows, cols=cols, seed=seed,
                    total_steps=int(spec["steps"]), eval_episodes=int(spec["eval_episodes"]),
                    checkpoint=ckpt, quiet=True,
                    contribution_hidden=int(spec["contribution_hidden"]),  # type: ignore[call-overload]
                    contribution_dropout=float(spec["contribution_dropout"]),  # type: ignore[arg-type]
                    ff_mult=int(spec["ff_mult"]))  # type: ignore[call-overload]
        args = dataclasses.replace(args, **spec["set"])  # type: ignore[arg-type]
        curve: list[tuple[int, float | None]] = []  # None (JSON null) before an episode ends
        metrics, _ = train(args, on_update=lambda steps, ret: curve.append(
            (steps, None if math.isnan(ret) else ret)))
        run: dict[str, object] = {"network": network, "grid": f"{rows}x{cols}", "seed": seed,
                                  **metrics, "curve": curve}
        if spec["checkpoints"]:
            folder_out = Path(str(spec["checkpoints"]))
            folder_out.mkdir(parents=True, exist_ok=True)
            shutil.copy(ckpt, folder_out / f"{network}_{rows}x{cols}_seed{seed}.pt")
        if network == "transformer" and (rows, cols) == (2, 5):
            for grid in TRANSFER_GRIDS:
                config = SlotConfig.for_grid(*grid)
                policy = load_checkpoint(ckpt, slot_config=config)
                env = SlotGardenEnv(args.num_envs, config, args.episode_length,
                                    seed=seed + 1000, table_seed=seed)
                run[f"transfer_{grid[0]}x{grid[1]}"] = evaluate_policy(
                    env, policy_fn(policy, args.num_envs, False),
                    num_episodes=args.eval_episodes)
    run["run_s"] = time.perf_counter() - began  # training, evaluation and transfer
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Args.total_steps,
                        help=f"env steps per run (default: the trainer's, {Args.total_steps})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one run per seed, grid and network (default: 0 1 2)")
    parser.add_argument("--eval-episodes", type=int, default=2,
                        help="evaluation episodes per environment (default: 2)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, 1 thread each")
    parser.add_argument("--json", type=str, default=None,
                        help="write every run (with its learning curve) to this file")
    parser.add_argument("--checkpoints", type=str, default=None,
                        help="keep each run's checkpoint in this folder (default: discard)")
    parser.add_argument("--networks", nargs="+", choices=("lstm", "transformer"),
                        default=["lstm", "transformer"], help="networks to train (default: both)")
    parser.add_argument("--contribution-hidden", type=int, default=Args.contribution_hidden,
                        help="transformer: width of the per-slot contribution predictor")
    parser.add_argument("--contribution-dropout", type=float, default=Args.contribution_dropout,
                        help="transformer: dropout of the contribution predictor")
    parser.add_argument("--ff-mult", type=int, default=Args.ff_mult,
                        help="transformer: feed-forward width of each block / embed_dim")
    parser.add_argument("--grids", nargs="+", default=["1x3", "2x5"],
                        help="grids to train on, ROWSxCOLS (default: 1x3 2x5)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override trainer arguments (examples/train_slot_garden.py's "
                             "Args fields), e.g. --set learning_rate=3e-4 gamma=0.99")
    cli = parser.parse_args(argv)
    grids = [parse_grid(text, parser) for text in cli.grids]
    overrides = parse_overrides(cli.set, parser)

    specs = [{"network": network, "rows": rows, "cols": cols, "seed": seed,
              "steps": cli.steps, "eval_episodes": cli.eval_episodes,
              "contribution_hidden": cli.contribution_hidden,
              "contribution_dropout": cli.contribution_dropout, "ff_mult": cli.ff_mult,
              "checkpoints": cli.checkpoints, "set": overrides}
             for rows, cols in grids for network in cli.networks for seed in cli.seeds]
    for index, spec in enumerate(specs, start=1):
        spec.update(index=index, of=len(specs))
    print(f"{len(specs)} runs ({len(grids)} grids x {len(cli.networks)} networks x "
          f"{len(cli.seeds)} seeds) of {cli.steps} env steps, {cli.workers} at a time",
          flush=True)
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    finished: dict[int, dict[str, object]] = {}
    with ProcessPoolExecutor(max_workers=cli.workers, mp_context=context) as pool:
        futures = {pool.submit(run_one, spec): spec for spec in specs}
        for future in as_completed(futures):
            spec, run = futures[future], future.result()
            finished[int(str(spec["index"]))] = run
            print(f"{describe(spec)} done in {summary(run)} ({len(finished)}/{len(specs)} "
                  f"finished, {time.perf_counter() - started:.0f} s elapsed)", flush=True)
    runs = [finished[index] for index in sorted(finished)]  # the order of specs
    transfer = {g: [float(r[f"transfer_{g[0]}x{g[1]}"]) for r in runs  # type: ignore[arg-type]
                    if f"transfer_{g[0]}x{g[1]}" in r] for g in TRANSFER_GRIDS}
    if cli.json:
        Path(cli.json).write_text(json.dumps(
            {"steps": cli.steps, "seeds": cli.seeds, "set": overrides, "runs": runs,
             "transfer": {f"{g[0]}x{g[1]}": v for g, v in transfer.items()}},
            indent=2))

    print(f"\n{cli.steps} env steps per run, seeds {cli.seeds}, trainer overrides "
          f"{overrides or 'none'}, "
          f"{cli.eval_episodes} evaluation episodes x 32 envs; all runs took "
          f"{time.perf_counter() - started:.0f} s, {cli.workers} at a time\n")
    print("| grid | network | final mean return | per seed (x heuristic) | random | heuristic "
          "| mean / heuristic mean | env steps/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows, cols in grids:
        for network in cli.networks:
            sel = [r for r in runs if r["network"] == network and r["grid"] == f"{rows}x{cols}"]
            col = {k: [float(r[k]) for r in sel] for k in  # type: ignore[arg-type]
                   ("learned", "random", "heuristic", "env_steps_per_s", "wall_s")}
            print(f"| {rows}x{cols} | {network} | {mean_std(col['learned'])} | "
                  f"{per_seed(col['learned'], col['heuristic'])} | "
                  f"{mean_std(col['random'])} | {mean_std(col['heuristic'])} | "
                  f"{ratio(col['learned'], col['heuristic'])} | "
                  f"{statistics.mean(col['env_steps_per_s']):.0f} | "
                  f"{statistics.mean(col['wall_s']):.0f} |")
    if "transformer" not in cli.networks or (2, 5) not in grids:
        return
    print("\nZero-shot transfer of the transformer trained on 2x5:\n")
    print("| grid | transformer (trained on 2x5) | per seed (x heuristic) | lstm | random "
          "| heuristic | mean / heuristic mean |")
    print("|---|---|---|---|---|---|---|")
    for grid in TRANSFER_GRIDS:
        refs = []
        for fn in (random_valid_policy, heuristic_policy):
            refs.append([evaluate_policy(SlotGardenEnv(32, SlotConfig.for_grid(*grid), 48,
                                                       seed=s + 1000, table_seed=s),
                                         fn, num_episodes=cli.eval_episodes)
                         for s in cli.seeds])
        print(f"| {grid[0]}x{grid[1]} | {mean_std(transfer[grid])} | "
              f"{per_seed(transfer[grid], refs[1])} | cannot run (input layer sized for 2x5) | "
              f"{mean_std(refs[0])} | {mean_std(refs[1])} | {ratio(transfer[grid], refs[1])} |")


if __name__ == "__main__":
    main()
