"""Smallest reproductions of the differences the measurement found (one line each).

Usage: SLOTFORMER_SWAP=lstm|transformer python compat/repro.py [--esper /tmp/esper]
Each check prints SAME (behaves like the reference) or DIFF with what happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--esper", default=os.environ.get("ESPER_DIR", "/tmp/esper"))
    esper = Path(parser.parse_args().esper)
    for p in (HERE / "plugin", HERE / "stubs", HERE.parent, esper / "src"):
        sys.path.insert(0, str(p))
    import torch

    torch.set_num_threads(1)
    import compat_swap
    import esper.tamiyo.networks as networks_pkg
    import esper.tamiyo.networks.factored_lstm as fl
    from esper.leyline import NUM_BLUEPRINTS
    from esper.leyline.slot_config import SlotConfig
    from esper.simic.agent import PPOAgent
    from esper.tamiyo.policy import create_policy
    from esper.tamiyo.policy.action_masks import InvalidStateMachineError as RefInvalid

    Net = networks_pkg.FactoredRecurrentActorCritic
    Original = getattr(fl, "_compat_original", Net)
    print(f"SLOTFORMER_SWAP={compat_swap.MODE}")

    @contextlib.contextmanager
    def network_class(cls):
        saved = fl.FactoredRecurrentActorCritic, networks_pkg.FactoredRecurrentActorCritic
        fl.FactoredRecurrentActorCritic = networks_pkg.FactoredRecurrentActorCritic = cls
        try:
            yield
        finally:
            fl.FactoredRecurrentActorCritic, networks_pkg.FactoredRecurrentActorCritic = saved

    def check(title: str, fn) -> None:
        try:
            verdict = fn()
        except Exception as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            verdict = f"DIFF: raises {type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]} (at {Path(last.filename).name}:{last.lineno})"
        print(f"- {title}\n    {verdict}")

    torch.manual_seed(0)
    sc = SlotConfig.default()

    def policy():
        return create_policy(policy_type="lstm", slot_config=sc, device="cpu", compile_mode="off")

    def weight_decay():
        PPOAgent(policy=policy(), slot_config=sc, weight_decay=0.01, device="cpu")
        return "SAME: constructed"

    check("PPOAgent(policy=create_policy('lstm', ...), slot_config=sc, weight_decay=0.01)", weight_decay)

    def save_load():
        agent = PPOAgent(policy=policy(), slot_config=sc, device="cpu")
        with tempfile.TemporaryDirectory() as d:
            agent.save(Path(d) / "a.pt")
            PPOAgent.load(Path(d) / "a.pt", device="cpu")
        return "SAME: saved and loaded"

    check("agent.save(p); PPOAgent.load(p)", save_load)

    def ref_checkpoint():
        with tempfile.TemporaryDirectory() as d:
            with network_class(Original):
                PPOAgent(policy=policy(), slot_config=sc, device="cpu").save(Path(d) / "a.pt")
            PPOAgent.load(Path(d) / "a.pt", device="cpu")
        return "SAME: a reference-saved agent checkpoint loads"

    if compat_swap.MODE != "reference":
        check("PPOAgent.load(checkpoint saved by the reference network)", ref_checkpoint)

    def empty_mask():
        net = Net(state_dim=116)
        try:
            net.get_action(torch.randn(1, 116), torch.zeros(1, 3, dtype=torch.long),
                           slot_mask=torch.zeros(1, 3, dtype=torch.bool),
                           op_mask=torch.tensor([[False, True, False, False, False, False]]))
        except RefInvalid as exc:
            ok = "No valid actions available" in str(exc)
            return "SAME" if ok else f"DIFF: right class, message {str(exc)[:100]!r}"
        return "DIFF: no exception"

    check("net.get_action(state, bp, slot_mask=all False, op_mask=only op 1) raises esper's InvalidStateMachineError('No valid actions available')", empty_mask)

    def forward_keys():
        out = Net(state_dim=116)(torch.randn(2, 1, 116), torch.zeros(2, 1, 3, dtype=torch.long))
        return "DIFF: forward() output has a 'value' key" if "value" in out else "SAME"

    check("'value' not in net(state, bp)  (reference: only state_value and q_value)", forward_keys)

    def seq_msg():
        net = Net(state_dim=116)
        try:
            net.get_action(torch.randn(2, 5, 116), torch.zeros(2, 5, 3, dtype=torch.long))
        except ValueError as exc:
            import re
            return "SAME" if re.search("get_action.*requires seq_len=1.*got 5", str(exc)) else f"DIFF: message {str(exc)!r}"
        return "DIFF: no ValueError"

    check("net.get_action(state [2,5,D]) message matches 'get_action.*requires seq_len=1.*got 5'", seq_msg)

    def any_state_dim():
        net = Net(state_dim=20)
        net.get_action(torch.randn(1, 20), torch.randint(0, NUM_BLUEPRINTS, (1, 3)))
        return "SAME"

    check("FactoredRecurrentActorCritic(state_dim=20).get_action(...)", any_state_dim)

    def aux_grad():
        net = Net(state_dim=116)
        pred = net.predict_contributions(torch.randn(2, 116), torch.zeros(2, 3, dtype=torch.long),
                                         net.get_initial_hidden(2, torch.device("cpu")), stop_gradient=False)
        pred.sum().backward()
        n = sum(p.grad is not None for p in net.lstm.parameters())
        return "SAME: LSTM gets gradient" if n else "DIFF: no gradient reaches net.lstm (contributions do not read the LSTM output)"

    check("predict_contributions(..., stop_gradient=False).sum().backward() reaches net.lstm", aux_grad)

    def default_floor():
        from esper.leyline import PROBABILITY_FLOOR_PER_HEAD

        net = Net(state_dim=116)
        net.get_action(torch.randn(1, 116), torch.zeros(1, 3, dtype=torch.long),
                       probability_floor=dict(PROBABILITY_FLOOR_PER_HEAD), deterministic=True)
        return "SAME: the floor is capped at 0.99 / valid actions"

    check("net.get_action(..., all actions valid, probability_floor=PROBABILITY_FLOOR_PER_HEAD) "
          "(the PPO agent's default floors; blueprint 0.12 x 13 actions > 1)", default_floor)

    def dropout():
        net = Net(state_dim=116)
        ps = [m.p for m in net.contribution_predictor.modules() if isinstance(m, torch.nn.Dropout)]
        return "SAME" if ps and ps[0] == 0.1 else f"DIFF: contribution predictor dropout {ps}"

    check("contribution predictor has Dropout(0.1)", dropout)


if __name__ == "__main__":
    main()
