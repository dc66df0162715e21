import pytest

from phoenix_ref.shared import mls_vectors


def vector_params(name: str):
    """One pytest param per entry of an MLS vector file, id ``<file>-<index>``."""
    return [pytest.param(v, id=f"{name}-{i}") for i, v in enumerate(mls_vectors(name))]
