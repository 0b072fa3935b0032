"""The package imports only downward: no module takes another's private name, and no import cycle.

Every import counts, also those inside functions (a late import hides a cycle, it does not remove
it); only imports under `if TYPE_CHECKING:` are skipped, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tuneloop

PACKAGE = Path(tuneloop.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["tuneloop", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node outside `if TYPE_CHECKING:` blocks."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)
    return out


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported tuneloop module, name taken from it or None, line) for each import in `module`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("tuneloop")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("tuneloop"):
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (source, a.name, node.lineno))
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    bad = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line}: from {src} import {name}"
           for m in MODULES for src, name, line in _imports(m)
           if name and name.startswith("_") and not name.startswith("__") and src != m]
    assert not bad, "private names imported across modules (make them public or move them):\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the tuneloop modules it imports (at any depth of its code)."""
    return {m: {src for src, _, _ in _imports(m) if src in MODULES and src != m} for m in MODULES}


def test_no_import_cycle_among_tuneloop_modules() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (a lower layer imports a higher one):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_report_imports_no_stage() -> None:
    # The run report is built from files the stages wrote; the stages call it, never the reverse.
    # gate.py is the promotion decision's typed record (gate.json) and how it reads as rows.
    allowed = {"tuneloop", "tuneloop.errors", "tuneloop.runs", "tuneloop.config", "tuneloop.gate"}
    assert import_graph()["tuneloop.report"] <= allowed


def test_the_checks_see_late_imports_and_skip_type_checking_ones() -> None:
    # The walker itself: a function-level import is an edge, a TYPE_CHECKING one is not.
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tuneloop.a import X\n"
                     "def f():\n    from tuneloop.b import _y\n")
    names = [n.module for n in _runtime_nodes(tree) if isinstance(n, ast.ImportFrom)]
    assert sorted(names) == ["tuneloop.b", "typing"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
