"""The loop users run, in the benchmark suite: env steps/s of `examples/train_slot_garden.py`
per network and grid, transformer / flat LSTM measured interleaved in one run.

Each measurement is a fresh one-thread trainer process (`benchmarks/trainer_loop.py`, which
also compares checkouts and settings); ``--quick`` runs 1x3 for 3 updates, once.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.trainer_loop import ROOT, measure


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "grid" in metafunc.fixturenames:  # --quick: the smallest grid only
        quick = metafunc.config.getoption("--quick")
        metafunc.parametrize("grid", ["1x3"] if quick else ["1x3", "2x5", "5x10"])


def test_trainer_loop(
    benchmark: Any, grid: str, quick: bool, bench_report: Callable[[str, dict[str, Any]], None]
) -> None:
    """Timed: the whole interleaved measurement (process start-up included); the figures are
    env steps/s after the first update, medians over repeats, and their ratio."""
    updates, repeats = (3, 1) if quick else (12, 3)
    runs: dict[str, list[dict[str, float]]] = {"transformer": [], "lstm": []}

    def interleaved() -> None:
        for _ in range(repeats):
            for network, results in runs.items():
                results.append(measure(ROOT, network, grid, updates, {}))

    benchmark.group = f"trainer loop {grid}"
    benchmark.pedantic(interleaved, rounds=1, iterations=1)
    figures: dict[str, Any] = {"grid": grid, "updates": updates, "repeats": repeats}
    for network, results in runs.items():
        assert all(r["env_steps_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in results)
        figures[f"{network}_env_steps_per_s"] = statistics.median(
            r["env_steps_per_s"] for r in results)
        figures[f"{network}_peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in results)
    figures["ratio_env_steps_per_s"] = statistics.median(
        t["env_steps_per_s"] / f["env_steps_per_s"]
        for t, f in zip(runs["transformer"], runs["lstm"]))
    figures["ratio_peak_rss"] = figures["transformer_peak_rss_mb"] / figures["lstm_peak_rss_mb"]
    benchmark.extra_info.update(figures)
    bench_report(f"trainer loop {grid} (transformer / lstm)", {
        k: figures[k] for k in ("transformer_env_steps_per_s", "lstm_env_steps_per_s",
                                "ratio_env_steps_per_s", "ratio_peak_rss")})
