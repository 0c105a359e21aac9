"""LSTM and Slot Transformer actor-critics: update, rollout, memory and compile benchmarks.

For ``network_type`` in (lstm, transformer) and N in (3, 10, 25, 50) (grids 1x3, 2x5, 5x5,
5x10), ``create_policy`` default sizes, B = 32, T = 64, about half the slots active; the
workload and every measurement come from `benchmarks/_workload.py`, the same code that
`benchmarks/compare.py` (the comparison report) runs:

* ``test_evaluate_actions[forward|backward|update]``: ``evaluate_actions`` forward (grad
  on), ``backward`` of a PPO-style loss, a full update step (zero_grad, forward, loss,
  backward, grad clipping, Adam step);
* ``test_get_action``: rollout latency at B = 1 and B = 64 (T = 1);
* ``test_memory``: parameters, bytes of parameters + gradients + Adam state, peak
  activation memory of forward + backward (``torch.profiler`` allocator events on CPU,
  ``torch.cuda.max_memory_allocated`` on GPU);
* ``test_compile``: ``torch.compile(network.evaluate_actions, fullgraph=True)`` compile time,
  first-call latency and compiled steady-state time (inductor default mode; ``aot_eager``
  under ``--quick``);
* ``test_transformer_over_lstm``: the two networks timed interleaved; ratios per N.

Every test puts its figures in ``benchmark.extra_info`` (``--benchmark-json`` carries them)
and in the summary printed at the end. No figure is asserted against a target: targets
are reported by ``benchmarks/compare.py``.

Full run: ``python -m pytest benchmarks/test_network_bench.py --benchmark-only``
CI smoke run (B=4, T=8, N in (3, 10), 2 rounds):
``python -m pytest benchmarks --quick --benchmark-only -q``
GPU: add ``--bench-device cuda``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from benchmarks._workload import (
    FULL,
    NETWORK_TYPES,
    QUICK,
    RolloutInputs,
    Sizes,
    Workload,
    build_policy,
    build_rollout_inputs,
    build_workload,
    grid_for,
    measure_compile,
    parameter_memory,
    peak_activation_bytes,
    time_networks,
)
from slotformer.validation import validation_enabled

MB = 1e6


def _sizes(config: pytest.Config) -> Sizes:
    return QUICK if config.getoption("--quick") else FULL


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    sizes = _sizes(metafunc.config)
    if "num_slots" in metafunc.fixturenames:
        metafunc.parametrize("num_slots", sizes.slots)
    if "compile_slots" in metafunc.fixturenames:
        metafunc.parametrize("compile_slots", [n for n in sizes.slots if sizes.compiles(n)])
    if "act_batch" in metafunc.fixturenames:
        metafunc.parametrize("act_batch", sizes.act_batches)


@pytest.fixture(scope="session")
def sizes(request: pytest.FixtureRequest) -> Sizes:
    return _sizes(request.config)


@pytest.fixture(scope="module")
def make_workload(sizes: Sizes, bench_device: str) -> Callable[[str, int], Workload]:
    """Workloads built once per (network, N) and shared by the module's tests."""
    cache: dict[tuple[str, int], Workload] = {}

    def make(network_type: str, num_slots: int) -> Workload:
        key = (network_type, num_slots)
        if key not in cache:
            policy = build_policy(network_type, num_slots, bench_device)
            cache[key] = build_workload(policy, sizes.batch, sizes.time)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def make_rollout(
    make_workload: Callable[[str, int], Workload],
) -> Callable[[str, int, int], RolloutInputs]:
    cache: dict[tuple[str, int, int], RolloutInputs] = {}

    def make(network_type: str, num_slots: int, batch: int) -> RolloutInputs:
        key = (network_type, num_slots, batch)
        if key not in cache:
            cache[key] = build_rollout_inputs(make_workload(network_type, num_slots).policy, batch)
        return cache[key]

    return make


def _base_figures(workload: Workload, network_type: str, num_slots: int) -> dict[str, Any]:
    grid = grid_for(num_slots)
    return {
        "network": network_type,
        "N": num_slots,
        "grid": f"{grid.num_rows}x{grid.num_cols}",
        "B": workload.batch,
        "T": workload.time,
        "device": str(workload.device),
        "threads": torch.get_num_threads(),
        "validation": validation_enabled(),
    }


def _median_ms(benchmark: Any) -> float | None:
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    return None if stats is None else 1e3 * float(stats.stats.median)


