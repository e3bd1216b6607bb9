"""The package's shape: imports flow one way (no cycles), no private names cross modules, modules and
functions stay small. Read from the source with ``ast`` (type-only and function-local imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "circuits"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80  # code lines of a function, its docstring not counted
LONG_REASON = "# long:"  # a function over the limit says why on its def line or the line after


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(importer: str, level: int, target: str | None) -> str:
    """Absolute module name of ``from <level dots><target> import ...`` inside ``importer``."""
    if level == 0:
        return target or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(name: str) -> list[tuple[str, list[str]]]:
    """``(module imported, names imported from it)`` for every import statement in module ``name``."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("circuits")]
        elif isinstance(node, ast.ImportFrom):
            mod = resolve(name, node.level, node.module)
            if not mod.startswith("circuits"):
                continue
            names = [a.name for a in node.names]
            out.append((mod, names))
            # `from . import zoo` imports a submodule
            out += [(f"{mod}.{n}", []) for n in names if f"{mod}.{n}" in MODULES]
    return out


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _ in imports_of(m):
            while target and target not in MODULES:  # `circuits.graph.Graph`-style attribute paths
                target = target.rpartition(".")[0]
            if target and target != m:
                graph[m].add(target)
    return graph


def test_no_import_cycles():
    graph = edges()
    # A package's __init__ importing its own submodules is the normal direction; a submodule
    # importing its package's __init__ would close a cycle and is reported like any other.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_private_names_across_modules():
    bad = []
    for m in MODULES:
        for target, names in imports_of(m):
            if target != m and not target.startswith(m + "."):
                bad += [f"{m} imports {target}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    text = MODULES[name].read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{name}: {len(lines)} lines (limit {MAX_MODULE_LINES}); split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            doc = node.body[0] if node.body and isinstance(node.body[0], ast.Expr) else None
            if doc is not None and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                n -= doc.end_lineno - doc.lineno + 1  # the docstring does not count: documenting is not bloat
            head = " ".join(lines[node.lineno - 1: node.lineno + 1])
            assert n <= MAX_FUNCTION_LINES or LONG_REASON in head, (
                f"{name}.{node.name}: {n} lines (limit {MAX_FUNCTION_LINES}); split it or say why with '{LONG_REASON} ...'"
            )


def test_the_test_can_fail(tmp_path):
    """The cycle finder sees a two-module cycle (guards against a walker that finds nothing)."""
    global MODULES
    saved = MODULES
    try:
        a, b = tmp_path / "a.py", tmp_path / "b.py"
        a.write_text("from .b import x\n")
        b.write_text("from .a import y\n")
        MODULES = {"circuits.a": a, "circuits.b": b}
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycles()
    finally:
        MODULES = saved
