"""Pin-upgrade safety: the project uses only the public API of its dependencies.

A private module or name (a leading underscore) of a dependency can change in
any release; this test reads every Python file of the project and refuses
imports of such names and attribute access to them on an imported
dependency module (``httpx._config``, ``from httpcore._backends import …``).
Private attributes of objects (``transport._pool``) are found by the names
the project has used that way before.

One file is let through, for one dependency: ``phoenix_ref/anycorn_changes.py``
changes anycorn's connection and HTTP/2 classes, which anycorn offers no
public way to change, to remove failures that let any client end a
homeserver (docs/decisions.md, "HTTP server: what the homeserver changes in
anycorn"). Pin-upgrade safety holds there another way: its ``install()``
refuses any anycorn but the version it was written against, so an upgrade
stops ``serve`` and the tests until each change has been checked again.
"""

from __future__ import annotations

import ast
import re

from phoenix_ref.shared import REPO_ROOT

DEPENDENCIES = {"anycorn", "anyio", "cryptography", "h11", "h2", "httpcore", "httpx", "hypercorn",
                "hypothesis", "opaque_ke_py", "pyhpke", "pytest", "rbcl", "trio", "trustme", "wsproto",
                "_pytest"}
#: servers whose public API is their top-level package only (``anycorn.serve``,
#: ``anycorn.Config``); their submodules hold internals (``worker_serve``, ``Sockets``)
TOP_LEVEL_ONLY = {"anycorn", "hypercorn"}
#: private attributes of dependency objects the code once reached into
KNOWN_PRIVATE_ATTRIBUTES = re.compile(r"(?<!self)\._(pool|backends|network_backend)\b")
FOLDERS = ("phoenix_ref", "tests", "spec_tests", "benchmarks", "examples")


def _private(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] in TOP_LEVEL_ONLY and len(parts) > 1:
        return True
    return any(part.startswith("_") and not part.startswith("__") for part in parts)


def problems_in(path, text: str) -> list[str]:
    found = []
    tree = ast.parse(text, filename=str(path))
    modules: dict[str, str] = {}     # local name → dependency module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in DEPENDENCIES:
                    if _private(alias.name) or alias.name.startswith("_"):
                        found.append(f"{path}:{node.lineno}: import {alias.name}")
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in DEPENDENCIES:
                if _private(node.module) or node.module.startswith("_"):
                    found.append(f"{path}:{node.lineno}: from {node.module} import …")
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and _private(node.attr)):
            found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    for lineno, line in enumerate(text.splitlines(), 1):
        if KNOWN_PRIVATE_ATTRIBUTES.search(line) and not line.lstrip().startswith("#"):
            found.append(f"{path}:{lineno}: {line.strip()}")
    return sorted(set(found), key=lambda p: int(p.split(":")[1]))


#: the one file that reaches into a dependency's internals, and which one (module docstring)
CHANGES_ANYCORN = "phoenix_ref/anycorn_changes.py"


def test_no_private_names_of_dependencies():
    files = [p for folder in FOLDERS for p in sorted((REPO_ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    this = REPO_ROOT / "tests" / "test_public_apis.py"
    problems = [p for f in files if f != this for p in problems_in(f.relative_to(REPO_ROOT), f.read_text())]
    allowed = [p for p in problems if p.startswith(CHANGES_ANYCORN + ":") and " anycorn" in p]
    assert allowed, "the exception below is no longer needed: remove it"
    assert [p for p in problems if p not in allowed] == []


def test_the_file_that_changes_anycorn_refuses_another_version(monkeypatch):
    import importlib.metadata

    import pytest

    from phoenix_ref import anycorn_changes
    real = importlib.metadata.version
    monkeypatch.setattr(anycorn_changes, "_installed_version",
                        lambda name: "0.20.2" if name == "anycorn" else real(name))
    with pytest.raises(RuntimeError, match="written for anycorn 0.20.1"):
        anycorn_changes.install()


def test_the_check_finds_what_it_looks_for():
    sample = ("import httpcore\nfrom httpcore._backends.auto import AutoBackend\n"
              "from hypercorn.trio.run import worker_serve\nimport hypercorn._x\n"
              "t._pool = httpcore._async.x\n")
    found = problems_in("sample.py", sample)
    assert {int(p.split(":")[1]) for p in found} == {2, 3, 4, 5}
    assert not problems_in("ok.py", "import httpx\nfrom trio import open_nursery\nx = httpx.AsyncClient()\n")
