"""Homeserver discovery: domain → base URLs of its AS, DS and QS.

``spec/federation/use_cases.md#homeserver-domain-and-discovery`` fixes one
rule: the AS of ``example.com`` is at ``as.example.com``, the DS at
``ds.example.com``, the QS at ``qs.example.com``. phoenix_ref adds two
earlier steps (docs/decisions.md), tried in this order:

1. a static override from the operator's config (labs, tests);
2. delegation: ``GET https://<domain>/.well-known/phoenix``, a JSON object
   ``{"as": URL, "ds": URL, "qs": URL}`` naming ``https://`` base URLs (JSON
   because that is what ``.well-known`` documents conventionally are);
3. the spec's subdomain rule, ``https://as.<domain>`` etc.

A well-known that cannot be fetched or is not a JSON object with the three
keys (no answer, an error status, a TLS failure, an HTML page) falls through
to the subdomain rule — the bare domain often hosts something else, and the
fallback is still verified TLS. A document that has the three keys is the
domain's word (it came over verified TLS), so a bad URL in it is an error:
:class:`MalformedAnswer`, or :class:`NotTls` for an ``http://`` URL.
Results are cached for a TTL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..clock import Clock
from ..ids import Fqdn, InvalidId
from .client import FederationError, HttpsFetcher, MalformedAnswer, NotTls, TtlCache, Unreachable

SERVICES = ("as", "ds", "qs")
WELL_KNOWN_PATH = "/.well-known/phoenix"
MAX_WELL_KNOWN_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServiceUrls:
    """Where a domain's services live; ``source`` says which step found them."""
    domain: str
    as_url: str
    ds_url: str
    qs_url: str
    source: str     # "override" | "well_known" | "subdomain"

    def base(self, service: str) -> str:
        return {"as": self.as_url, "ds": self.ds_url, "qs": self.qs_url}[service]

    @classmethod
    def of(cls, domain: str, urls: dict[str, str], source: str) -> "ServiceUrls":
        return cls(domain, check_base_url(urls["as"]), check_base_url(urls["ds"]),
                   check_base_url(urls["qs"]), source)


def check_domain(domain: str) -> str:
    """The canonical form of a homeserver domain (ids.Fqdn rules)."""
    try:
        return str(Fqdn(domain))
    except InvalidId as e:
        raise MalformedAnswer(f"not a homeserver domain: {e}") from None


def check_base_url(url: object) -> str:
    """A service base URL: ``https://host[:port]`` with no path, query or credentials."""
    if not isinstance(url, str):
        raise MalformedAnswer(f"service URL {url!r} is not a string")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise MalformedAnswer(f"service URL {url!r}: {e}") from None
    if parts.scheme == "http":
        raise NotTls(f"service URL {url!r} is not https")
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MalformedAnswer(f"service URL {url!r} is not an https://host[:port] base URL")
    check_domain(parts.hostname)
    return f"https://{parts.hostname}" + (f":{port}" if port else "")


def subdomain_rule(domain: str) -> ServiceUrls:
    """The spec's rule: ``https://as.<domain>`` and so on."""
    return ServiceUrls.of(domain, {s: f"https://{s}.{domain}" for s in SERVICES}, "subdomain")


def parse_well_known(domain: str, data: bytes) -> ServiceUrls:
    """Parse a ``.well-known/phoenix`` document (see module docstring)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedAnswer(f"{domain}{WELL_KNOWN_PATH} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not set(SERVICES) <= set(doc):
        raise MalformedAnswer(f"{domain}{WELL_KNOWN_PATH} must be an object with keys {SERVICES}")
    return ServiceUrls.of(domain, doc, "well_known")


def well_known_document(urls: dict[str, str]) -> bytes:
    """What a homeserver serves at its ``.well-known/phoenix``."""
    return json.dumps({s: urls[s] for s in SERVICES}, sort_keys=True).encode()


class Discovery:
    """Cached discovery through ``fetcher`` (see module docstring)."""

    def __init__(self, fetcher: HttpsFetcher, *, overrides: dict[str, dict[str, str]] | None = None,
                 clock: Clock | None = None, ttl_ms: int = 3_600_000):
        self.fetcher = fetcher
        self.overrides = {check_domain(d): u for d, u in (overrides or {}).items()}
        self.clock = clock or Clock()
        self.ttl_ms = ttl_ms
        self._cache: TtlCache[str, ServiceUrls] = TtlCache(ttl_ms)

    async def discover(self, domain: str) -> ServiceUrls:
        domain = check_domain(domain)
        now = self.clock.now_ms()
        hit = self._cache.get(domain, now)
        if hit is not None:
            return hit[1]
        urls, definite = await self._discover(domain)
        if definite:   # a fallback because the peer was down is not remembered
            self._cache.put(domain, urls, now)
        return urls

    async def _discover(self, domain: str) -> tuple[ServiceUrls, bool]:
        override = self.overrides.get(domain)
        if override is not None:
            return ServiceUrls.of(domain, override, "override"), True
        try:
            data = await self.fetcher.request("GET", f"https://{domain}{WELL_KNOWN_PATH}",
                                              domain=domain, expect="application/json")
        except Unreachable:
            return subdomain_rule(domain), False
        except FederationError:
            return subdomain_rule(domain), True   # no usable well-known: the spec's rule
        doc = _json_object(data)
        if doc is None or not set(SERVICES) <= set(doc):
            return subdomain_rule(domain), True
        return parse_well_known(domain, data), True


def _json_object(data: bytes) -> dict | None:
    if len(data) > MAX_WELL_KNOWN_BYTES:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
