"""One HTTPS call to an endpoint of the table, as every service client makes it.

The body is encoded, a Privacy Pass token is attached when the row needs
one, idempotent rows may be repeated on a closed connection
(:func:`~phoenix_ref.federation.client.retry_extensions`), a refusal
raises the :class:`~phoenix_ref.errors.ProtocolError` of its status and
the answer is decoded as the row's response struct.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from .. import endpoints
from .. import privacy_pass as pp
from ..codec import decode, encode
from ..federation.client import retry_extensions
from ..ids import Fqdn
from .as_client import MEDIA_TYPE, error_from_response

__all__ = ["call_endpoint", "PrivacyPassSource"]

#: ``await source(domain)`` → a Privacy Pass token of ``domain``'s AS, or None.
PrivacyPassSource = Callable[[Fqdn], Awaitable[Any]]


async def call_endpoint(http: Any, base_url: str, ep: endpoints.Endpoint, domain: Fqdn, body: Any = None,
                        privacy_pass: PrivacyPassSource | None = None) -> Any:
    """``ep`` at ``base_url`` (``https://<service>.<domain>[:port]``) with ``body``."""
    headers = {"Content-Type": MEDIA_TYPE} if ep.request is not None else {}
    if ep.privacy_pass and privacy_pass is not None:
        token = await privacy_pass(domain)
        if token is not None:
            headers["Authorization"] = pp.authorization_header(token)
    content = encode(body) if ep.request is not None else b""
    resp = await http.request(ep.method, f"{base_url}{ep.path}", content=content, headers=headers,
                              extensions=retry_extensions(ep))
    if resp.status_code != 200:
        raise error_from_response(resp.status_code, resp.content, resp.headers.get("Retry-After"))
    return decode(ep.response, resp.content) if ep.response is not None else None