@pytest.mark.parametrize("network_type", NETWORK_TYPES)
@pytest.mark.parametrize("phase", ["forward", "backward", "update"])
def test_evaluate_actions(
    benchmark: Any,
    phase: str,
    network_type: str,
    num_slots: int,
    sizes: Sizes,
    make_workload: Callable[[str, int], Workload],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    workload = make_workload(network_type, num_slots)
    benchmark.group = f"evaluate_actions {phase} N={num_slots}"
    if phase == "backward":

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            workload.zero_grad()
            return (workload.loss(),), {}

        benchmark.pedantic(workload.backward, setup=setup, rounds=sizes.rounds, warmup_rounds=1)
    else:
        target = workload.forward if phase == "forward" else workload.update
        benchmark.pedantic(target, rounds=sizes.rounds, warmup_rounds=1, iterations=1)
    figures = _base_figures(workload, network_type, num_slots)
    figures.update(phase=phase, median_ms=_median_ms(benchmark))
    benchmark.extra_info.update(figures)
    bench_report(f"{network_type} N={num_slots} {phase}", figures)


@pytest.mark.parametrize("network_type", NETWORK_TYPES)
def test_get_action(
    benchmark: Any,
    network_type: str,
    num_slots: int,
    act_batch: int,
    sizes: Sizes,
    make_workload: Callable[[str, int], Workload],
    make_rollout: Callable[[str, int, int], RolloutInputs],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    inputs = make_rollout(network_type, num_slots, act_batch)
    benchmark.group = f"get_action B={act_batch} N={num_slots}"
    benchmark.pedantic(
        inputs.act, rounds=sizes.rounds, iterations=sizes.act_iterations, warmup_rounds=1
    )
    figures = _base_figures(make_workload(network_type, num_slots), network_type, num_slots)
    figures.update(B=act_batch, T=1, median_ms=_median_ms(benchmark))
    benchmark.extra_info.update(figures)
    bench_report(f"{network_type} N={num_slots} get_action B={act_batch}", figures)


@pytest.mark.parametrize("network_type", NETWORK_TYPES)
def test_memory(
    benchmark: Any,
    network_type: str,
    num_slots: int,
    make_workload: Callable[[str, int], Workload],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    """Timed: one profiled forward + backward (the memory measurement itself)."""
    workload = make_workload(network_type, num_slots)
    figures = _base_figures(workload, network_type, num_slots)
    figures.update(parameter_memory(workload))
    benchmark.group = f"memory N={num_slots}"
    benchmark.pedantic(
        lambda: figures.update(peak_activation_bytes(workload)), rounds=1, iterations=1
    )
    figures["param_grad_adam_mb"] = figures["param_grad_adam_bytes"] / MB
    figures["peak_activation_mb"] = figures["peak_activation_bytes"] / MB
    benchmark.extra_info.update(figures)
    bench_report(
        f"{network_type} N={num_slots} memory",
        {k: figures[k] for k in ("parameters", "param_grad_adam_mb", "peak_activation_mb")},
    )


@pytest.mark.parametrize("network_type", NETWORK_TYPES)
def test_compile(
    benchmark: Any,
    network_type: str,
    compile_slots: int,
    sizes: Sizes,
    make_workload: Callable[[str, int], Workload],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    """Timed: compiling plus the compiled and eager steady-state rounds. A fullgraph failure
    is reported (``fullgraph_ok`` False, ``compile_error``), not raised: it is a target."""
    workload = make_workload(network_type, compile_slots)
    figures = _base_figures(workload, network_type, compile_slots)
    benchmark.group = f"compile N={compile_slots}"
    benchmark.pedantic(
        lambda: figures.update(
            measure_compile(workload, sizes.compile_backend, sizes.compile_rounds)
        ),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(figures)
    bench_report(
        f"{network_type} N={compile_slots} compile",
        {
            k: v
            for k, v in figures.items()
            if k
            in (
                "compile_backend",
                "fullgraph_ok",
                "compile_s",
                "first_call_s",
                "compiled_speedup",
                "compile_error",
            )
        },
    )


def test_transformer_over_lstm(
    benchmark: Any,
    num_slots: int,
    sizes: Sizes,
    make_workload: Callable[[str, int], Workload],
    make_rollout: Callable[[str, int, int], RolloutInputs],
    bench_report: Callable[[str, dict[str, Any]], None],
) -> None:
    """Timed: the whole interleaved measurement. The figures are per-network medians and
    transformer / lstm ratios, measured round by round in turn (same machine noise)."""
    workloads = {nt: make_workload(nt, num_slots) for nt in NETWORK_TYPES}
    rollouts = {
        nt: {b: make_rollout(nt, num_slots, b) for b in sizes.act_batches} for nt in NETWORK_TYPES
    }
    medians: dict[str, dict[str, float]] = {}
    benchmark.group = f"transformer / lstm N={num_slots}"
    benchmark.pedantic(
        lambda: medians.update(
            time_networks(workloads, rollouts, sizes.rounds, sizes.act_iterations)
        ),
        rounds=1,
        iterations=1,
    )
    figures = _base_figures(workloads["transformer"], "transformer / lstm", num_slots)
    for network_type, values in medians.items():
        figures.update({f"{network_type}_{key}": value for key, value in values.items()})
    ratios = {
        f"ratio_{key}": medians["transformer"][key] / medians["lstm"][key]
        for key in medians["lstm"]
    }
    figures.update(ratios)
    benchmark.extra_info.update(figures)
    bench_report(f"transformer / lstm N={num_slots}", ratios)
