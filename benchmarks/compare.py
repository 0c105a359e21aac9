"""LSTM vs Slot Transformer: speed, memory and compile time per slot count, in one run.

    python benchmarks/compare.py                          # the docs/benchmarks.md table
    python benchmarks/compare.py --json bench.json        # also write every figure as JSON
    python benchmarks/compare.py --quick                  # seconds-long smoke run
    python benchmarks/compare.py --profile prof/          # + torch.profiler traces
    python benchmarks/compare.py --threads 1 --rounds 3   # pin threads; fewer rounds
    python benchmarks/compare.py --doc docs/benchmarks.md # refresh the doc's table in place
    python benchmarks/compare.py --from-json bench.json --doc docs/benchmarks.md  # no re-run
    python benchmarks/compare.py --trainer-loop --slots 3 10 50  # the trainer's loop instead

For each N (grids 1x3, 2x5, 5x5, 5x10) it builds both networks with ``create_policy``
defaults and measures, with the code the pytest-benchmark suite uses
(`benchmarks/_workload.py`): ``evaluate_actions`` forward, backward and a full update step
(B = 32, T = 64, about half the slots active), ``get_action`` latency at B = 1 and 64,
parameters, bytes of parameters + gradients + Adam state, peak activation memory of one
forward + backward, and the compile time of ``evaluate_actions`` with ``fullgraph=True``
(inductor, default mode). The two networks are timed interleaved, round by round, so the
ratio transformer / lstm per N is measured under the same machine noise; compare ratios,
not absolute times across runs.

Prints a markdown table, the ratios and the targets; ``--json`` writes all of it (with
per-row details and run metadata); ``--profile DIR`` writes one trace per network and N,
viewable with ``tensorboard --logdir DIR`` (torch-tb-profiler plugin).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._workload import (
    EXTRA_VARIANTS,
    FULL,
    GRIDS,
    QUICK,
    VARIANTS,
    Sizes,
    build_policy,
    build_rollout_inputs,
    build_workload,
    grid_for,
    matmul_peak_gflops,
    measure_compile,
    parameter_memory,
    peak_activation_bytes,
    time_networks,
    update_flops,
)
from slotformer.allocator import configure_malloc
from slotformer.validation import set_validation, validation_enabled

MB = 1e6
TIMING_COLUMNS = ("forward_ms", "backward_ms", "update_ms")
RATIO_KEYS = (
    "parameters",
    "param_bytes",
    "grad_bytes",
    "adam_state_bytes",
    "param_grad_adam_bytes",
    "peak_activation_bytes",
    "train_step_bytes",
    "update_flops",
)
DOC_BEGIN = "<!-- compare.py report: begin -->"
DOC_END = "<!-- compare.py report: end -->"
# The issues' targets (reported, never asserted).
UPDATE_RATIO_GOAL_N3 = 1.10
STATE_RATIO_GOAL_N50 = 0.50
UPDATE_RATIO_GOALS = {3: 0.5, 10: 1.0, 50: 2.0}  # transformer / lstm update step
UPDATE_RATIO_STRETCH_N50 = 1.0
TRAIN_STEP_MEMORY_GOAL_N50 = 0.5  # any transformer setting / lstm
ACT_RATIO_GOAL = 0.5  # get_action, every N and rollout B


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="LSTM vs Slot Transformer benchmark report (markdown + JSON)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: B=4, T=8, N in (3, 10), aot_eager compile at N=3",
    )
    parser.add_argument("--batch", type=int, help="B of the update (default 32)")
    parser.add_argument("--time", type=int, help="T of the update (default 64)")
    parser.add_argument("--slots", type=int, nargs="+", help="slot counts N (default 3 10 25 50)")
    parser.add_argument(
        "--act-batches", type=int, nargs="+", help="rollout batch sizes (default 1 64)"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per figure (default 5)")
    parser.add_argument(
        "--act-iterations", type=int, help="get_action calls per latency sample (default 20)"
    )
    parser.add_argument(
        "--compile-backend",
        choices=("inductor", "aot_eager", "eager", "none"),
        help="backend of the compile figures (default inductor; none = skip)",
    )
    parser.add_argument(
        "--compile-rounds",
        type=int,
        help="compiled steady-state rounds after the first call (default 3)",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--no-validation",
        action="store_true",
        help="switch slotformer's value checks off (production rollout setting)",
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument(
        "--profile", type=Path, help="write torch.profiler traces (TensorBoard) into this folder"
    )
    parser.add_argument(
        "--doc",
        type=Path,
        help=f"replace the text between {DOC_BEGIN!r} and {DOC_END!r} in this markdown file "
        "with the report (docs/benchmarks.md)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: re-render the report (and --doc) from a JSON file of an earlier run",
    )
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=(*VARIANTS, *EXTRA_VARIANTS),
        default=list(VARIANTS),
        help="what to measure; transformer-lean = the transformer with its lean-memory "
        "setting, transformer-wide = the plan's sizes (heads 256 wide, feed-forward "
        "4 x embed_dim) (default: lstm, transformer, transformer-lean)",
    )
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default", "both"),
        default="both",
        help="glibc malloc setting: tuned = slotformer.configure_malloc() (large tensors stay "
        "in the heap), default = glibc's own; both (default) = everything with tuned, plus "
        "the timings again with default in a second process",
    )
    parser.add_argument(
        "--timings-only",
        action="store_true",
        help="measure the timings only (no memory, FLOP or compile figures)",
    )
    parser.add_argument(
        "--trainer-loop",
        action="store_true",
        help="measure the loop users run instead: env steps/s and peak RSS of "
        "examples/train_slot_garden.py per network and N, 1 thread (benchmarks/trainer_loop.py "
        "on the grids above; --rounds sets its repeats, --json its output)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {}
    for name, value in (
        ("batch", args.batch),
        ("time", args.time),
        ("rounds", args.rounds),
        ("act_iterations", args.act_iterations),
        ("compile_rounds", args.compile_rounds),
        ("compile_backend", args.compile_backend),
    ):
        if value is not None:
            overrides[name] = value
    if args.slots is not None:
        overrides["slots"] = tuple(args.slots)
        if base.compile_slots is not None:  # measure compile where asked, at the first N
            overrides["compile_slots"] = (args.slots[0],)
    if args.act_batches is not None:
        overrides["act_batches"] = tuple(args.act_batches)
    return dataclasses.replace(base, **overrides)


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the report alone (it can be piped to a file)."""
    print(message, file=sys.stderr, flush=True)


