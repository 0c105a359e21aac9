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
    # The trainer's CLI and progress display need the examples extra (tyro, rich).
    main_job = 'pip install -e ".[examples]" && python examples/train_slot_garden.py'
    assert main_job in text
    assert "bash .ci/test.sh" in text


def test_readme_opens_with_install_and_a_first_policy() -> None:
    """What a user does first comes first: install, then build a policy and act; the
    repository's set-up commands after that."""
    text = README.read_text()
    install = text.index("pip install slotformer")
    first_snippet = text.index("```python")
    assert install < first_snippet < text.index("bash .ci/test.sh")
    snippet = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    assert len(snippet.strip().splitlines()) <= 14, "the first snippet should stay short"


def test_readme_links_resolve() -> None:
    """Every relative link and image in the README points at a file in the repository."""
    root = README.parent
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if "://" not in target:
            assert (root / target).exists(), f"README links to missing {target}"
