"""AS handlers for the AS rows of the endpoint table (:mod:`phoenix_ref.endpoints`).

Each handler takes a :class:`~phoenix_ref.http.Call` and returns the row's
response struct; the HTTP layer has already refused plain HTTP, decoded the
body strictly and redeemed the Privacy Pass token where the row requires one
(:mod:`phoenix_ref.privacy_pass_gate`). What is left is one call of the
sans-IO :class:`~phoenix_ref.authentication.core.AuthenticationCore`, run in a
worker thread because the core talks to SQLite (GUIDE §4). The core checks
the endpoint's authentication mode itself (``spec/authentication_service.md#authentication``).

The core is built on first use from what the homeserver opened at startup:

* the AS credential key material — the keystore's credentials, its current
  intermediate (which signs CSRs) and the revoked fingerprints
  (``#get-as-credentials``); refreshed when the operator revokes or issues
  an intermediate, and when the AS issues a new one itself because the
  current one nears its end (``keystore.INTERMEDIATE_RENEW_MS``);
* the AS OPAQUE key material, kept next to the user records
  (``accounts.opaque_server_setup()``);
* the Privacy Pass issuer keys and issuance counters of the homeserver's
  :class:`~phoenix_ref.privacy_pass_gate.PrivacyPassGate`.

Token issuance to clients of other homeservers
(``spec/federation/federation_protocol.md#client-to-remote-as-communication``):
the core raises :class:`~phoenix_ref.credentials.UnknownSigner` naming the
client's domain; the handler fetches that domain's *Get AS credentials*
answer through the remote key cache (over TLS, cached, one refetch for an
unknown intermediate) and calls the core once more with it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

import trio

from .. import privacy_pass as pp
from ..credentials import AsCredentialsResponse, TrustStore, UnknownSigner
from ..codec import decode
from ..errors import Forbidden, NotFound, UpstreamError
from ..federation.client import FederationError, NotFederated
from ..http import Call, Handler
from ..ids import ClientId, Fqdn
from ..keystore import Keystore
from ..privacy_pass_gate import IssuerKeysResponse
from .core import OPERATIONS, AsConfig, AsSecrets, AuthenticationCore, operation

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


def as_credentials_response(keystore: Keystore, revoked: list[bytes], now_ms: int) -> AsCredentialsResponse:
    """*Get AS credentials* (``spec/authentication_service.md#get-as-credentials``).

    Lists the AS and intermediate credentials valid at ``now_ms``, current
    first, and the revoked fingerprints. A revoked credential stays listed
    until it expires, so a verifier can report "revoked" instead of
    "unknown signer" (and does not refetch for it) — docs/decisions.md.
    """
    roots = [c for c, _ in keystore.as_credentials if c.expiration_data.is_valid_at(now_ms)]
    inters = [c for c, _ in keystore.as_intermediates if c.expiration_data.is_valid_at(now_ms)]
    return AsCredentialsResponse(roots, inters, list(revoked))


class AsService:
    """The AS of a running homeserver: builds and refreshes the core, runs its methods."""

    def __init__(self, hs: Any):
        self.hs = hs
        self._core: AuthenticationCore | None = None
        self._version: tuple | None = None
        self._lock = trio.Lock()
        self.cancel_scope: trio.CancelScope | None = None

    def _secrets_version(self, now_ms: int) -> tuple:
        """What the core's secrets depend on; a change means "rebuild them"."""
        ks, gate = self.hs.keystore, self.hs.privacy_pass_gate
        return (ks.as_intermediates[0][0].fingerprint(), len(ks.as_credentials), self.hs.as_store.revocations,
                id(gate.keys), now_ms // DAY_MS)

    def _secrets(self, now_ms: int) -> AsSecrets:
        ks, store = self.hs.keystore, self.hs.as_store
        inter, inter_key = ks.as_intermediates[0]
        creds = as_credentials_response(ks, store.revoked_sync(), now_ms)
        return AsSecrets(creds, inter, inter_key, store.accounts.opaque_server_setup(), self.hs.privacy_pass_gate.keys)

    async def core(self, now_ms: int) -> AuthenticationCore:
        """The core, built on first use, with up-to-date key material; a new
        intermediate is issued when the current one nears its end."""
        async with self._lock:
            await self._renew_intermediate(now_ms)
            version = self._secrets_version(now_ms)
            if self._core is None or version != self._version:
                secrets = await trio.to_thread.run_sync(self._secrets, now_ms)
                if self._core is None:
                    self._core = self._build(secrets)
                else:
                    self._core.set_secrets(secrets)
                self._version = version
            return self._core

    async def _renew_intermediate(self, now_ms: int) -> None:
        if self.hs.keystore.intermediate_due(now_ms):
            await trio.to_thread.run_sync(self.hs.keystore.issue_intermediate, now_ms)

    async def credentials(self, now_ms: int) -> AsCredentialsResponse:
        """*Get AS credentials*, after renewing a current intermediate near its
        end, so that clients name the intermediate that will sign their CSR."""
        async with self._lock:
            await self._renew_intermediate(now_ms)
        return as_credentials_response(self.hs.keystore, await self.hs.as_store.revoked(), now_ms)

    def _build(self, secrets: AsSecrets) -> AuthenticationCore:
        hs, lim = self.hs, self.hs.config.limits
        limits = pp.IssuanceLimits(time_frame_ms=lim.token_time_frame_s * 1000,
                                   client_allowance=lim.token_allowance,
                                   domain_allowance=lim.token_domain_allowance,
                                   max_batch=lim.token_batch_max)
        policy = pp.IssuancePolicy(limits, hs.privacy_pass_gate.store, hs.domain)
        return AuthenticationCore(AsConfig(Fqdn(hs.domain)), secrets, hs.as_store.accounts, hs.as_store.queues,
                                  policy)

    async def run(self, name: str, call: Call) -> Any:
        """Run the core method of operation ``name`` on the decoded body."""
        core = await self.core(call.now_ms)
        method = getattr(core, operation(name).method)
        return await trio.to_thread.run_sync(method, call.body, call.now_ms)

    async def request_tokens(self, call: Call) -> Any:
        """``#token-issuance``, local and federated clients (module docstring)."""
        core = await self.core(call.now_ms)
        try:
            return await trio.to_thread.run_sync(core.request_tokens, call.body, call.now_ms)
        except UnknownSigner as e:
            if e.domain is None or e.domain == core.domain:
                raise
            trust = await self._remote_trust(e.domain, call.body.auth.client_credential.signer_fingerprint)
        return await trio.to_thread.run_sync(
            functools.partial(core.request_tokens, call.body, call.now_ms, remote_trust=trust))

    # --- #configuration: "Maximal QS client record age" ----------------------------------

    async def prune_inactive(self, now_ms: int) -> list[ClientId]:
        """Delete client entries whose direct queue was last fetched from
        longer ago than the configured maximal age (``#configuration``,
        default 90 days; activity is kept to the month, ``#as-state``), with
        their connection packages and queues; a user entry goes with its last
        client. Returns the deleted clients."""
        store = self.hs.as_store
        before = now_ms - self.hs.config.limits.as_max_client_age_s * 1000

        def work() -> list[ClientId]:
            gone = []
            for queue_id in store.queues.inactive(before):
                if not queue_id.startswith(b"c"):
                    continue                       # alias queues: the spec sets no age for them
                client_id = decode(ClientId, queue_id[1:])
                try:
                    store.accounts.delete_client(client_id)
                except NotFound:
                    pass                           # a queue left over by an interrupted deletion
                try:
                    store.queues.delete(queue_id)
                except NotFound:
                    pass
                gone.append(client_id)
            return gone

        gone = await trio.to_thread.run_sync(work)
        if gone:
            log.info("%s: pruned %d inactive client entries", self.hs.domain, len(gone))
        return gone

    async def prune_periodically(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run :meth:`prune_inactive` every ``as_prune_interval_s`` until cancelled."""
        task_status.started()
        while True:
            try:
                await self.prune_inactive(self.hs.clock.now_ms())
            except Exception:   # a failed round must not stop the homeserver; the next one retries
                log.exception("%s: pruning inactive client entries failed", self.hs.domain)
            await trio.sleep(self.hs.config.limits.as_prune_interval_s)

    async def _remote_trust(self, domain: Fqdn, want_fingerprint: bytes) -> TrustStore:
        """``domain``'s AS credentials from the remote key cache (TLS only)."""
        try:
            return await self.hs.federation.keys.trust_store(str(domain), want_fingerprint=want_fingerprint)
        except NotFederated as e:
            raise Forbidden(str(e), code="not_federated") from None
        except FederationError as e:
            log.info("cannot fetch the AS credentials of %s: %s", domain, e)
            raise UpstreamError(f"the AS credentials of {domain} cannot be fetched: {e}",
                                code="remote_as_unavailable") from None


def handlers(hs) -> dict[str, Handler]:
    service = AsService(hs)
    hs.as_service = service

    async def as_credentials(call: Call) -> AsCredentialsResponse:
        return await service.credentials(call.now_ms)

    async def privacy_pass_issuer_keys(call: Call) -> IssuerKeysResponse:
        """Clients fetch the key to request tokens under (docs/decisions.md)."""
        await hs.privacy_pass_gate.maybe_rotate(call.now_ms)
        return hs.privacy_pass_gate.directory(call.now_ms)

    def run(name: str) -> Callable[[Call], Awaitable[Any]]:
        async def handler(call: Call) -> Any:
            return await service.run(name, call)
        handler.__name__ = name
        return handler

    table: dict[str, Handler] = {"as_credentials": as_credentials,
                                 "privacy_pass_issuer_keys": privacy_pass_issuer_keys}
    for op in OPERATIONS:
        table[op.name] = service.request_tokens if op.name == "request_tokens" else run(op.name)
    return table


async def start(hs) -> None:
    """Start the AS's background work (pruning) in ``hs.app.nursery``."""
    service = hs.as_service
    service.cancel_scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with service.cancel_scope:
            await service.prune_periodically(task_status=task_status)

    await hs.app.nursery.start(run)


async def stop(hs) -> None:
    service = getattr(hs, "as_service", None)
    if service is not None and service.cancel_scope is not None:
        service.cancel_scope.cancel()
