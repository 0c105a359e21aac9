"""Pictures for the docs from saved results: learning curves and a labelled attention heatmap.

    python benchmarks/training_comparison.py --json docs/training_results.json \\
        --checkpoints runs/comparison                      # the runs (about 10 minutes)
    python benchmarks/plot_training.py                     # docs/learning_curves.png
    python benchmarks/plot_training.py --attention runs/comparison/transformer_2x5_seed0.pt

Learning curves: one panel per grid, return (the mean of the last ``2 E`` training episodes,
sampled actions) against environment steps; a line per network for the mean over seeds with
a band from the lowest to the highest seed; the scripted heuristic and the random valid policy
(their evaluation returns, mean over the runs) as dashed and dotted reference lines.

Attention: the checkpoint's policy plays one episode of its grid, and the last layer's
slot-slot attention, averaged over the episode, is drawn with slot ids on both axes
(:func:`slotformer.viz.attention_figure`).

Needs the ``plot`` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slotformer.checkpoint import load_checkpoint
from slotformer.envs import SlotGardenEnv
from slotformer.telemetry import compute_attention_stats
from slotformer.viz import attention_figure

COLOURS = {"transformer": "tab:blue", "lstm": "tab:orange"}


def learning_curves(results: dict[str, Any]) -> Figure:
    """One panel per grid: mean and min-max band over seeds per network, reference lines."""
    runs = [r for r in results["runs"] if r.get("curve")]
    if not runs:
        raise ValueError(
            "no run has a learning curve: re-run benchmarks/training_comparison.py --json "
            "(it saves each run's curve)"
        )
    grids = sorted({r["grid"] for r in runs}, key=lambda g: [int(x) for x in g.split("x")])
    figure = Figure(figsize=(5.5 * len(grids), 4.2), layout="constrained")
    axes_row = figure.subplots(1, len(grids), squeeze=False)[0]
    for axes, grid in zip(axes_row, grids):
        on_grid = [r for r in runs if r["grid"] == grid]
        for network in sorted({r["network"] for r in on_grid}):
            curves = [r["curve"] for r in on_grid if r["network"] == network]
            steps = [point[0] for point in curves[0]]
            columns = list(zip(*[[point[1] for point in curve] for curve in curves]))
            keep = [i for i, col in enumerate(columns) if all(v is not None for v in col)]
            x = [steps[i] for i in keep]
            mean = [statistics.mean(columns[i]) for i in keep]
            axes.fill_between(x, [min(columns[i]) for i in keep], [max(columns[i]) for i in keep],
                              color=COLOURS.get(network), alpha=0.2, linewidth=0)
            axes.plot(x, mean, color=COLOURS.get(network),
                      label=f"{network} (mean of {len(curves)} seeds, band: min-max)")
        for name, style in (("heuristic", "--"), ("random", ":")):
            level = statistics.mean(float(r[name]) for r in on_grid)
            axes.axhline(level, color="black", linestyle=style, linewidth=1,
                         label=f"{name} ({level:.2f})")
        axes.set_title(f"Slot Garden {grid}")
        axes.set_xlabel("environment steps")
        axes.set_ylabel("episode return (training episodes)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="lower right")
    return figure


def attention_picture(checkpoint: str, seed: int = 0) -> Figure:
    """The checkpoint's policy plays one episode; its last-layer slot-slot attention."""
    # Imported here: the trainer module parses nothing at import, but it is an example.
    from examples.train_slot_garden import policy_fn

    policy = load_checkpoint(checkpoint)
    if policy.network_type != "transformer":
        raise ValueError(f"{checkpoint} holds a {policy.network_type}; attention needs a "
                         "transformer")
    config = policy.slot_config
    env = SlotGardenEnv(16, config, 48, seed=seed + 1000, table_seed=seed)
    act = policy_fn(policy, 16, False)
    step, obs, types = env.reset(), [], []
    with torch.no_grad():
        for _ in range(env.episode_length):
            obs.append(step.obs)
            types.append(step.blueprint_indices)
            step = env.step(act(step))
        out = policy.network(torch.stack(obs, 1), torch.stack(types, 1),
                             return_intermediates=True)  # [E, T, ...]
    seen = out["intermediates"]
    stats = compute_attention_stats(seen.attention[-1:], seen.active, seen.slot_ids)
    rows, cols = config.num_rows, config.num_cols
    return attention_figure(
        stats.slot_slot, stats.slot_ids,
        title=f"Slot Transformer on {rows}x{cols}: last-layer attention\n"
              f"(mean over one episode of 16 gardens, query rows where the slot is live)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", default="docs/training_results.json",
                        help="JSON written by training_comparison.py --json")
    parser.add_argument("--curves-out", default="docs/learning_curves.png",
                        help="where to write the learning curves ('' = skip)")
    parser.add_argument("--attention", default=None,
                        help="a transformer checkpoint to draw the attention of (None = skip)")
    parser.add_argument("--attention-out", default="docs/attention_heatmap.png",
                        help="where to write the attention heatmap")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the PNGs")
    cli = parser.parse_args(argv)
    if cli.dpi < 1:
        parser.error(f"--dpi must be a positive int, got {cli.dpi}")
    if cli.curves_out:
        results = json.loads(Path(cli.results).read_text())
        learning_curves(results).savefig(cli.curves_out, dpi=cli.dpi)
        print(f"wrote {cli.curves_out}")
    if cli.attention:
        attention_picture(cli.attention).savefig(cli.attention_out, dpi=cli.dpi)
        print(f"wrote {cli.attention_out}")


if __name__ == "__main__":
    main()
