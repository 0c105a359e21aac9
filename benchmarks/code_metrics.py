"""Size and path metrics of the package, for before/after comparisons of a restructure.

    python benchmarks/code_metrics.py            # a table on stdout
    python benchmarks/code_metrics.py --json     # the same as JSON

What it counts:

* **code lines**: lines of ``slotformer/`` holding code, not blank, comment or docstring;
* **checking lines**: the lines of every ``if ...: raise`` block (an ``if`` whose body ends in
  ``raise``; its ``else`` not counted), plus every line of a call to ``expect(...)`` (the
  helper that states one expectation), so moving a check into the helper still counts it;
* **package lines**: every line of ``slotformer/*.py`` (``wc -l``), the files over 600
  lines, and the ``raise`` statements;
* **the path of one call**: the distinct ``slotformer`` functions, the calls into them and
  the files they live in, for one bundle ``get_action`` and one ``evaluate_actions`` of the
  Slot Transformer, traced with ``sys.setprofile``, validation on, after a warm-up call.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1] / "slotformer"


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    end = body[0].end_lineno or body[0].lineno
                    lines.update(range(body[0].lineno, end + 1))
    return lines


def _code_lines(source: str, tree: ast.AST) -> set[int]:
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines - _docstring_lines(tree)


def _checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and node.body and isinstance(node.body[-1], ast.Raise):
            lines.update(range(node.lineno, (node.body[-1].end_lineno or node.lineno) + 1))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "expect"
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def line_counts() -> dict[str, Any]:
    code = checks = lines = raises = 0
    long_files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        code_lines = _code_lines(source, tree)
        code += len(code_lines)
        checks += len(_checking_lines(tree) & code_lines)
        count = len(source.splitlines())
        lines += count
        raises += sum(isinstance(node, ast.Raise) for node in ast.walk(tree))
        if count > 600:
            long_files.append(f"{path.relative_to(PACKAGE.parent)} ({count})")
    return {"package_lines": lines, "files_over_600": long_files, "raise_statements": raises,
            "code_lines": code, "checking_lines": checks}


def call_paths() -> dict[str, int]:
    import torch

    import slotformer

    torch.manual_seed(0)
    policy = slotformer.create_policy("transformer", lstm_hidden_dim=32, embed_dim=16, head_hidden=32)
    head_names = policy.network.action_space.head_names
    B, T, N = 4, 3, policy.slot_config.num_slots
    features = torch.randn(B, T, policy.state_dim)
    blueprints = torch.full((B, T, N), -1)
    masks: dict[str, Any] = dict.fromkeys(head_names)
    step = policy.get_action(features[:, 0], blueprints[:, 0], masks)  # warm-up (caches)
    actions = {k: v[:, None].expand(B, T).contiguous() for k, v in step.actions.items()}
    policy.evaluate_actions(features, blueprints, actions, masks)
    calls = {
        "get_action": lambda: policy.get_action(features[:, 0], blueprints[:, 0], masks),
        "eval": lambda: policy.evaluate_actions(features, blueprints, actions, masks),
    }
    figures: dict[str, int] = {}
    for name, call in calls.items():
        functions, count, files = _trace(call)
        figures.update({f"{name}_functions": functions, f"{name}_calls": count,
                        f"{name}_files": files})
    return figures


def _trace(call: Any) -> tuple[int, int, int]:
    """Distinct slotformer functions, calls into them and their files, for one ``call()``."""
    root = str(PACKAGE)
    seen: set[tuple[str, str]] = set()
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.startswith(root):
            calls += 1
            seen.add((frame.f_code.co_filename, frame.f_code.co_qualname))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return len(seen), calls, len({filename for filename, _ in seen})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    figures = {**line_counts(), **call_paths()}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name, value in figures.items():
        print(f"{name:>20}: {value}")


if __name__ == "__main__":
    main()