# -------------------------------------------------------------------- measuring
def measure_slot_count(
    num_slots: int,
    sizes: Sizes,
    device: str,
    seed: int,
    profile_dir: Path | None,
    networks: Sequence[str] = VARIANTS,
    timings_only: bool = False,
) -> list[dict[str, Any]]:
    """Every figure of every network at one N; one row per network."""
    grid = grid_for(num_slots)
    workloads, rollouts = {}, {}
    log(f"  N={num_slots}: building {', '.join(networks)} on a {grid.num_rows}x{grid.num_cols} "
        f"grid (B={sizes.batch}, T={sizes.time}) ...")
    for network_type in networks:
        policy = build_policy(network_type, num_slots, device, seed)
        workloads[network_type] = build_workload(policy, sizes.batch, sizes.time, seed)
        rollouts[network_type] = {
            batch: build_rollout_inputs(policy, batch, seed) for batch in sizes.act_batches
        }
    start = time.perf_counter()
    log(f"  N={num_slots}: timing update and get_action, {sizes.rounds} interleaved rounds ...")
    timings = time_networks(workloads, rollouts, sizes.rounds, sizes.act_iterations)
    log(f"  N={num_slots}: timings in {time.perf_counter() - start:.0f}s")

    rows = []
    for network_type, workload in workloads.items():
        row: dict[str, Any] = {
            "network": network_type,
            "N": num_slots,
            "grid": f"{grid.num_rows}x{grid.num_cols}",
            **timings[network_type],
        }
        if timings_only:
            rows.append(row)
            continue
        log(f"  N={num_slots} {network_type}: memory and FLOPs ...")
        row.update(parameter_memory(workload))
        row.update(peak_activation_bytes(workload))
        row["train_step_bytes"] = row["param_grad_adam_bytes"] + row["peak_activation_bytes"]
        row.update(update_flops(workload))
        row["achieved_gflops"] = row["update_flops"] / row["update_ms"] / 1e6
        # The lean setting's rollout is the plain transformer's (checkpointing is a
        # training-time setting), so its compile figure would repeat the transformer's.
        compiles = sizes.compiles(num_slots) and network_type != "transformer-lean"
        if sizes.compile_backend != "none" and compiles:
            start = time.perf_counter()
            log(f"  N={num_slots} {network_type}: compiling ({sizes.compile_backend}) ...")
            row["compile"] = measure_compile(workload, sizes.compile_backend, sizes.compile_rounds)
            log(
                f"  N={num_slots} {network_type}: compile figures in "
                f"{time.perf_counter() - start:.0f}s"
            )
        if profile_dir is not None:
            log(f"  N={num_slots} {network_type}: profiling into {profile_dir} ...")
            write_profile(profile_dir, workload, rollouts[network_type], network_type)
        rows.append(row)
    return rows


