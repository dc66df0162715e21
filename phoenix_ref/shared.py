"""Locate the shared protocol material (spec, RFC texts, test vectors).

Tests and CI read it through ``../shared`` relative to the repository root.
``PHOENIX_SHARED`` overrides the location (an interop tester's checkout).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class SharedMissing(RuntimeError):
    pass


def shared_dir() -> Path:
    path = Path(os.environ.get("PHOENIX_SHARED") or REPO_ROOT.parent / "shared")
    if not (path / "spec").is_dir():
        raise SharedMissing(
            f"the shared protocol material is missing: expected {path}/spec "
            "(clone the repository next to the 'shared' folder, or set PHOENIX_SHARED)"
        )
    return path


def spec_dir() -> Path:
    return shared_dir() / "spec"


def mls_vectors(name: str) -> list:
    """The entries of one file of ``shared/mls-test-vectors`` (a JSON list)."""
    path = shared_dir() / "mls-test-vectors" / name
    if not path.is_file():
        raise SharedMissing(f"missing MLS test vector file {path}")
    return json.loads(path.read_text())
