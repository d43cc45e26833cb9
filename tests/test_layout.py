"""The package's imports run one way (STYLE.md's layout): no two modules import each other,
directly or around a circle, counting the imports inside functions; the floor (metrics, safety,
categories, paper) imports nothing of ours; files (weights) and data know no model."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "fcnseg"


def _modules() -> dict[str, Path]:
    found = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


MODULES = _modules()


def _targets(module: str, node: ast.ImportFrom) -> list[str]:
    """The modules of ours that `from ... import ...` in `module` reads."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):  # every import, lazy ones too
            if isinstance(node, ast.ImportFrom):
                names = _targets(module, node)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            graph[module] |= {n for n in names if n in MODULES and n != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("floor", ["metrics", "safety", "categories", "paper"])
def test_the_floor_imports_nothing_of_ours(floor):
    assert _graph()[f"fcnseg.{floor}"] == set()


def test_files_and_data_know_no_model_and_no_command():
    above = ("fcnseg.models", "fcnseg.cli", "fcnseg.engine", "fcnseg.predict", "fcnseg.fast")
    for module, imports in _graph().items():
        if module.startswith(("fcnseg.weights", "fcnseg.data")):
            assert not [m for m in imports if m.startswith(above)], module
