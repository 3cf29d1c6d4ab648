"""The package's structure: the library knows no application, and its modules import one
another without cycles or private names across packages (imports inside functions count)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import flowvi

SOURCE = Path(flowvi.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str | None]]:
    """``(module, imported name)`` of every flowvi import in module ``name``, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("flowvi")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flowvi"):
            found += [(node.module, a.name) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        edges = set()
        for module, item in _imports(name):
            target = f"{module}.{item}" if f"{module}.{item}" in MODULES else module
            if target in MODULES and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    path: list[str] = []
    cycles = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*path[path.index(v) :], v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_flowvi_modules():
    assert _cycles(_graph()) == []


def test_the_library_imports_nothing_from_the_application():
    library = [n for n in MODULES if not n.startswith("flowvi.app") and n != "flowvi.__main__"]
    assert "flowvi.io" in library and "flowvi.app.cli" in MODULES
    offenders = [
        (name, module)
        for name in library
        for module, _ in _imports(name)
        if module.startswith("flowvi.app")
    ]
    assert offenders == []


def test_no_private_name_is_imported_from_another_package():
    def package(name: str) -> str:
        return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]

    offenders = [
        (name, f"{module}.{item}")
        for name in MODULES
        for module, item in _imports(name)
        if item is not None
        and item.startswith("_")
        and not item.startswith("__")
        and module in MODULES
        and package(module) != package(name)
    ]
    assert offenders == []


def test_importing_the_library_loads_no_application_and_no_matplotlib():
    code = (
        "import sys, flowvi, flowvi.vae, flowvi.inference, flowvi.train, flowvi.metrics\n"
        "print(sorted({m for m in sys.modules if m.startswith(('flowvi.app', 'matplotlib'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
