"""No import circles in gateway/ (TYPE_CHECKING imports included: a type-only circle is
still two modules that cannot be understood apart)."""

from __future__ import annotations

import ast
from pathlib import Path

import egressguard.gateway

PACKAGE = Path(egressguard.gateway.__file__).parent


def _graph() -> dict[str, set[str]]:
    mods = {f.stem: f for f in PACKAGE.glob("*.py") if f.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("egressguard.gateway."):
                    deps.add(node.module.rsplit(".", 1)[1])
                elif node.module == "egressguard.gateway":
                    deps.update(a.name for a in node.names if a.name in mods)
        graph[name] = deps & set(mods)
    return graph


def test_gateway_modules_import_each_other_without_circles():
    graph = _graph()
    assert "server" in graph and "connection" in graph["server"]
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        assert node not in path, f"import circle: {' -> '.join([*path, node])}"
        if node in done:
            return
        for dep in sorted(graph[node]):
            walk(dep, [*path, node])
        done.add(node)

    for module in sorted(graph):
        walk(module, [])
