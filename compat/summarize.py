"""Count passed/failed/error/skipped in a junit xml; write MODE.outcomes (nodeid<TAB>outcome).

Usage: python summarize.py RESULTS.xml [CONSTRUCTED]
With CONSTRUCTED (a list of pytest node ids, written by compat_swap), also count the subset of
tests that constructed a swapped network.
"""
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def junit_id(nodeid: str) -> str:
    path, _, rest = nodeid.partition("::")
    parts = rest.split("::")
    module = re.sub(r"\.py$", "", path).replace("/", ".")
    return ".".join([module, *parts[:-1]]) + "::" + parts[-1]


path = sys.argv[1]
constructed = None
if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
    with open(sys.argv[2]) as f:
        constructed = {junit_id(line.strip()) for line in f if line.strip()}
root = ET.parse(path).getroot()
counts: Counter[str] = Counter()
sub: Counter[str] = Counter()
lines = []
for case in root.iter("testcase"):
    nodeid = f"{case.get('classname')}::{case.get('name')}"
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            outcome = {"failure": "failed"}.get(child.tag, child.tag)
            break
    counts[outcome] += 1
    if constructed is not None and nodeid in constructed:
        sub[outcome] += 1
    lines.append(f"{nodeid}\t{outcome}")
with open(path.rsplit(".", 1)[0] + ".outcomes", "w") as f:
    f.write("\n".join(sorted(lines)) + "\n")


def fmt(c: Counter) -> str:
    return f"total {sum(c.values())}, " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


print(f"{path}: {fmt(counts)}")
if constructed is not None:
    print(f"{path}: of the tests that construct the network: {fmt(sub)}")
