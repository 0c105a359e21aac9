"""Why the reference's own K = 4 golden update moves with the thread count.

Runs the reference alone (no slotformer) twice, on 1 and on 2 threads (a child process each:
``OMP_NUM_THREADS`` and ``torch.set_num_threads``), through ``tests/simic/test_ppo_update_golden.py``'s
``_build_agent(recurrent_n_epochs=4)`` + ``_fill_buffer`` + ``PPOAgent.update``, and records
every call of its blueprint head's probability floor (``_apply_floor_to_logits`` on the
13-wide head: the anchor pass, then one per epoch). The agent's default blueprint floor 0.12
is capped at 0.99 / 13 = 0.07615 for 13 valid actions, just under the uniform 1 / 13 =
0.07692 of a near-uniform freshly initialised head, so some actions sit within 1e-6 of it.
The floor is discontinuous there (an action below it is raised to it and the others scaled;
just above it, it is scaled with them), so a rounding difference that carries an action
across it changes the log-probs by far more than the difference itself.

Usage: python compat/floor_flip.py [--esper /tmp/esper]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("policy_loss", "ratio_mean", "ratio_std", "approx_kl")
LABELS = ("anchor", "epoch 1", "epoch 2", "epoch 3", "epoch 4")


def child(esper: Path, threads: int, out: str) -> None:
    for p in (HERE / "stubs", esper / "src"):
        sys.path.insert(0, str(p))
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    import esper.tamiyo.networks.factored_lstm as fl

    original = fl._apply_floor_to_logits
    calls = []

    def traced(logits, mask, min_prob):
        floored = original(logits, mask, min_prob)
        if logits.shape[-1] == 13:
            valid = mask.sum(-1, keepdim=True).float()
            floor = torch.minimum(torch.tensor(min_prob), 0.99 / valid)
            calls.append({
                "probs": F.softmax(logits.float(), -1).tolist(),
                "mask": mask.tolist(),
                "floor": floor.squeeze(-1).tolist(),
                "floored_log_probs": floored.tolist(),
            })
        return floored

    fl._apply_floor_to_logits = traced
    spec = importlib.util.spec_from_file_location("golden", esper / "tests/simic/test_ppo_update_golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    agent, slot_config = golden._build_agent(recurrent_n_epochs=4)
    golden._fill_buffer(agent, slot_config)
    torch.manual_seed(0)
    metrics = agent.update(clear_buffer=True)
    with open(out, "w") as f:
        json.dump({"calls": calls, "metrics": {k: float(metrics[k]) for k in KEYS}}, f)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--esper", default=os.environ.get("ESPER_DIR", "/tmp/esper"))
    parser.add_argument("--child", nargs=2, metavar=("THREADS", "OUT"))
    args = parser.parse_args()
    esper = Path(args.esper)
    if args.child:
        child(esper, int(args.child[0]), args.child[1])
        return 0
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            out = f"{tmp}/{threads}.json"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            subprocess.run([sys.executable, __file__, "--esper", str(esper), "--child", str(threads), out],
                           env=env, check=True, stderr=subprocess.DEVNULL)
            with open(out) as f:
                runs[threads] = json.load(f)
    one, two = runs[1], runs[2]
    print("reference alone, golden update K=4, blueprint head (13 valid actions, floor 0.12 capped at 0.99/13):")
    print("  pass      below floor (1 / 2 threads)   min |p - floor| (1 / 2 threads)   max |p(1) - p(2)|")
    for label, a, b in zip(LABELS, one["calls"], two["calls"]):
        rows = [  # valid actions only (a row of an irrelevant head has one)
            (pa, pb, fl)
            for pas, pbs, fl, ms in zip(a["probs"], b["probs"], a["floor"], a["mask"])
            for pa, pb, valid in zip(pas, pbs, ms)
            if valid
        ]
        below = [sum(p < fl for p, _, fl in rows), sum(p < fl for _, p, fl in rows)]
        gaps = [min(abs(p - fl) for p, _, fl in rows), min(abs(p - fl) for _, p, fl in rows)]
        dp = max(abs(pa - pb) for pa, pb, _ in rows)
        dlog = max(
            abs(x - y)
            for ra, rb in zip(a["floored_log_probs"], b["floored_log_probs"])
            for x, y in zip(ra, rb)
        )
        flag = "   <- an action crosses the floor" if below[0] != below[1] else ""
        print(f"  {label:8}  {below[0]:2d} / {below[1]:2d}{'':21}{gaps[0]:.3g} / {gaps[1]:.3g}"
              f"{'':18}{dp:.3g}  (floored log-probs: {dlog:.3g}){flag}")
    print("  update metrics, 1 vs 2 threads: " + ", ".join(
        f"{k} {one['metrics'][k]:.8g} / {two['metrics'][k]:.8g}" for k in KEYS))
    spread = max(abs(one["metrics"][k] - two["metrics"][k]) for k in KEYS)
    print(f"  max difference: {spread:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
