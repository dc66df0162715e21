"""Key distribution: the remote key cache.

``spec/federation/use_cases.md#authentication-key-distribution``: the QS and
DS publish their verifying keys, the AS its AS credentials, intermediate
credentials and revoked fingerprints (``AsCredentialsResponse``,
``spec/authentication_service.md#get-as-credentials``); the QS also its
queue-config encryption key
(``spec/queuing_service.md#fetch-queue-config-encryption-key``). Fetched
over verified TLS only (``client.py``).

The spec does not define the QS/DS answers (docs/decisions.md): each is a
list of public keys, the current key first, followed by older keys that are
still accepted, so keys can rotate without a flag day. Those structs live
with the service that serves them (``queuing/messages.py``,
``delivery/messages.py``); the cache reaches the endpoints through the rows
it is given (the endpoint table's ``by_name``), so this package never
imports the endpoint table. A key's id is the
SHA-256 of its public key (:func:`key_id`); AS credentials are named by
their fingerprint (``credentials.fingerprint``).

:class:`RemoteKeyCache` keeps each domain's answer for a TTL. When a caller
needs a key id or fingerprint the cached answer lacks, the cache refetches
*once* — and not again within a cooldown — so a forged or stale id can never
make it loop or hammer the remote homeserver.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Awaitable, Callable

import trio

from ..clock import Clock
from ..credentials import (AsCredentialsResponse, ClientCredential, CredentialChain, CredentialError,
                           TrustStore)
from ..crypto import hash_
from ..ids import Fqdn
from .client import MalformedAnswer, RowLookup, TtlCache

ED25519_PUBLIC_LEN = 32
X25519_PUBLIC_LEN = 32


def key_id(public_key: bytes) -> bytes:
    """The id of a QS/DS key: SHA-256 of the public key bytes."""
    return hash_(public_key)


def _check_keys(keys: list[bytes], length: int, what: str) -> list[bytes]:
    if not keys:
        raise MalformedAnswer(f"{what}: the answer lists no key")
    for k in keys:
        if len(k) != length:
            raise MalformedAnswer(f"{what}: a key of {len(k)} bytes, expected {length}")
    return list(keys)


class RemoteKeyCache:
    """Remote key material per (kind, domain), fetched through a FederationClient
    from the endpoints ``rows`` names.

    ``fetches`` counts network fetches per (kind, domain) (tests and metrics).
    """

    def __init__(self, client, rows: RowLookup, *, clock: Clock | None = None, ttl_ms: int = 3_600_000,
                 cooldown_ms: int = 10_000):
        self.client = client
        self.rows = rows
        self.clock = clock or Clock()
        self.ttl_ms = ttl_ms
        self.cooldown_ms = cooldown_ms
        self.fetches: Counter[tuple[str, str]] = Counter()
        self._cache: TtlCache[tuple[str, str], Any] = TtlCache(ttl_ms)
        self._locks: dict[tuple[str, str], trio.Lock] = {}   # only while someone fetches or waits

    def invalidate(self, domain: str | None = None) -> None:
        """Drop cached material of ``domain`` (all domains if None)."""
        for key in [k for k in self._cache.keys() if domain is None or k[1] == domain]:
            self._cache.discard(key)

    async def _get(self, kind: str, domain: str, fetch: Callable[[str], Awaitable[Any]],
                   has: Callable[[Any], bool] | None = None, refresh: bool = False) -> Any:
        """The cached value, refetched if expired, or — once per cooldown —
        if ``has`` says it lacks what the caller needs or ``refresh`` is set."""
        if refresh:
            has = lambda value: False  # noqa: E731 - "whatever is cached is not enough"
        domain = str(Fqdn(domain))
        key = (kind, domain)
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            async with lock:   # concurrent callers share one fetch
                now = self.clock.now_ms()
                hit = self._cache.get(key, now)
                if hit is not None:
                    fetched_ms, value = hit
                    if has is None or has(value) or now - fetched_ms < self.cooldown_ms:
                        return value
                value = await fetch(domain)
                self.fetches[key] += 1
                self._cache.put(key, value, now)
                return value
        finally:
            # a waiter owns the lock as soon as it is released: drop it only if idle
            if not lock.locked() and self._locks.get(key) is lock:
                del self._locks[key]

    # --- QS and DS keys -----------------------------------------------------------------

    async def _fetch_keys(self, domain: str, service: str, name: str, field: str, length: int) -> list[bytes]:
        answer = await self.client.get_struct(domain, self.rows(service, name))
        return _check_keys(getattr(answer, field), length, f"{domain} {name}")

    def cached_qs_verifying_keys(self, domain: str) -> list[bytes] | None:
        """The QS verifying keys of ``domain`` if the cache holds them and
        they have not expired; never fetches (no I/O, no await)."""
        hit = self._cache.get(("qs_verifying_key", str(Fqdn(domain))), self.clock.now_ms())
        return None if hit is None else hit[1]

    async def qs_verifying_keys(self, domain: str, *, want_key_id: bytes | None = None,
                                refresh: bool = False) -> list[bytes]:
        """The QS verifying keys of ``domain`` (current first). ``want_key_id``
        or ``refresh`` (e.g. "the cached keys did not verify") trigger at most
        one refetch per cooldown."""
        return await self._get("qs_verifying_key", domain,
                               lambda d: self._fetch_keys(d, "qs", "qs_verifying_key", "verifying_keys",
                                                          ED25519_PUBLIC_LEN),
                               _has_key(want_key_id), refresh)

    async def ds_verifying_keys(self, domain: str, *, want_key_id: bytes | None = None,
                                refresh: bool = False) -> list[bytes]:
        """The DS verifying keys of ``domain`` (current first); as :meth:`qs_verifying_keys`."""
        return await self._get("ds_verifying_key", domain,
                               lambda d: self._fetch_keys(d, "ds", "ds_verifying_key", "verifying_keys",
                                                          ED25519_PUBLIC_LEN),
                               _has_key(want_key_id), refresh)

    async def queue_config_encryption_keys(self, domain: str) -> list[bytes]:
        """The QS queue-config encryption keys of ``domain`` (current first)."""
        return await self._get("queue_config_encryption_key", domain,
                               lambda d: self._fetch_keys(d, "qs", "queue_config_encryption_key",
                                                          "encryption_keys", X25519_PUBLIC_LEN))

    async def find_qs_key(self, domain: str, accept: Callable[[bytes], bool]) -> bytes | None:
        """The first QS verifying key of ``domain`` that ``accept`` takes
        (e.g. "verifies this signature"); refetches once if none does."""
        keys = await self._get("qs_verifying_key", domain,
                               lambda d: self._fetch_keys(d, "qs", "qs_verifying_key", "verifying_keys",
                                                          ED25519_PUBLIC_LEN),
                               lambda ks: any(accept(k) for k in ks))
        return next((k for k in keys if accept(k)), None)

    # --- AS credentials ---------------------------------------------------------------------

    async def _fetch_as(self, domain: str) -> tuple[AsCredentialsResponse, TrustStore]:
        answer = await self.client.get_struct(domain, self.rows("as", "as_credentials"))
        store = TrustStore()
        try:
            store.add(Fqdn(domain), answer)
        except CredentialError as e:
            raise MalformedAnswer(f"{domain} published unusable AS credentials: {e}", domain=domain) from None
        return answer, store

    async def as_credentials(self, domain: str, *, want_fingerprint: bytes | None = None
                             ) -> AsCredentialsResponse:
        """``domain``'s *Get AS credentials* answer (validated)."""
        answer, _ = await self._as_entry(domain, want_fingerprint)
        return answer

    async def trust_store(self, domain: str, *, want_fingerprint: bytes | None = None) -> TrustStore:
        """A TrustStore holding ``domain``'s AS answer; refetched once if
        ``want_fingerprint`` names an intermediate it does not know."""
        _, store = await self._as_entry(domain, want_fingerprint)
        return store

    async def _as_entry(self, domain: str, want: bytes | None):
        def has(value: tuple[AsCredentialsResponse, TrustStore]) -> bool:
            # the TrustStore, not the raw answer: it skips credentials of
            # unsupported ciphersuites, whose fingerprint cannot be computed
            return want is None or value[1].knows_fingerprint(Fqdn(domain), want)
        return await self._get("as_credentials", domain, self._fetch_as, has)

    async def verify_client_credential(self, cred: ClientCredential, now_ms: int) -> CredentialChain:
        """Verify a (possibly remote) client's credential against its own
        domain's AS credentials; raises a ``credentials.CredentialError``."""
        domain = str(cred.client_id.as_domain)
        store = await self.trust_store(domain, want_fingerprint=cred.signer_fingerprint)
        return store.verify_client_credential(cred, now_ms)


def _has_key(want: bytes | None) -> Callable[[list[bytes]], bool] | None:
    if want is None:
        return None
    return lambda keys: any(key_id(k) == want for k in keys)
