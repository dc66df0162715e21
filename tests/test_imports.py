"""The import graph of phoenix_ref (docs/architecture.md, issue 12).

Built from the source with :mod:`ast`, so an import inside a function (a lazy
import that dodges a cycle at load time) counts like any other. Three rules:

* no service module (authentication, queuing, delivery, federation) imports
  the endpoint table: the table imports the services' structs, never the reverse;
* no sans-IO core (``*/core.py``) imports trio;
* the units — the packages authentication, queuing, delivery, federation,
  mls, client, and each top-level module — form no import cycle, and
  neither do the modules inside a package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "phoenix_ref"
PACKAGES = ("authentication", "queuing", "delivery", "federation", "mls", "client")
SERVICES = ("authentication", "queuing", "delivery", "federation")


def _module_name(path: Path) -> str:
    parts = ("phoenix_ref",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module (phoenix_ref's or a third party's top-level name) that
    ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from pkg import mod`` imports the module pkg.mod
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the modules it imports (phoenix_ref's, plus third-party top-level names)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        targets = _imports(name, path, known)
        graph[name] = {t if t.startswith("phoenix_ref") else t.split(".")[0] for t in targets} - {name}
    return graph


def unit(module: str) -> str:
    """The unit of a phoenix_ref module: its package, or the top-level module itself."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    return ".".join(parts[1:2]) or "phoenix_ref"


def unit_graph() -> dict[str, set[str]]:
    """Unit → the units it imports (edges inside a unit dropped)."""
    units: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        edges = units.setdefault(unit(module), set())
        edges.update(unit(t) for t in targets if t.startswith("phoenix_ref") and unit(t) != unit(module))
    return units


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# --- the checker checks -----------------------------------------------------------------------

def test_find_cycle_finds_a_cycle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_relative_and_lazy_imports_are_resolved(tmp_path, monkeypatch):
    src = tmp_path / "m.py"
    src.write_text("from ..federation import keys\nfrom .core import X\n"
                   "def f():\n    from ..endpoints import by_name\n    import trio\n")
    known = {"phoenix_ref.federation.keys"}
    found = _imports("phoenix_ref.queuing.m", src, known)
    assert {"phoenix_ref.federation", "phoenix_ref.federation.keys", "phoenix_ref.queuing.core",
            "phoenix_ref.endpoints", "trio"} <= found


def test_units():
    assert unit("phoenix_ref.queuing.core") == "queuing"
    assert unit("phoenix_ref.endpoints") == "endpoints"
    assert unit("phoenix_ref") == "phoenix_ref"


# --- the rules --------------------------------------------------------------------------------

GRAPH = import_graph()


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if unit(m) in SERVICES))
def test_no_service_module_imports_the_endpoint_table(module):
    assert "phoenix_ref.endpoints" not in GRAPH[module]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.endswith(".core")))
def test_sans_io_cores_do_not_import_trio(module):
    assert "trio" not in GRAPH[module]


def test_the_units_form_no_import_cycle():
    assert find_cycle(unit_graph()) is None


def test_the_modules_form_no_import_cycle():
    modules = {m: {t for t in targets if t in GRAPH} for m, targets in GRAPH.items()}
    assert find_cycle(modules) is None


def test_every_package_and_core_is_seen():
    """The rules above would pass vacuously if the walk found nothing."""
    assert {unit(m) for m in GRAPH} >= set(PACKAGES) | {"endpoints", "homeserver"}
    assert {"phoenix_ref.queuing.core", "phoenix_ref.authentication.core"} <= set(GRAPH)


if __name__ == "__main__":   # print the unit graph (docs/architecture.md)
    for name, targets in sorted(unit_graph().items()):
        print(f"{name} -> {', '.join(sorted(targets)) or '(nothing)'}")
