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


# The layers, bottom first: a module may import from its own layer's packages and from
# the layers below, never from above (README, "Architecture").
LAYERS = [
    ("base", ["__init__", "errors", "utils", "io", "types"]),
    ("data and plumbing", ["data", "stages", "selection"]),
    ("evaluation, tokenizers, embeddings, configs", ["eval", "tokenizers", "embed", "config"]),
    ("models, training and diagnostics", ["models", "training", "diagnostics"]),
    ("run stages and workflows", ["recommender_stage", "cold_start", "catalogue", "scale", "pipeline"]),
    ("grids and serving", ["grid", "serve"]),
    ("command line", ["commands", "cli", "__main__"]),
]


def _import_graph() -> dict[str, set[str]]:
    """Module -> the sidkit modules it imports, function-local imports included (a cycle
    hidden in a function is still a cycle)."""
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import mod` imports the module mod; `from mod import name`, the module
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_from_a_layer_above_it():
    graph = _import_graph()
    layer = {pkg: i for i, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}
    unplaced = sorted({_top(m) for m in graph} - set(layer))
    assert not unplaced, f"give these a layer in LAYERS (and the README's architecture table): {unplaced}"
    upward = sorted(f"{a} -> {b} ({LAYERS[layer[_top(a)]][0]} -> {LAYERS[layer[_top(b)]][0]})"
                    for a, targets in graph.items() for b in targets
                    if layer[_top(b)] > layer[_top(a)])
    assert not upward, f"imports from a layer above: {upward}"


def test_there_is_no_import_cycle():
    graph = _import_graph()
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def visit(v):                                   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_a_cycle_and_an_upward_import(monkeypatch):
    """The walk itself: a hand-made graph with a cycle and an upward edge is caught."""
    fake = {"sidkit.data.a": {"sidkit.data.b"}, "sidkit.data.b": {"sidkit.data.a", "sidkit.grid"},
            "sidkit.grid": set()}
    monkeypatch.setattr(__import__(__name__), "_import_graph", lambda: fake)
    import pytest

    with pytest.raises(AssertionError, match=r"sidkit.data.b -> sidkit.grid"):
        test_no_module_imports_from_a_layer_above_it()
    with pytest.raises(AssertionError, match=r"\['sidkit.data.a', 'sidkit.data.b'\]"):
        test_there_is_no_import_cycle()


def test_model_defaults_are_the_same_in_the_config_tables_and_the_estimators():
    """A model's parameters appear twice: the typed config table (validation, docs) and the
    estimator's constructor (the Python API). They must agree, key by key and default by
    default, so that `sidkit run` and `CausalSID()` build the same model."""
    import inspect

    from sidkit.config import CausalSIDConfig, PopularityConfig, SASRecConfig, TigerConfig
    from sidkit.models import TIGER, CausalSID, Popularity, SASRec

    problems = []
    for table, model in ((PopularityConfig, Popularity), (SASRecConfig, SASRec),
                         (CausalSIDConfig, CausalSID), (TigerConfig, TIGER)):
        sig = {k: p.default for k, p in inspect.signature(model.__init__).parameters.items() if k != "self"}
        fields = {k: f.default for k, f in table.model_fields.items() if k not in ("type", "label", "train")}
        if set(sig) != set(fields):
            problems.append(f"{model.__name__}: only in the config {sorted(set(fields) - set(sig))}, "
                            f"only in the constructor {sorted(set(sig) - set(fields))}")
        problems += [f"{model.__name__}.{k}: config {fields[k]!r}, constructor {sig[k]!r}"
                     for k in sorted(set(sig) & set(fields)) if sig[k] != fields[k]]
    assert not problems, problems
