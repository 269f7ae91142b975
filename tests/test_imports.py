"""Layers only go down: every pic_bench module imports, the package's import graph has no cycle, and each wing imports
only the wings below it (``ALLOWED``).

    nice -n 10 python -m pytest tests/test_imports.py -q

The graph is read with ``ast`` from every import statement of a module, the ones inside functions too (a lazy
import hides a cycle from Python but not from a reader), and ``import a.b.c`` counts as importing the packages
``a`` and ``a.b`` as well, since Python runs their ``__init__`` first.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pic_bench"

# Cycles known and owned by another change (none now: launch.py <-> run.py went with pic_bench/suite/tasks.py).
EXPECTED_FOR_NOW: list[set[str]] = []


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its source (and their parent packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import head`: the module head
    out = set()
    for m in found:
        out.update(p for p in _with_parents(m) if p in known)
    # A module's own parent packages are already being imported when it runs: no edge back up.
    return out - set(_with_parents(name))


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan), each a set of module names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles_and_only_them():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_the_graph_reads_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub.c import x\n")
    (pkg / "sub" / "c.py").write_text("from .. import b\n")
    known = {"p", "p.a", "p.b", "p.sub", "p.sub.c"}
    assert imports_of("p.a", pkg / "a.py", known) == {"p.sub", "p.sub.c"}
    assert imports_of("p.sub.c", pkg / "sub" / "c.py", known) == {"p.b"}


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_import_graph_has_no_cycle():
    found = [c for c in cycles(graph()) if c not in EXPECTED_FOR_NOW]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


# Which wing may import which (STYLE.md "Layout: wings"; issue 20): layers only go down. The method never imports
# the suite, the report or the evaluation (a training run does not evaluate: the task does); the report reads rows
# and knows nothing of how they were made. The entry modules (pic_bench.run, ...) and the package's own
# __init__ (its lazy load_backbone) may import anything.
BASE = {"config", "files"}  # strict config; atomic writes that name the file on failure
ALLOWED = {
    "config": set(),
    "files": set(),
    "reference": set(),
    "data": BASE,
    "pic": BASE | {"data"},
    "eval": BASE | {"data", "pic"},
    "report": BASE | {"reference"},
    "bench": BASE | {"data", "pic", "eval", "report"},
    "suite": BASE | {"data", "pic", "eval", "report", "bench", "reference"},
}


def wing(module: str) -> str | None:
    """The wing a module belongs to (``pic_bench.pic.train`` -> ``pic``); None for the package and entry modules."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    w = parts[1]
    return w if w in ALLOWED else None


def violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(g.items()):
        w = wing(m)
        if w is None:
            continue
        for t in sorted(targets):
            tw = wing(t)
            if tw is not None and tw != w and tw not in ALLOWED[w]:
                out.append(f"{m} imports {t} ({w} may import {', '.join(sorted(ALLOWED[w])) or 'nothing of ours'})")
    return out


def test_every_module_is_in_a_wing_or_an_entry_point():
    entries = {"pic_bench", "pic_bench.run", "pic_bench.tables", "pic_bench.status", "pic_bench.preflight"}
    assert [m for m in modules() if wing(m) is None and m not in entries] == []


def test_the_rule_finds_an_arrow_up():
    assert violations({"pic_bench.pic.train": {"pic_bench.eval.evaluate", "pic_bench.data"}}) == [
        "pic_bench.pic.train imports pic_bench.eval.evaluate (pic may import config, data, files)"]
    assert violations({"pic_bench.report.tables": {"pic_bench.config", "pic_bench.report.plots"}}) == []


def test_wings_import_only_the_wings_below_them():
    found = violations(graph())
    assert not found, "imports against the wing rule:\n" + "\n".join(found)
