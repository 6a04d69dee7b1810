"""The shape of the code, checked from its imports: every ``import`` in ``appliance/`` and ``cli/``
(at module level or inside a function, the packages a module's import runs included) read from
the source, so that a dependency the design rules out fails here rather than in review."""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "cli")

# module -> what it must not import, directly or through anything it imports (a name covers the
# modules under it: "sanic" covers sanic.response, "appliance.api" every module of the REST API).
MUST_NOT_IMPORT = {
    "appliance.accounts": ("sanic", "appliance.api"),
    "appliance.meetings": ("sanic", "appliance.api"),
    "appliance.machine.doctor": ("sanic", "appliance.app", "appliance.signaling"),  # it checks a host, not the app
    # Signaling's features see the room view, never the server, the web framework or the REST API.
    **{f"appliance.signaling.{feature}": ("sanic", "appliance.api", "appliance.signaling.server")
       for feature in ("room", "protocol", "lobby", "moderation", "chat", "captions", "recording")},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(module: str) -> set[str]:
    """What importing ``module`` (and running its functions) imports: dotted names, our own
    modules resolved, other libraries as written."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.update(_with_parents(base))
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules())
    found.discard(module)
    return found


@cache
def import_graph() -> dict[str, frozenset[str]]:
    return {module: frozenset(imports_of(module)) for module in modules()}


def import_chain(start: str, forbidden: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` to ``forbidden`` (or a module under it), or None."""
    graph = import_graph()
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for imported in sorted(graph.get(module, ())):
            if imported in came_from:
                continue
            came_from[imported] = module
            if imported == forbidden or imported.startswith(forbidden + "."):
                chain = [imported]
                while came_from[chain[-1]] is not None:
                    chain.append(came_from[chain[-1]])  # type: ignore[arg-type]
                return chain[::-1]
            if imported in graph:
                queue.append(imported)
    return None


def test_the_walk_sees_what_is_there() -> None:
    """The walk itself: it finds direct, relative, nested and function-local imports."""
    graph = import_graph()
    assert {"appliance.accounts", "appliance.meetings", "appliance.api.errors", "cli.main"} <= graph.keys()
    assert "sanic" in graph["appliance.api.errors"]  # from sanic import ...
    assert "appliance.errors" in graph["appliance.api.errors"]  # from ..errors import ...
    assert "appliance.stores" in graph["appliance.audit"]  # importing .stores.relational runs the package
    assert "appliance.accounts" in graph["cli.main"]  # imported inside user_add
    assert import_chain("appliance.app", "sanic") == ["appliance.app", "sanic"]


@pytest.mark.parametrize(("module", "forbidden"),
                         [(module, name) for module, names in MUST_NOT_IMPORT.items() for name in names])
def test_module_does_not_import(module: str, forbidden: str) -> None:
    chain = import_chain(module, forbidden)
    assert chain is None, f"{module} imports {forbidden}: {' -> '.join(chain)}"


def import_cycles() -> list[list[str]]:
    """Groups of our modules that import each other round (strongly connected components of the
    import graph, Tarjan's algorithm). A module importing its own package (``a.b`` runs ``a`` on
    import) is no cycle: Python initialises the package first."""
    graph = {module: sorted(i for i in imports if i in modules() and not module.startswith(i + "."))
             for module, imports in import_graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    assert import_cycles() == []
