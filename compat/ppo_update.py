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
through ``slotformer.migration.load_reference_state_dict``, each run (rollout and update)
on 1 and on 2 threads. slotformer's metrics must be within 1e-6 of the reference's on the
same thread count or on the other: at K = 4 a rounding difference carries one of the
reference's blueprint actions across a discontinuity of its probability floor (see
``floor_flip.py``), so the reference's own result moves with the thread count.

For both networks it then saves an updated agent with ``PPOAgent.save``, restores it into a
freshly built agent the way docs/migration.md says (``PPOAgent.load`` reads the
flat slot head's last layer, which the Slot Transformer does not have), and checks that the
next update of the resumed agent equals the uninterrupted one exactly.

The update reported first runs with slotformer's validation on, as a user's would. The
parity and resume checks run with it off: it only raises, and it refuses the reference
agent's default blueprint floor (0.12 with 13 valid actions).

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

    # Validation only raises (it changes no value), and it refuses the reference agent's
    # default blueprint floor (0.12 x 13 valid actions > 1; the reference caps it at 0.99/13):
    # the checks below are about the maths and the checkpoint, so they run without it.
    import slotformer

    def update(agent, threads: int) -> dict:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        try:
            with slotformer.validation(False):
                return agent.update(clear_buffer=True)
        finally:
            torch.set_num_threads(1)

    def worst(a: dict, b: dict) -> float:
        return max(abs(float(a[key]) - float(b[key])) for key in KEYS)

    if mode == "lstm":
        from slotformer.migration import load_reference_state_dict

        print("parity (reference weights, same buffer, same seed; slotformer validation off):")
        for k in (1, 4):
            runs = {}
            for threads in (1, 2):  # the whole run (the reference's rollout too) on `threads`
                torch.set_num_threads(threads)
                with network_class(original):
                    ref, slot_config = golden._build_agent(recurrent_n_epochs=k)
                golden._fill_buffer(ref, slot_config)
                with network_class(replacement):
                    sf, _ = golden._build_agent(recurrent_n_epochs=k)
                load_reference_state_dict(sf.policy.network, ref.policy.network.state_dict())
                sf.buffer = copy.deepcopy(ref.buffer)
                runs[threads] = (update(ref, threads), update(sf, threads))
            for threads, (ref_metrics, sf_metrics) in runs.items():
                diff = worst(ref_metrics, sf_metrics)
                # Rounding alone can carry the reference across a discontinuity of its floor
                # (floor_flip.py): slotformer must give a result the reference gives.
                nearest = min(worst(ref_any, sf_metrics) for ref_any, _ in runs.values())
                gold = max(abs(float(sf_metrics[key]) - golden._GOLDENS[k][key]) for key in KEYS)
                print(f"K={k}, {threads} thread(s): max |slotformer - reference| over {len(KEYS)} "
                      f"metrics = {diff:.3g} (to the nearer of the reference's 1- and 2-thread "
                      f"results: {nearest:.3g}); max |slotformer - pinned golden| = {gold:.3g}")
                ok_all &= nearest <= 1e-6
            print(f"      reference at 1 vs 2 threads: {worst(runs[1][0], runs[2][0]):.3g}; "
                  f"slotformer at 1 vs 2 threads: {worst(runs[1][1], runs[2][1]):.3g}")
            for key in KEYS:
                print(f"      {key}: reference={float(runs[1][0][key]):.8g}/{float(runs[2][0][key]):.8g} "
                      f"slotformer={float(runs[1][1][key]):.8g}/{float(runs[2][1][key]):.8g} "
                      "(1/2 threads)")

    # Resuming without PPOAgent.load (docs/migration.md): build the agent as
    # for training, then load what PPOAgent.save wrote into it.
    print("resume (agent.save, then the README's recipe instead of PPOAgent.load):")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "agent.pt"
        first, slot_config = golden._build_agent(recurrent_n_epochs=4)
        golden._fill_buffer(first, slot_config)
        update(first, 1)
        first.save(path)
        try:
            type(first).load(path, device="cpu")
            print("      PPOAgent.load: loads")
        except Exception as exc:
            print(f"      PPOAgent.load: {type(exc).__name__}: {exc}")
        resumed, _ = golden._build_agent(recurrent_n_epochs=4)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        resumed.policy.load_state_dict(checkpoint["network_state_dict"])
        resumed.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        resumed.value_normalizer.load_state_dict(checkpoint["value_normalizer_state_dict"])
        resumed.train_steps = checkpoint["train_steps"]
        resumed._aux_training_step = checkpoint["aux_training_step"]
        metrics = []
        for agent in (first, resumed):
            torch.manual_seed(7)
            golden._fill_buffer(agent, slot_config)
            metrics.append(update(agent, 1))
        same_weights = all(
            torch.equal(v, resumed.policy.network.state_dict()[name])
            for name, v in first.policy.network.state_dict().items()
        )
        diff = worst(*metrics)
        print(f"      next update, resumed vs uninterrupted: max metric difference {diff:.3g}; "
              f"weights after it identical: {same_weights}")
        ok_all &= diff == 0.0 and same_weights
    print("RESULT:", "OK" if ok_all else "PROBLEM")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
