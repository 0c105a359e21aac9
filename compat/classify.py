"""Group the failures of a junit xml by cause (rules written from reading the tracebacks).

Usage: python compat/classify.py RESULTS.xml
"""
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

# (group, kind, regex on "nodeid\nmessage\ntraceback"); first match wins.
# kind: internal = tests a private detail of the reference; contract = a genuine difference.
RULES = [
    ("slotformer's validation refuses a probability floor that cannot hold (the reference "
     "agent's default blueprint floor 0.12 x 13 actions > 1; the reference caps it at 0.99/13)",
     "contract", r"the floor cannot hold"),
    ("transformer needs state_dim = 23 + N*slot_dim (test uses an opaque width)", "contract",
     r"does not fit base_dim="),
    ("reference PPOAgent.load reads state_dict['slot_head.2.weight']", "contract",
     r"KeyError: 'slot_head\.2\.weight'"),
    ("forward() output has an extra 'value' key", "contract", r"'value' not in|'value' key must be removed"),
    ("empty-mask error is slotformer's InvalidStateMachineError, not esper's (and message differs; "
     "with validation off the row falls back to action 0 instead)", "contract",
     r"slotformer\.distributions\.InvalidStateMachineError|No valid (\(op \)\?)?(op )?actions"
     r"|DID NOT RAISE InvalidStateMachineError"),
    ("get_action(T>1) ValueError message wording", "contract", r"requires seq_len=1"),
    ("transformer: contributions do not read lstm_out (no LSTM grad with aux_stop_gradient=False)",
     "architecture", r"LSTM should receive gradients with aux_stop_gradient"),
    ("golden PPO metrics pinned to the reference's init RNG stream", "internal", r"test_ppo_update_golden"),
    ("reference module names/layout (feature_net, lstm_ln, lstm.layers[i].weight_hh_l0, _null_idx, "
     "contribution_predictor called on [B,H] / Dropout(0.1) layer)", "internal",
     r"feature_net|lstm_ln|weight_hh_l0|_null_idx|test_contribution_predictor_"),
    ("sampling primitive: test intercepts torch.multinomial", "internal",
     r"test_v2_stochastic_op_sampling_uses_floored_fp32_distribution"),
]

path = sys.argv[1]
groups = defaultdict(list)
for case in ET.parse(path).getroot().iter("testcase"):
    for child in case:
        if child.tag in ("failure", "error"):
            nodeid = f"{case.get('classname')}::{case.get('name')}"
            text = f"{nodeid}\n{child.get('message') or ''}\n{child.text or ''}"
            for group, kind, rx in RULES:
                if re.search(rx, text):
                    groups[(kind, group)].append(nodeid)
                    break
            else:
                groups[("UNCLASSIFIED", "unclassified")].append(nodeid)
total = sum(len(v) for v in groups.values())
print(f"{path}: {total} failures/errors")
for (kind, group), ids in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
    print(f"  {len(ids):3d}  [{kind}] {group}")
    if "-v" in sys.argv:
        for i in ids:
            print(f"         {i}")
