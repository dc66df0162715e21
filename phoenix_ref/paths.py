"""The URL path of every endpoint: ``PREFIX/<endpoint name>`` (GUIDE §2).

The endpoint table (:mod:`phoenix_ref.endpoints`) lays out its rows with
it, and the cores that bind request signatures to a path (QsAuthToken,
``spec/queuing_service.md#authentication``; AS authentication,
``spec/authentication_service.md#authentication``) compute the same path
from here without importing the table, which imports them.
"""

from __future__ import annotations

PREFIX = "/phoenix/v1"


def endpoint_path(name: str) -> str:
    """The path of the endpoint called ``name``."""
    return f"{PREFIX}/{name}"
