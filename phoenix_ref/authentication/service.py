"""The AS's async shell (``spec/authentication_service.md``).

:class:`AsService` runs the sans-IO
:class:`~phoenix_ref.authentication.core.AuthenticationCore` for the routes
and the homeserver: every core call in a worker thread, because the core
talks to SQLite (GUIDE §4). The core is built on first use from what the
homeserver opened at startup:

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
client's domain; the service fetches that domain's *Get AS credentials*
answer through the remote key cache (over TLS, cached, one refetch for an
unknown intermediate) and calls the core once more with it.

State expiration (``spec/general_concepts/state_expiration.md``):
:meth:`AsService.sweep_rules` hands the homeserver's sweeper
(:mod:`phoenix_ref.sweeper`) the AS's rules — expired client credentials,
inactive client entries (``#configuration``, "Maximal QS client record
age") and alias entries, expired connection packages, pending OPAQUE
handshakes that ran out.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import trio

from .. import privacy_pass as pp
from ..clock import Clock
from ..config import Config
from ..credentials import AsCredentialsResponse, TrustStore, UnknownSigner
from ..errors import Forbidden, UpstreamError
from ..federation.client import FederationError, NotFederated
from ..federation.keys import RemoteKeyCache
from ..http import Call
from ..ids import ClientId, Fqdn
from ..keystore import Keystore
from ..privacy_pass_gate import IssuerKeysResponse, PrivacyPassGate
from ..sweeper import Rule
from .core import AsConfig, AsSecrets, AuthenticationCore, operation
from .store import AsStore

__all__ = ["AsService", "as_credentials_response"]

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

    def __init__(self, config: Config, keystore: Keystore, store: AsStore, gate: PrivacyPassGate,
                 key_cache: RemoteKeyCache, clock: Clock):
        self.config = config
        self.keystore = keystore
        self.store = store
        self.gate = gate
        self.key_cache = key_cache
        self.clock = clock
        self._core: AuthenticationCore | None = None
        self._version: tuple | None = None
        self._lock = trio.Lock()
        #: ``on_tokens_issued(role, n)``: the AS issued ``n`` Privacy Pass
        #: tokens to a ``"local"`` or ``"federated"`` client (metrics)
        self.on_tokens_issued: Callable[[str, int], None] | None = None

    def _secrets_version(self, now_ms: int) -> tuple:
        """What the core's secrets depend on; a change means "rebuild them"."""
        ks = self.keystore
        return (ks.as_intermediates[0][0].fingerprint(), len(ks.as_credentials), self.store.revocations,
                id(self.gate.keys), id(self.gate.federated_keys), now_ms // DAY_MS)

    def _secrets(self, now_ms: int) -> AsSecrets:
        ks, store = self.keystore, self.store
        inter, inter_key = ks.as_intermediates[0]
        creds = as_credentials_response(ks, store.revoked_sync(), now_ms)
        return AsSecrets(creds, inter, inter_key, store.accounts.opaque_server_setup(), self.gate.keys,
                         self.gate.federated_keys)

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
        if self.keystore.intermediate_due(now_ms):
            await trio.to_thread.run_sync(self.keystore.issue_intermediate, now_ms)

    async def credentials(self, now_ms: int) -> AsCredentialsResponse:
        """*Get AS credentials*, after renewing a current intermediate near its
        end, so that clients name the intermediate that will sign their CSR."""
        async with self._lock:
            await self._renew_intermediate(now_ms)
        return as_credentials_response(self.keystore, await self.store.revoked(), now_ms)

    async def issuer_keys(self, now_ms: int) -> IssuerKeysResponse:
        """The Privacy Pass issuer directory clients request tokens under
        (docs/decisions.md), after a due key rotation."""
        await self.gate.maybe_rotate(now_ms)
        return self.gate.directory(now_ms)

    def _build(self, secrets: AsSecrets) -> AuthenticationCore:
        lim = self.config.limits
        limits = pp.IssuanceLimits(time_frame_ms=lim.token_time_frame_s * 1000,
                                   client_allowance=lim.token_allowance,
                                   domain_allowance=lim.token_domain_allowance,
                                   max_batch=lim.token_batch_max)
        policy = pp.IssuancePolicy(limits, self.gate.store, self.config.domain, self.keystore.counter_secret)
        as_config = AsConfig(Fqdn(self.config.domain), max_client_age_ms=lim.as_max_client_age_s * 1000,
                             max_alias_age_ms=lim.as_max_alias_age_s * 1000,
                             max_pending_registrations_per_source=lim.registrations_per_source)
        return AuthenticationCore(as_config, secrets, self.store.accounts, self.store.queues, policy)

    async def run(self, name: str, call: Call) -> Any:
        """Run the core method of operation ``name`` on the decoded body."""
        core = await self.core(call.now_ms)
        method = getattr(core, operation(name).method)
        return await trio.to_thread.run_sync(method, call.body, call.now_ms)

    async def init_user_registration(self, call: Call) -> Any:
        """``#initialize-user-registration``: the only unauthenticated start
        that holds state, so it counts against the call's network source."""
        core = await self.core(call.now_ms)
        return await trio.to_thread.run_sync(
            functools.partial(core.init_user_registration, call.body, call.now_ms, source=call.source))

    async def request_tokens(self, call: Call) -> Any:
        """``#token-issuance``, local and federated clients (module docstring).
        Tells :attr:`on_tokens_issued` how many tokens went out, and to whom."""
        core = await self.core(call.now_ms)
        try:
            response = await trio.to_thread.run_sync(core.request_tokens, call.body, call.now_ms)
            role = "local"   # the core verified the credential without another domain's AS credentials
        except UnknownSigner as e:
            if e.domain is None or e.domain == core.domain:
                raise
            trust = await self._remote_trust(e.domain, call.body.auth.client_credential.signer_fingerprint)
            response = await trio.to_thread.run_sync(
                functools.partial(core.request_tokens, call.body, call.now_ms, remote_trust=trust))
            role = "federated"
        if self.on_tokens_issued is not None:
            self.on_tokens_issued(role, issued_count(response))
        return response

    async def _remote_trust(self, domain: Fqdn, want_fingerprint: bytes) -> TrustStore:
        """``domain``'s AS credentials from the remote key cache (TLS only)."""
        try:
            return await self.key_cache.trust_store(str(domain), want_fingerprint=want_fingerprint)
        except NotFederated as e:
            raise Forbidden(str(e), code="not_federated") from None
        except FederationError as e:
            log.info("cannot fetch the AS credentials of %s: %s", domain, e)
            raise UpstreamError(f"the AS credentials of {domain} cannot be fetched: {e}",
                                code="remote_as_unavailable") from None

    # --- state expiration (the homeserver's sweeper, phoenix_ref/sweeper.py) ------------------

    async def prune_inactive(self, now_ms: int) -> list[ClientId]:
        """One round of :meth:`AuthenticationCore.prune_inactive`; returns the deleted clients."""
        core = await self.core(now_ms)
        gone = await trio.to_thread.run_sync(core.prune_inactive, now_ms)
        if gone:
            log.info("%s: pruned %d inactive client entries", self.config.domain, len(gone))
        return gone

    async def sweep_rules(self, now_ms: int) -> list[Rule]:
        """The AS's expiry rules for the sweeper (module docstring), each a
        synchronous call of the core; the core is built first, so that they
        need no event loop."""
        core = await self.core(now_ms)
        return [Rule("as client entries with expired credentials", lambda now: len(core.expire_credentials(now))),
                Rule("as inactive client entries", lambda now: len(core.prune_inactive(now))),
                Rule("as inactive alias entries", lambda now: len(core.prune_inactive_aliases(now))),
                Rule("as expired connection packages", core.expire_connection_packages),
                Rule("as expired pending OPAQUE handshakes", core.expire_pending)]


def issued_count(response: Any) -> int:
    """How many tokens a TokenResponse carries (one evaluated element each)."""
    return len(response.tokens.evaluated_msgs)
