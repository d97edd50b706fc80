"""The code's layout rules, checked over src/sidkit so that a regression fails CI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sidkit"
ERRORS = {"SidkitError", "DataError", "ConfigError", "ArtifactError", "NotFittedError"}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_every_error_sidkit_raises_says_how_to_fix_it():
    """errors.py promises a problem and a fix for every error: a call of one of sidkit's
    error classes with a problem alone is a defect."""
    missing = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in ERRORS or any(isinstance(a, ast.Starred) for a in node.args):
                continue
            if len(node.args) + sum(k.arg == "fix" for k in node.keywords) < 2:
                missing.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert not missing, f"errors without a fix hint: {missing}"


def test_comments_do_not_cite_the_tracker_or_the_spec():
    """A reader of the code has neither the issue tracker nor SPEC.md: comments give the
    reason, or a page under docs/."""
    pattern = re.compile(r"\bissue \d+|\bSPEC\b|\bseed 00\d")
    hits = [f"{p.relative_to(SRC.parent)}:{i}" for p in sorted(SRC.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, f"comments citing issues / SPEC / seed files: {hits}"
