"""Shared benchmark options and helpers (pytest-benchmark).

Run all suites: ``python -m pytest benchmarks --benchmark-only``; add ``--quick`` for a fast
smoke run (smaller sizes, fewer rounds), as CI does, and ``--threads N`` to pin torch's
intra-op threads.

Fixtures:
    quick: True under ``--quick``.
    bench_device: the ``--bench-device`` option (default ``"cpu"``).
    matmul_peak_gflops: fp32 matmul GFLOP/s measured once per session on this machine, the
        yardstick for achieved GFLOP/s.
    interleaved_timer: ``timer(fns, rounds) -> {name: [seconds per round]}``, calling the
        functions in turn each round so that machine noise hits them alike; use it for
        ratios between implementations measured in the same run.
    flop_counter: ``count(fn) -> FLOPs`` of one call, via ``FlopCounterMode`` (with the CPU
        flash-attention kernels counted too).
    bench_report: ``report(title, figures)`` adds a row to the summary printed at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from slotformer.allocator import configure_malloc

_REPORT_KEY = pytest.StashKey[list[tuple[str, dict[str, Any]]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="benchmarks: small sizes and few rounds (a smoke run, not a measurement)",
    )
    parser.addoption(
        "--threads",
        type=int,
        default=None,
        help="benchmarks: torch.set_num_threads for the session (default: torch's choice); "
        "1 gives steadier ratios on a machine shared with other jobs",
    )
    parser.addoption(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="benchmarks: glibc malloc setting for the session; tuned (default) = "
        "slotformer.configure_malloc(), default = glibc's own",
    )
    parser.addoption(
        "--bench-device",
        default="cpu",
        help="benchmarks: device of the network suite (test_network_bench.py), e.g. cuda",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REPORT_KEY] = []
    threads = config.getoption("--threads")
    if threads is not None:
        torch.set_num_threads(threads)
    # Only when the session runs benchmarks: a plain test run keeps glibc's settings.
    if config.getoption("--malloc") == "tuned" and config.getoption("--benchmark-only", False):
        configure_malloc()


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


@pytest.fixture(scope="session")
def bench_device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--bench-device"))


@pytest.fixture(scope="session")
def matmul_peak_gflops(quick: bool) -> float:
    """Best fp32 GFLOP/s of a square matmul into a preallocated output (no allocation cost)."""
    n = 512 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(3 if quick else 10):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _interleaved_seconds(
    fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


@pytest.fixture(scope="session")
def interleaved_timer() -> Callable[..., dict[str, list[float]]]:
    return _interleaved_seconds


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


def _sdpa_cpu_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> int:
    return int(sdpa_backward_flop_count(grad_out, query, key, value))


def _count_flops(fn: Callable[[], object]) -> int:
    # FlopCounterMode knows the CUDA attention kernels but not the CPU flash ones.
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


@pytest.fixture(scope="session")
def flop_counter() -> Callable[[Callable[[], object]], int]:
    return _count_flops


@pytest.fixture(scope="session")
def bench_report(request: pytest.FixtureRequest) -> Callable[[str, dict[str, Any]], None]:
    rows = request.config.stash[_REPORT_KEY]

    def report(title: str, figures: dict[str, Any]) -> None:
        rows.append((title, figures))

    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_REPORT_KEY, [])
    if not rows:
        return
    terminalreporter.section("benchmark figures")
    for title, figures in rows:
        text = ", ".join(
            f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in figures.items()
        )
        terminalreporter.write_line(f"{title}: {text}")
