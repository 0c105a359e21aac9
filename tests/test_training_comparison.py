"""benchmarks/training_comparison.py reports as it goes: which run starts, each result as it
ends, then the tables (at a tiny size: one update per run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_training_comparison_prints_each_run_as_it_starts_and_ends(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "training_comparison.py"), "--steps", "768",
         "--seeds", "0", "--networks", "transformer", "--workers", "1", "--eval-episodes", "1",
         "--json", str(tmp_path / "runs.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 runs (2 grids x 1 networks x 1 seeds) of 768 env steps, 1 at a time"
    # A worker may start the next run before the parent prints the last one's result, so
    # only each run's own order is fixed: it starts, then it ends.
    for index, grid in ((1, "1x3"), (2, "2x5")):
        run = f"run {index}/2: transformer on {grid}, seed 0"
        assert f"{run} starts (768 env steps)" in lines, done.stdout
        ended = [i for i, line in enumerate(lines) if line.startswith(f"{run} done in ")]
        assert len(ended) == 1 and ended[0] > lines.index(f"{run} starts (768 env steps)")
        assert re.match(r".* done in \d+ s: learned -?[\d.]+ .* \(\d/2 finished, \d+ s "
                        r"elapsed\)$", lines[ended[0]]), lines[ended[0]]
    assert "transfer_3x4" in next(line for line in lines if line.startswith("run 2/2") and "done" in line)
    assert ("| grid | network | mean / heuristic mean [95% CI] | collapsed | learned |"
            in done.stdout)
    ratio = r"-?[\d.]+x \[-?[\d.]+, -?[\d.]+\], lowest seed -?[\d.]+x"
    assert re.search(rf"^\| 1x3 \| transformer \| {ratio} \| [01] of 1 \|", done.stdout, re.M)
    assert re.search(rf"^\| 2x8 \| {ratio} \| [01] of 1 \|", done.stdout, re.M)
    assert re.search(r"all runs took \d+ s, 1 at a time", done.stdout)
    assert (tmp_path / "runs.json").exists()
    import json

    saved = json.loads((tmp_path / "runs.json").read_text())
    run = saved["runs"][0]
    assert [point[0] for point in run["curve"]] == [768]  # one update: one curve point
    assert run["peak_rss_mb"] > 0
    assert saved["machine"]["torch"] == torch.__version__ and saved["machine"]["cpu"]
    cell = saved["summary"]["transformer 2x5 -> 2x8"]
    assert cell["low"] <= cell["ratio"] <= cell["high"] and cell["seeds"] == 1
    assert {"transfer_2x8", "transfer_2x8_heuristic", "transfer_2x8_random"} <= set(
        saved["runs"][1])


def test_grids_and_overrides_reach_the_trainer(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "training_comparison.py")
    done = subprocess.run(
        [sys.executable, script, "--steps", "384", "--seeds", "0", "--networks", "lstm",
         "--grids", "1x2", "--workers", "1", "--eval-episodes", "1",
         "--set", "rollout_length=12", "hidden_dim=16", "op_ent_coef=none",
         "op_ent_coef_end=none", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr
    overrides = {"rollout_length": 12, "hidden_dim": 16, "op_ent_coef": None,
                 "op_ent_coef_end": None}
    assert f"trainer overrides {overrides}" in done.stdout
    import json

    saved = json.loads((tmp_path / "r.json").read_text())
    assert (saved["steps"], saved["seeds"], saved["set"]) == (384, [0], overrides)
    (run,) = saved["runs"]
    assert run["grid"] == "1x2"
    assert [point[0] for point in run["curve"]] == [384]  # 32 envs x 12 steps per update
    for bad, message in ((["--set", "lr=1"], "--set takes FIELD=VALUE"),
                         (["--set", "gamma=x"], "--set gamma: could not convert"),
                         (["--grids", "2by5"], "--grids takes ROWSxCOLS")):
        failed = subprocess.run([sys.executable, script, *bad], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path, env=env)
        assert failed.returncode == 2 and message in failed.stderr, failed.stderr


def test_ablation_table_prints_a_row_per_saved_comparison(tmp_path: Path) -> None:
    import json

    def runs(returns: dict[str, list[float]]) -> dict[str, object]:
        heuristic = [10.0, 5.0]
        return {"runs": [{"network": n, "grid": "2x5", "seed": s, "learned": v,
                          "heuristic": heuristic[s]}
                         for n, values in returns.items() for s, v in enumerate(values)]}

    (tmp_path / "a.json").write_text(json.dumps(runs({"lstm": [0.0, 6.0],
                                                      "transformer": [12.0, 4.5]})))
    (tmp_path / "b.json").write_text(json.dumps(runs({"transformer": [9.0, 0.2]})))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ablation_table.py"), "--grid", "2x5",
         f"op entropy=0.1={tmp_path / 'a.json'}", f"other={tmp_path / 'b.json'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| change | lstm per seed | transformer per seed | learned |")
    # Means 3.0 / 7.5 = 0.40x and 16.5 / 15 = 1.10x; the lowest seeds 0.00x and 0.90x.
    assert lines[2] == ("| op entropy=0.1 | 0.00 / 6.00 | 12.00 / 4.50 | 3 of 4 | "
                        "0.40x (lowest seed 0.00x) | 1.10x (lowest seed 0.90x) |")
    assert lines[3] == "| other | - | 9.00 / 0.20 | 1 of 2 | - | 0.61x (lowest seed 0.04x) |"


def test_bootstrap_ratio_interval_lowest_seed_and_collapses() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.learning_protocol import bootstrap_ratio

    # Every seed at exactly 1.2x its heuristic: the interval is that point.
    same = bootstrap_ratio([1.2, 6.0, 12.0], [1.0, 5.0, 10.0])
    assert abs(same.ratio - 1.2) < 1e-12 and abs(same.low - 1.2) < 1e-12
    assert abs(same.high - 1.2) < 1e-12 and same.collapsed == 0
    # A ratio of means (not a mean of ratios), a collapsed seed, an interval around it.
    spread = bootstrap_ratio([9.0, 0.5, 14.0, 10.0], [10.0, 10.0, 10.0, 10.0])
    assert abs(spread.ratio - 33.5 / 40) < 1e-12
    assert spread.low < spread.ratio < spread.high
    assert (spread.lowest_seed, spread.collapsed, spread.seeds) == (0.05, 1, 4)
    assert bootstrap_ratio([9.0, 0.5], [10.0, 10.0], seed=1) == bootstrap_ratio(
        [9.0, 0.5], [10.0, 10.0], seed=1)  # reproducible
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio([1.0], [1.0, 2.0])
