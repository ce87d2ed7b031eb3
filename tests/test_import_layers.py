"""No import loop in addons/harmony_groq (between modules, and between its packages and top
modules) nor in bench/: every import, at module level or inside a function, read with ``ast``.

A loop means neither side can be read or tested as a layer; the test names the loop found.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "addons" / "harmony_groq"
BENCH = ROOT / "bench"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted names below ``root`` (a package ``x/__init__.py`` is ``x``; ``root``'s own
    ``__init__`` is ``""``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, modules: dict[str, Path], prefix: str) -> set[str]:
    """The modules of ``modules`` that ``name`` imports anywhere in its file; absolute imports
    count when they start with ``prefix`` (then stripped)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    if not is_package:
        here = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module + ".").startswith(prefix):
                target = node.module.removeprefix(prefix.rstrip(".")).lstrip(".")
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                found.add(submodule if submodule in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name + ".").startswith(prefix):
                    found.add(alias.name.removeprefix(prefix.rstrip(".")).lstrip("."))
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path, prefix: str) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imported(name, path, modules, prefix) for name, path in modules.items()}


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between the top-level units: ``pool.dispatch`` counts as ``pool``."""
    def top(name: str) -> str:
        return name.split(".")[0]
    units: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name:
            units.setdefault(top(name), set()).update(top(t) for t in targets if t)
    return {unit: targets - {unit} for unit, targets in units.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_names_the_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert package_graph({"pool.x": {"records"}, "records": {"pool.y"}, "pool.y": set()}) == {
        "pool": {"records"}, "records": {"pool"}}


def test_the_graph_sees_relative_absolute_and_function_level_imports() -> None:
    graph = import_graph(PACKAGE, "harmony_groq.")
    assert "pool.pool" in graph["pool.dispatch"]  # from .pool import …
    assert "errors" in graph["pool.dispatch"]  # from ..errors import …
    bench = import_graph(BENCH, "")
    assert "phases" in bench["report"]


GRAPHS = {
    "harmony_groq modules": lambda: import_graph(PACKAGE, "harmony_groq."),
    "harmony_groq packages": lambda: package_graph(import_graph(PACKAGE, "harmony_groq.")),
    "bench modules": lambda: import_graph(BENCH, ""),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_no_import_loop(name: str) -> None:
    cycle = find_cycle(GRAPHS[name]())
    assert cycle is None, f"{name}: import loop {' -> '.join(cycle)}"