def write_profile(
    profile_dir: Path, workload: Any, rollouts: dict[int, Any], variant: str
) -> None:
    """Three profiled steps (update, then get_action at each rollout B) into a
    TensorBoard trace ``{network}_N{N}.*.pt.trace.json``."""
    from torch.profiler import (
        ProfilerActivity,
        profile,
        record_function,
        schedule,
        tensorboard_trace_handler,
    )

    policy = workload.policy
    activities = [ProfilerActivity.CPU]
    if workload.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    name = f"{variant}_N{policy.slot_config.num_slots}"
    profile_dir.mkdir(parents=True, exist_ok=True)
    with profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=1, active=2, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(profile_dir), worker_name=name),
        record_shapes=True,
        profile_memory=True,
    ) as prof:
        for _ in range(3):
            with record_function("update_step"):
                workload.update()
            for batch, inputs in rollouts.items():
                with record_function(f"get_action_B{batch}"):
                    inputs.act()
            prof.step()


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each transformer setting / lstm per N, for every figure both rows have."""
    by_key = {(row["network"], row["N"]): row for row in rows}
    out = []
    for (network, num_slots), transformer in sorted(by_key.items(), key=lambda kv: kv[0][1]):
        lstm = by_key.get(("lstm", num_slots))
        if network == "lstm" or lstm is None:
            continue
        ratio: dict[str, Any] = {"network": network, "N": num_slots}
        for key, value in transformer.items():
            other = lstm.get(key)
            if (key.endswith("_ms") or key in RATIO_KEYS) and other:
                ratio[key] = value / other
        default_t, default_l = transformer.get("default_malloc"), lstm.get("default_malloc")
        if default_t and default_l and default_l.get("update_ms"):
            ratio["update_ms_default_malloc"] = default_t["update_ms"] / default_l["update_ms"]
        compile_t, compile_l = transformer.get("compile", {}), lstm.get("compile", {})
        if "compile_s" in compile_t and "compile_s" in compile_l:
            ratio["compile_s"] = compile_t["compile_s"] / compile_l["compile_s"]
        out.append(ratio)
    return out


def targets(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (None when
    this run did not measure what the target needs)."""
    by_n = {r["N"]: r for r in ratio_rows if r["network"] == "transformer"}
    lean_by_n = {r["N"]: r for r in ratio_rows if r["network"] == "transformer-lean"}
    out: list[dict[str, Any]] = []

    def target(name: str, measure: str, goal: str, value: Any, met: bool | None) -> None:
        out.append({"target": name, "measure": measure, "goal": goal, "value": value, "met": met})

    for num_slots, goal in UPDATE_RATIO_GOALS.items():
        value = by_n.get(num_slots, {}).get("update_ms")
        target(
            f"transformer update step <= {goal}x the LSTM's at N={num_slots}",
            f"update_ms transformer / lstm at N={num_slots}",
            f"<= {goal}",
            value,
            None if value is None else value <= goal,
        )
    value = by_n.get(50, {}).get("update_ms")
    target(
        f"stretch: transformer update step <= {UPDATE_RATIO_STRETCH_N50}x the LSTM's at N=50",
        "update_ms transformer / lstm at N=50",
        f"<= {UPDATE_RATIO_STRETCH_N50}",
        value,
        None if value is None else value <= UPDATE_RATIO_STRETCH_N50,
    )
    settings = {"transformer": by_n.get(50, {}), "transformer-lean": lean_by_n.get(50, {})}
    memory = {k: v["train_step_bytes"] for k, v in settings.items() if "train_step_bytes" in v}
    best = min(memory, key=lambda k: memory[k]) if memory else None
    target(
        f"memory of a training step <= {TRAIN_STEP_MEMORY_GOAL_N50}x the LSTM's at N=50 "
        "(parameters + gradients + Adam state + peak activations), in some setting",
        "train_step_bytes transformer / lstm at N=50, best setting"
        + (f" ({best})" if best else ""),
        f"<= {TRAIN_STEP_MEMORY_GOAL_N50}",
        memory.get(best) if best else None,
        None if best is None else memory[best] <= TRAIN_STEP_MEMORY_GOAL_N50,
    )
    act = [(n, key, r[key]) for n, r in by_n.items() for key in r if key.startswith("act_b")]
    worst = max(act, key=lambda item: item[2]) if act else None
    target(
        f"get_action <= {ACT_RATIO_GOAL}x the LSTM's at every N and rollout B",
        "worst act_b*_ms transformer / lstm"
        + (f" ({worst[1]} at N={worst[0]})" if worst else ""),
        f"<= {ACT_RATIO_GOAL}",
        worst[2] if worst else None,
        None if worst is None else worst[2] <= ACT_RATIO_GOAL,
    )
    update_n3 = by_n.get(3, {}).get("update_ms")
    out.append(
        {
            "target": "transformer update step no slower than the LSTM's at N=3 (within 10%)",
            "measure": "update_ms transformer / lstm at N=3",
            "goal": f"<= {UPDATE_RATIO_GOAL_N3}",
            "value": update_n3,
            "met": None if update_n3 is None else update_n3 <= UPDATE_RATIO_GOAL_N3,
        }
    )
    counts = sorted({r["parameters"] for r in rows if r["network"] == "transformer" and "parameters" in r})
    out.append(
        {
            "target": "transformer parameter count constant in N",
            "measure": "distinct transformer parameter counts over the measured N",
            "goal": "1",
            "value": counts,
            "met": None if len({r["N"] for r in rows}) < 2 else len(counts) == 1,
        }
    )
    state_n50 = by_n.get(50, {}).get("param_grad_adam_bytes")
    out.append(
        {
            "target": "transformer parameters + gradients + Adam state under 50% of the LSTM's at N=50",
            "measure": "param_grad_adam_bytes transformer / lstm at N=50",
            "goal": f"< {STATE_RATIO_GOAL_N50}",
            "value": state_n50,
            "met": None if state_n50 is None else state_n50 < STATE_RATIO_GOAL_N50,
        }
    )
    compiled = [r for r in rows if "compile" in r]
    failures = [f"{r['network']} N={r['N']}" for r in compiled if not r["compile"]["fullgraph_ok"]]
    out.append(
        {
            "target": "torch.compile(fullgraph=True) succeeds for both networks' evaluate_actions",
            "measure": "fullgraph compile of network.evaluate_actions + backward",
            "goal": "no failure",
            "value": failures or "all succeeded",
            "met": None if not compiled else not failures,
        }
    )
    return out


