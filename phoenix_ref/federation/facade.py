"""The federation facade: the one object a homeserver talks to other homeservers through.

:class:`FederationClient` composes the HTTPS fetcher over verified TLS
(``client.py``), discovery (``discovery.py``,
``spec/federation/use_cases.md#homeserver-domain-and-discovery``) and the
remote key cache (``keys.py``,
``spec/federation/use_cases.md#authentication-key-distribution``), and
enforces the operator's federation allow/deny lists before any request.
"""

from __future__ import annotations

import ssl
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import httpx

from ..clock import Clock
from ..codec import DecodeError, decode
from ..http import MEDIA_TYPE
from .client import (FederationError, HttpsFetcher, MalformedAnswer, NotFederated, RequestObserver, RowLookup,
                     client_ssl_context, fetch_many)
from .discovery import Discovery
from .keys import RemoteKeyCache

__all__ = ["FederationClient"]

T = TypeVar("T")


class FederationClient:
    """A homeserver's outbound federation: discovery, key cache, HTTPS.

    Built from a :class:`~phoenix_ref.config.Config` and ``rows``, the
    endpoint table's lookup (:data:`RowLookup`); ``transport`` (a
    factory taking the client's ``ssl.SSLContext``) replaces the network in
    in-process tests; ``on_request`` is told about every request sent
    (:class:`~.client.RequestObserver`). The owner calls :meth:`aclose`.
    """

    def __init__(self, config, rows: RowLookup, *, clock: Clock | None = None,
                 transport: Callable[[ssl.SSLContext], httpx.AsyncBaseTransport] | None = None,
                 on_request: RequestObserver | None = None):
        self.config = config
        self.clock = clock or Clock()
        lim = config.limits
        ctx = client_ssl_context(config.ca_bundle)
        self.fetcher = HttpsFetcher(ctx, resolve=config.resolve,
                                    transport=transport(ctx) if transport else None,
                                    connect_timeout_s=lim.connect_timeout_s,
                                    request_timeout_s=lim.request_timeout_s,
                                    max_answer_bytes=lim.max_answer_bytes, on_request=on_request)
        self.discovery = Discovery(self.fetcher, overrides=config.discovery, clock=self.clock,
                                   ttl_ms=lim.discovery_ttl_s * 1000)
        self.keys = RemoteKeyCache(self, rows, clock=self.clock, ttl_ms=lim.key_cache_ttl_s * 1000,
                                   cooldown_ms=lim.key_refetch_cooldown_s * 1000)

    async def aclose(self) -> None:
        await self.fetcher.aclose()

    def check_federates(self, domain: str) -> None:
        if not self.config.federates_with(domain):
            raise NotFederated(f"federation with {domain} is not permitted by this homeserver's operator",
                               domain=domain)

    async def get_struct(self, domain: str, endpoint, *, content: bytes = b"") -> Any:
        """Call ``endpoint`` (a row of the endpoint table) at ``domain``; decode its answer."""
        self.check_federates(domain)
        urls = await self.discovery.discover(domain)
        url = urls.base(str(endpoint.service)) + endpoint.path
        headers = {"content-type": MEDIA_TYPE} if content else None
        body = await self.fetcher.request(endpoint.method, url, content=content, headers=headers,
                                          domain=domain, expect=MEDIA_TYPE)
        try:
            return decode(endpoint.response, body, max_len=self.fetcher.max_answer_bytes)
        except DecodeError as e:
            raise MalformedAnswer(f"{url}: {e}", domain=domain, url=url) from None

    async def fetch_many(self, domains: Iterable[str],
                         fetch: Callable[[str], Awaitable[T]]) -> dict[str, T | FederationError]:
        return await fetch_many(domains, fetch)
