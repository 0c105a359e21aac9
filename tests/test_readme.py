"""The README's snippets (and those of the docs it sends users to) run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"


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


def test_every_migration_guide_snippet_runs() -> None:
    guide = DOCS / "migration.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, str(guide), "exec"), {})


def test_readme_names_the_two_commands() -> None:
    text = README.read_text()
    # The trainer's CLI and progress display need the examples extra (tyro, rich).
    main_job = 'pip install -e ".[examples]" && python examples/train_slot_garden.py'
    assert main_job in text
    assert "bash .ci/test.sh" in text


def test_readme_opens_with_install_and_a_first_policy() -> None:
    """What a user does first comes first: install, then build a policy and act, then the
    repository's two set-up commands, before any result or reference section."""
    text = README.read_text()
    install = text.index("pip install slotformer")
    first_snippet = text.index("```python")
    assert install < first_snippet < text.index("bash .ci/test.sh") < text.index("## What it learns")
    assert text.index("bash .ci/test.sh") < len(text) // 3, "the two commands belong near the top"
    snippet = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    assert len(snippet.strip().splitlines()) <= 14, "the first snippet should stay short"


def test_readme_links_resolve() -> None:
    """Every relative link and image in the README and the docs points at a file in the
    repository, and every in-page anchor of the README at one of its headings."""
    for page in [README, *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    text = README.read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in headings, f"README links to missing heading #{anchor}"


def test_readme_glossary_explains_the_terms_it_uses() -> None:
    text = README.read_text()
    glossary = text[text.index("## Glossary"):]
    glossary = glossary[:glossary.index("\n## ", 1)]
    for term in ("blueprint", "CLS", "host sync", "slot_by_op", "Q(s, op)", "pointer head",
                 "probability floor", "op"):
        assert term in text, f"{term!r} is no longer used: drop it from this list"
        assert f"**{term}" in glossary or f"**`{term}" in glossary or f", {term}" in glossary, \
            f"the README uses {term!r} but its glossary does not explain it"
