"""Print each failed/errored test of a junit xml with the tail of its traceback."""
import sys
import xml.etree.ElementTree as ET

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
for case in ET.parse(path).getroot().iter("testcase"):
    for child in case:
        if child.tag in ("failure", "error"):
            text = (child.text or "").rstrip().splitlines()
            print(f"=== {case.get('classname')}::{case.get('name')} [{child.tag}]")
            print("    " + (child.get("message") or "")[:300])
            print("\n".join(text[-n:]))