# -------------------------------------------------------------------- formatting
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 10**digits:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _compile_cell(row: dict[str, Any]) -> str:
    compiled = row.get("compile")
    if compiled is None:
        return "-"
    if not compiled["fullgraph_ok"]:
        return "failed"
    return _fmt(compiled["compile_s"])


def table_header(act_batches: Sequence[int]) -> list[str]:
    """The report table's columns (one ``act B=... ms`` per rollout batch size)."""
    return [
        "network",
        "N",
        "grid",
        "forward ms",
        "backward ms",
        "update ms",
        *(f"act B={b} ms" for b in act_batches),
        "param+grad+Adam MB",
        "peak activation MB",
        "train step MB",
        "GFLOP / update",
        "GFLOP/s",
        "compile s",
        "parameters",
    ]


def _mb(row: dict[str, Any], key: str) -> str:
    return _fmt(row[key] / MB) if key in row else "-"


def markdown_table(rows: list[dict[str, Any]], act_batches: Sequence[int]) -> str:
    header = table_header(act_batches)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["network"], str(row["N"]), row["grid"]]
        cells += [_fmt(row.get(key)) for key in TIMING_COLUMNS]
        cells += [_fmt(row.get(f"act_b{b}_ms")) for b in act_batches]
        flops = row.get("update_flops")
        cells += [
            _mb(row, "param_grad_adam_bytes"),
            _mb(row, "peak_activation_bytes"),
            _mb(row, "train_step_bytes"),
            "-" if flops is None else _fmt(flops / 1e9),
            _fmt(row.get("achieved_gflops")),
            _compile_cell(row),
            _fmt(row.get("parameters")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RATIO_COLUMNS = (
    ("forward_ms", "forward"),
    ("backward_ms", "backward"),
    ("update_ms", "update"),
)


def ratio_table(ratio_rows: list[dict[str, Any]], act_batches: Sequence[int]) -> str:
    columns = list(RATIO_COLUMNS)
    if any("update_ms_default_malloc" in r for r in ratio_rows):
        columns.append(("update_ms_default_malloc", "update, default malloc"))
    columns += [(f"act_b{b}_ms", f"act B={b}") for b in act_batches]
    columns += [
        ("param_grad_adam_bytes", "param+grad+Adam"),
        ("peak_activation_bytes", "peak activation"),
        ("train_step_bytes", "train step memory"),
        ("update_flops", "FLOP / update"),
        ("compile_s", "compile"),
        ("parameters", "parameters"),
    ]
    header = ["network", "N"] + [label for _, label in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ratio in ratio_rows:
        cells = [ratio["network"], str(ratio["N"])]
        cells += [_fmt(ratio.get(key), 2) for key, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def malloc_table(rows: list[dict[str, Any]]) -> str:
    """Update step and rollout with glibc's default malloc against the tuned one."""
    keys = [k for k in ("update_ms", "act_b1_ms", "act_b64_ms") if any(k in r for r in rows)]
    header = ["network", "N"]
    for key in keys:
        label = key.removesuffix("_ms").replace("_b", " B=")
        header += [f"{label} default ms", f"{label} tuned ms", "default / tuned"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        default = row.get("default_malloc")
        if not default:
            continue
        cells = [row["network"], str(row["N"])]
        for key in keys:
            a, b = default.get(key), row.get(key)
            cells += [_fmt(a), _fmt(b), _fmt(a / b if a and b else None, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_list(target_rows: list[dict[str, Any]]) -> str:
    lines = []
    for target in target_rows:
        met = {True: "met", False: "NOT met", None: "not measured in this run"}[target["met"]]
        value = target["value"]
        shown = _fmt(value, 3) if isinstance(value, float) else str(value)
        lines.append(
            f"- {target['target']}: {target['measure']} = {shown} "
            f"(goal {target['goal']}): **{met}**"
        )
    return "\n".join(lines)


def git_commit() -> str | None:
    """The measured tree's commit (with ``+dirty`` for local changes), None outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "slotformer"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def run_metadata(sizes: Sizes, device: str, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": torch.get_num_threads(),
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "validation": validation_enabled(),
        "malloc": MALLOC_STATE["setting"],
        "sizes": dataclasses.asdict(sizes),
        "grids": {str(n): f"{r}x{c}" for n, (r, c) in GRIDS.items()},
        "command": " ".join(["python benchmarks/compare.py", *argv]),
        "git_commit": git_commit(),
    }


def markdown_report(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    ratio_rows: list[dict[str, Any]],
    target_rows: list[dict[str, Any]],
) -> str:
    sizes = meta["sizes"]
    threads = f"{meta['threads']} thread{'s' if meta['threads'] != 1 else ''}"
    where = meta["cuda_device"] or f"CPU ({meta['cpu_count']} cores, {threads})"
    load = meta["load_average"]
    start = meta.get("load_average_start")
    load_text = f", load average {start[0]:.1f} at the start" if start else ""
    load_text += f", {load[0]:.1f} at the end" if load else ""
    compile_text = (
        f"compile: `torch.compile(network.evaluate_actions, fullgraph=True, dynamic=True, "
        f"backend={sizes['compile_backend']!r})` first forward + backward minus the compiled "
        f"steady-state step"
        if sizes["compile_backend"] != "none"
        else "compile: not measured"
    )
    malloc = meta.get("malloc", "default")
    peak = meta.get("matmul_peak_gflops")
    peak_text = (
        f" Matmul roof of this run: {peak:.1f} GFLOP/s (best fp32 1024 x 1024 x 1024 matmul, "
        f"same threads); GFLOP/s = GFLOP / update over the update step's time."
        if peak
        else ""
    )
    parts = [
        f"Run {meta['date']} at commit {meta['git_commit']}, torch {meta['torch']}, "
        f"{where}{load_text}; "
        f"B={sizes['batch']}, T={sizes['time']}, {sizes['rounds']} interleaved rounds "
        f"(median); validation {'on' if meta['validation'] else 'off'}; malloc {malloc}"
        f"{' (slotformer.configure_malloc())' if malloc == 'tuned' else ''}; {compile_text}."
        f"{peak_text}",
        "",
        markdown_table(rows, sizes["act_batches"]),
        "",
        "Ratio to the lstm of the same N, same run:",
        "",
        ratio_table(ratio_rows, sizes["act_batches"]),
    ]
    if any(row.get("default_malloc") for row in rows):
        parts += [
            "",
            "The timings again in a second process with glibc's default malloc (each "
            "process's networks interleaved; compare within a column pair):",
            "",
            malloc_table(rows),
        ]
    parts += ["", "Targets:", "", targets_list(target_rows)]
    return "\n".join(parts)


def replace_doc_block(path: Path, report: str) -> None:
    """Put ``report`` between the `DOC_BEGIN` and `DOC_END` markers of ``path``."""
    text = path.read_text()
    begin, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{path} has no {DOC_BEGIN!r} ... {DOC_END!r} block to replace")
    head, tail = text[: begin + len(DOC_BEGIN)], text[end:]
    path.write_text(f"{head}\n{report}\n{tail}")


# -------------------------------------------------------------------- main
def measure(
    sizes: Sizes, args: argparse.Namespace, argv: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every figure at every N (one row per network and N) and the run's metadata."""
    rows: list[dict[str, Any]] = []
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    log(f"comparing {', '.join(args.networks)} at N = {' '.join(map(str, sizes.slots))} on "
        f"{args.device} ({torch.get_num_threads()} threads)")
    for index, num_slots in enumerate(sizes.slots, start=1):
        log(f"measuring N={num_slots} ({index}/{len(sizes.slots)}, "
            f"{time.perf_counter() - started:.0f}s elapsed) ...")
        rows += measure_slot_count(
            num_slots, sizes, args.device, args.seed, args.profile, args.networks,
            args.timings_only,
        )
    meta = run_metadata(sizes, args.device, argv)
    if not args.timings_only:
        log("measuring the matmul roof (best fp32 1024^3 matmul) ...")
        meta["matmul_peak_gflops"] = matmul_peak_gflops(args.device)
    log(f"measured in {time.perf_counter() - started:.0f}s")
    meta["wall_s"] = time.perf_counter() - started
    meta["load_average_start"] = load_at_start
    return meta, rows


MALLOC_STATE = {"setting": "default"}
"""What this process runs with: ``tuned`` once `configure_malloc` took effect."""


def merge_default_malloc_timings(rows: list[dict[str, Any]], argv: Sequence[str]) -> None:
    """Re-run the timings in a fresh process with glibc's default malloc (a process cannot
    undo ``mallopt``) and attach them to ``rows`` as ``row["default_malloc"]``."""
    import tempfile

    # Options of one value that the second process must not repeat (it writes no doc,
    # profile or compile figures, and its own JSON).
    drop = {"--json", "--doc", "--profile", "--malloc", "--compile-backend"}
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in drop:
            next(args, None)  # its value
        elif arg.split("=", 1)[0] not in drop:
            kept.append(arg)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "default_malloc.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), *kept,
            "--malloc", "default", "--timings-only", "--compile-backend", "none",
            "--json", str(out),
        ]
        log("timings again with glibc's default malloc (second process) ...")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        other = json.loads(out.read_text())["rows"]
    by_key = {(r["network"], r["N"]): r for r in other}
    for row in rows:
        match = by_key.get((row["network"], row["N"]))
        if match is not None:
            row["default_malloc"] = {k: v for k, v in match.items() if k.endswith("_ms")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print the markdown report; return (and optionally write) JSON."""
    args = parse_args(argv)
    if args.trainer_loop:  # its own script: fresh processes, the trainer's own shapes
        from benchmarks import trainer_loop

        grids = [f"{r}x{c}" for r, c in (GRIDS[n] for n in (args.slots or (3, 10, 50)))]
        trainer_loop.main(["--grids", *grids, "--repeats", str(args.rounds or 3),
                           *(["--json", str(args.json)] if args.json else [])])
        return {}
    sizes = sizes_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.no_validation:
        set_validation(False)
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if args.from_json is not None:  # re-render a saved run, measure nothing
        saved = json.loads(args.from_json.read_text())
        meta, rows = saved["meta"], saved["rows"]
    else:
        if args.malloc in ("tuned", "both"):
            MALLOC_STATE["setting"] = "tuned" if configure_malloc() else "default"
        meta, rows = measure(sizes, args, argv_list)
        if args.timings_only:  # raw figures for another process (see --malloc both)
            result = {"meta": meta, "rows": rows}
            if args.json is not None:
                args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
            return result
        if args.malloc == "both":
            merge_default_malloc_timings(rows, argv_list)
    ratio_rows = ratios(rows)
    target_rows = targets(rows, ratio_rows)
    report = markdown_report(meta, rows, ratio_rows, target_rows)
    print(report)
    result = {
        "meta": meta,
        "rows": rows,
        "ratios": ratio_rows,
        "targets": target_rows,
        "markdown": report,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    if args.doc is not None:
        replace_doc_block(args.doc, report)
        log(f"updated the report block of {args.doc}")
    if args.profile is not None:
        log(f"profiler traces in {args.profile} (tensorboard --logdir {args.profile})")
    return result


if __name__ == "__main__":
    main()
