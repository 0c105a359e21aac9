"""The learning protocol's statistics: figures that survive a re-run on another machine.

Returns on Slot Garden differ between CPUs as much as between seeds (floating-point
differences in the matmul kernels change a run's trajectory), so a claim rests on many
seeds and an interval, never on one machine's exact returns:

* each (grid, network) figure is ``mean(learned) / mean(heuristic)`` over seeds, the
  heuristic scored on the same environments as each seed's policy;
* its 95% interval is a paired bootstrap over seeds (seeds resampled with replacement,
  10,000 times, the ratio of means recomputed; the 2.5th and 97.5th percentiles);
* the lowest seed's ratio, and how many runs collapsed onto the do-nothing policy (a
  final return below a tenth of the heuristic's; doing nothing scores 0).

`machine` records where the runs ran, for the saved JSON.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

COLLAPSE_FRACTION = 0.1
"""A run collapsed when its final return is below this fraction of its heuristic's."""
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")


@dataclass(frozen=True)
class RatioSummary:
    """One (grid, network) cell: ``mean(learned) / mean(heuristic)`` over ``seeds`` runs,
    its 95% bootstrap interval ``[low, high]``, the lowest seed's ratio and the collapses."""

    ratio: float
    low: float
    high: float
    lowest_seed: float
    seeds: int
    collapsed: int

    def text(self) -> str:
        """``1.12x [1.04, 1.19], lowest seed 0.91x``."""
        return (f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}], lowest seed "
                f"{self.lowest_seed:.2f}x")


def bootstrap_ratio(
    learned: Sequence[float], heuristic: Sequence[float], resamples: int = 10_000, seed: int = 0
) -> RatioSummary:
    """The ratio of means with a paired 95% bootstrap interval over seeds.

    Example:
        >>> summary = bootstrap_ratio([11.0, 9.0, 10.0], [10.0, 10.0, 10.0])
        >>> summary.ratio, summary.lowest_seed, summary.low <= 1.0 <= summary.high
        (1.0, 0.9, True)
    """
    if len(learned) != len(heuristic) or not learned:
        raise ValueError(f"need paired runs, got {len(learned)} and {len(heuristic)}")
    n = len(learned)
    ratio = statistics.fmean(learned) / statistics.fmean(heuristic)
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        ratios.append(sum(learned[i] for i in picks) / sum(heuristic[i] for i in picks))
    ratios.sort()
    low = ratios[int(0.025 * resamples)]
    high = ratios[min(resamples - 1, int(0.975 * resamples))]
    lowest = min(v / h for v, h in zip(learned, heuristic))
    collapsed = sum(v < COLLAPSE_FRACTION * h for v, h in zip(learned, heuristic))
    return RatioSummary(ratio, low, high, lowest, n, collapsed)


def summary_dict(summary: RatioSummary) -> dict[str, float | int]:
    return asdict(summary)


def machine() -> dict[str, object]:
    """Where the runs ran: CPU model and ISA flags, cores, torch and Python versions, threads
    per run."""
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpu": model,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads_per_run": 1,
    }
