"""The layout's rules, checked on the source (docs/layout.md): imports point only down the stages, with no circle
(lazy imports included: an import inside a function still counts), and no module, class or function past its
size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "charrnn"
# The stages, lowest first: a module may import its own stage or one below, never one above.
GROUND = {"errors", "version", "display", "fields", "runtime", "model", "config", "__init__"}
STAGES = ["ground", "text", "checkpoint", "generation", "training", "api", "serve", "cli"]
MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 500, 270, 60


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _stage(module: str) -> str:
    top = module.split(".")[1] if "." in module else "__init__"
    return "cli" if top == "__main__" else "ground" if top in GROUND else top  # `python -m charrnn` is the CLI


def _imports(path: Path) -> set[str]:
    """Every charrnn module `path` imports, at the top or inside a function (type-checking-only imports aside)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charrnn"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from charrnn.text import vocab`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("charrnn"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    named = lambda m: m if m in modules else f"{m}.__init__" if f"{m}.__init__" in modules else None  # noqa: E731
    return {
        m: {n for n in map(named, _imports(p)) if n is not None and n != m and not n.endswith("__init__")}
        for m, p in modules.items()
    }


def test_imports_point_only_down_the_stages():
    upward = [
        f"{m} -> {n}"
        for m, targets in _graph().items()
        for n in targets
        if STAGES.index(_stage(n)) > STAGES.index(_stage(m)) and not m.endswith("__init__")
    ]
    assert upward == []


def test_no_import_circles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                cycles.append(" -> ".join(path[path.index(n) :] + [m, n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, [*path, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert cycles == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_classes_and_functions_stay_small(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    too_big = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(ast.parse(source))
        if (isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES)
        or (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        )
    ]
    assert too_big == []


def test_every_module_says_what_it_owns():
    silent = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert silent == []
