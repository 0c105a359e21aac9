"""One real PPO update of the reference project (esper-lite's ``PPOAgent.update``) with each
network swapped in.

It reuses, unedited, the reference's smallest end-to-end update test
(``tests/simic/test_ppo_update_golden.py``): ``_build_agent`` (``create_policy("lstm")`` +
``PPOAgent``, 1 env, 4 steps, chunk 4), ``_fill_buffer`` (a fixed 4-step episode sampled
with ``network.get_action``) and ``agent.update(clear_buffer=True)``, for K = 1 and 4
internal epochs. It reports whether the update runs, whether every metric is finite, and the
losses.

For the flat LSTM it also runs a parity check: the reference agent is built (reference
network), its buffer filled, and the *same* buffer is updated twice: once by the reference
agent and once by an agent holding slotformer's network with the reference weights loaded
through ``slotformer.migration.load_reference_state_dict``. The metrics must agree (and
so match the reference's pinned goldens).

Usage (from anywhere; see README.md):
    SLOTFORMER_SWAP=lstm|transformer python compat/ppo_update.py [--esper /tmp/esper]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
        "ratio_mean", "ratio_max", "ratio_min", "ratio_std")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--esper", default=os.environ.get("ESPER_DIR", "/tmp/esper"))
    args = parser.parse_args()
    esper = Path(args.esper)
    for p in (HERE / "plugin", HERE / "stubs", HERE.parent, esper / "src"):
        sys.path.insert(0, str(p))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    torch.set_num_threads(1)
    import compat_swap
    import esper.tamiyo.networks as networks_pkg
    import esper.tamiyo.networks.factored_lstm as factored_lstm

    mode = compat_swap.MODE
    replacement = networks_pkg.FactoredRecurrentActorCritic
    original = getattr(factored_lstm, "_compat_original", replacement)

    @contextlib.contextmanager
    def network_class(cls):
        saved = (factored_lstm.FactoredRecurrentActorCritic, networks_pkg.FactoredRecurrentActorCritic)
        factored_lstm.FactoredRecurrentActorCritic = cls
        networks_pkg.FactoredRecurrentActorCritic = cls
        try:
            yield
        finally:
            factored_lstm.FactoredRecurrentActorCritic, networks_pkg.FactoredRecurrentActorCritic = saved

    spec = importlib.util.spec_from_file_location(
        "golden_update_test", esper / "tests/simic/test_ppo_update_golden.py"
    )
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)

    def finite_report(metrics: dict) -> tuple[bool, list[str]]:
        bad = []
        for k, v in metrics.items():
            if isinstance(v, bool):
                continue
            if isinstance(v, (int, float)) and not math.isfinite(v):
                bad.append(k)
            elif torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all():
                bad.append(k)
        return not bad, bad

    print(f"network: {mode} ({original if mode == 'reference' else replacement.__mro__[1]})")
    ok_all = True
    for k in (1, 4):
        try:
            agent, slot_config = golden._build_agent(recurrent_n_epochs=k)
            golden._fill_buffer(agent, slot_config)
            metrics = agent.update(clear_buffer=True)
        except Exception as exc:
            print(f"K={k}: update FAILED: {type(exc).__name__}: {exc}")
            ok_all = False
            continue
        finite, bad = finite_report(metrics)
        ok_all &= finite and metrics.get("ppo_update_performed") is True
        print(
            f"K={k}: ran; ppo_update_performed={metrics.get('ppo_update_performed')} "
            f"finiteness_gate_skip_count={metrics.get('finiteness_gate_skip_count')} "
            f"all metrics finite={finite}{'' if finite else ' ' + str(bad)}"
        )
        print("      " + ", ".join(f"{key}={float(metrics[key]):.6g}" for key in KEYS))

    if mode == "lstm":
        from slotformer.migration import load_reference_state_dict

        print("parity (reference weights, same buffer, same seed):")
        for k in (1, 4):
            with network_class(original):
                ref_agent, slot_config = golden._build_agent(recurrent_n_epochs=k)
            golden._fill_buffer(ref_agent, slot_config)
            with network_class(replacement):
                sf_agent, _ = golden._build_agent(recurrent_n_epochs=k)
            load_reference_state_dict(sf_agent.policy.network, ref_agent.policy.network.state_dict())
            sf_agent.buffer = copy.deepcopy(ref_agent.buffer)
            torch.manual_seed(0)
            ref_metrics = ref_agent.update(clear_buffer=True)
            torch.manual_seed(0)
            sf_metrics = sf_agent.update(clear_buffer=True)
            worst = max(abs(float(ref_metrics[key]) - float(sf_metrics[key])) for key in KEYS)
            gold = max(abs(float(sf_metrics[key]) - golden._GOLDENS[k][key]) for key in KEYS)
            print(f"K={k}: max |slotformer - reference| over {len(KEYS)} metrics = {worst:.3g}; "
                  f"max |slotformer - pinned golden| = {gold:.3g}")
            for key in KEYS:
                print(f"      {key}: reference={float(ref_metrics[key]):.8g} slotformer={float(sf_metrics[key]):.8g}")
            ok_all &= worst < 5e-4
    print("RESULT:", "OK" if ok_all else "PROBLEM")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
