"""The README's usage snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_snippet_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python snippet"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    step = namespace["step"]
    assert step.actions["op"].shape == (16,)  # type: ignore[attr-defined]
    assert step.value.shape == (16,)  # type: ignore[attr-defined]


def test_every_readme_python_snippet_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    assert "python examples/train_slot_garden.py" in text
    assert "bash .ci/test.sh" in text
