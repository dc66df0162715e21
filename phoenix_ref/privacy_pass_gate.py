"""The HTTP-side Privacy Pass check of one homeserver (GUIDE §1: the HTTP layer
authenticates the transport-level parts, the cores never see tokens).

Which requests need a token: ``spec/authentication_service.md#authentication``
("if not explicitly mentioned, all endpoints additionally require the client
to provide a valid privacy pass token"), ``spec/queuing_service.md#authentication``
and ``spec/delivery_service.md`` ("a privacy pass token valid under the
privacy pass public key of the AS of the same domain"). The endpoint table
marks those rows (``Endpoint.privacy_pass``); the homeserver calls
:class:`PrivacyPassGate` for them before the handler runs.

One gate per homeserver, shared by its AS, DS and QS, because all three
redeem tokens issued by the AS of the same domain:

* the **issuer keys** ("AS Privacy Pass key material", ``#as-state``) —
  loaded from, or generated into, the Privacy Pass store; the AS issues with
  the current key, every service redeems with any key still in its overlap
  window (:class:`~phoenix_ref.privacy_pass.IssuerKeys`);
* the **spent-token store** — one persistent table for the three services, so
  a token redeemed at the QS cannot be spent again at the DS, and a restart
  forgets nothing (:mod:`phoenix_ref.privacy_pass_store`);
* the **allowance counters** of token issuance (``#rate-limiting``), in the
  same SQLite file.

A request carries its token as ``Authorization: PrivateToken token=<base64url>``
(RFC 9577 §2.2). Refusals are 401 with a stable code (docs/decisions.md):
``token_required`` (no PrivateToken header), ``invalid_token`` (malformed,
wrong challenge, bad authenticator), ``unknown_token_key`` and
``token_spent`` (a double spend). A token is spent only after it verified.

Clients learn the issuer key from *Get Privacy Pass issuer keys*
(:class:`IssuerKeysResponse`, an endpoint phoenix_ref adds: the spec names
none — docs/decisions.md); the challenge needs no round trip
(:func:`~phoenix_ref.privacy_pass.homeserver_challenge`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from . import privacy_pass as pp
from .codec import U16, VarBytes, struct, vec
from .privacy_pass_store import PrivacyPassStore

__all__ = ["TokenKey", "IssuerKeysResponse", "PrivacyPassGate", "ISSUER_KEY_ROTATION_MS",
           "ISSUER_KEY_OVERLAP_MS"]

DAY_MS = 24 * 3600 * 1000
#: How long one issuer key issues before the AS rotates it, and how long a
#: rotated-out key still redeems (docs/decisions.md, "Privacy Pass key rotation").
ISSUER_KEY_ROTATION_MS = 30 * DAY_MS
ISSUER_KEY_OVERLAP_MS = 7 * DAY_MS


@struct
class TokenKey:
    """One issuer public key: an entry of the RFC 9578 §4 issuer directory
    ("token-keys"), in the TLS presentation language. ``token_key`` is
    SerializeElement(pkI) for token type 0x0005."""
    token_type: U16
    token_key: VarBytes


@struct
class IssuerKeysResponse:
    """*Get Privacy Pass issuer keys*: the key clients must request tokens
    under first, then the older keys that still redeem."""
    token_keys: vec(TokenKey)


class PrivacyPassGate:
    """Issuer keys, spent tokens and issuance counters of one homeserver.

    ``await gate(endpoint, call)`` is the homeserver's ``privacy_pass`` check
    (:data:`phoenix_ref.http.CallCheck`). The gate owns its store; the
    homeserver closes it with :meth:`close`.
    """

    def __init__(self, domain: str, store: PrivacyPassStore, keys: pp.IssuerKeys, *,
                 rotation_ms: int = ISSUER_KEY_ROTATION_MS, overlap_ms: int = ISSUER_KEY_OVERLAP_MS):
        self.domain = str(domain)
        self.store = store
        self.keys = keys
        self.challenge = pp.homeserver_challenge(self.domain)
        self.rotation_ms = rotation_ms
        self.overlap_ms = overlap_ms
        self._lock = trio.Lock()

    @classmethod
    def open_sync(cls, path: Path | str, domain: str, now_ms: int, **kw: Any) -> "PrivacyPassGate":
        """Open the store at ``path``; load the issuer keys, or generate and
        save the first key on first start (blocking: run in a thread)."""
        store = PrivacyPassStore(path)
        try:
            keys = store.load_issuer_keys()
            if keys is None:
                keys = pp.IssuerKeys.generate(now_ms)
                store.save_issuer_keys(keys)
        except BaseException:
            store.close()
            raise
        return cls(domain, store, keys, **kw)

    @classmethod
    async def open(cls, path: Path | str, domain: str, now_ms: int, **kw: Any) -> "PrivacyPassGate":
        return await trio.to_thread.run_sync(lambda: cls.open_sync(path, domain, now_ms, **kw))

    def close(self) -> None:
        self.store.close()

    # --- redemption -------------------------------------------------------------------

    async def __call__(self, endpoint: Any, call: Any) -> None:
        """Redeem the request's token or raise a 401 (module docstring)."""
        await self.redeem_header(call.headers.get("Authorization"), call.now_ms)

    async def redeem_header(self, value: str | None, now_ms: int) -> None:
        token = pp.parse_authorization(value)           # MissingToken / InvalidToken
        await trio.to_thread.run_sync(
            lambda: pp.redeem(token, self.keys, self.store, challenge=self.challenge, now_ms=now_ms))

    # --- issuer keys ------------------------------------------------------------------------

    def directory(self, now_ms: int) -> IssuerKeysResponse:
        """The current key first, then rotated-out keys that still redeem."""
        live = [k for k in self.keys.all() if k.redeemable_at(now_ms)]
        return IssuerKeysResponse([TokenKey(pp.TOKEN_TYPE, k.public_key) for k in live])

    async def maybe_rotate(self, now_ms: int) -> bool:
        """Rotate the issuing key once it is older than ``rotation_ms``, drop
        keys past their overlap (and their spent-token rows), and persist.
        Rotation limits token hoarding
        (``threat_model/qualitative/federation.md#hoarding-attacks``)."""
        async with self._lock:
            if not self.keys.rotation_due(now_ms, self.rotation_ms) and \
                    all(k.redeemable_at(now_ms) for k in self.keys.previous):
                return False
            await trio.to_thread.run_sync(self._rotate_sync, now_ms, False)
            return True

    async def rotate(self, now_ms: int) -> pp.IssuerKey:
        """Operator action: a new issuing key now (the old one redeems for ``overlap_ms``)."""
        async with self._lock:
            await trio.to_thread.run_sync(self._rotate_sync, now_ms, True)
            return self.keys.current

    def _rotate_sync(self, now_ms: int, force: bool) -> None:
        keys = pp.IssuerKeys(self.keys.current, self.keys.previous)   # a copy: swap when saved
        gone = keys.prune(now_ms)
        if force:
            keys.rotate(now_ms, self.overlap_ms)
        else:
            keys.maybe_rotate(now_ms, self.rotation_ms, self.overlap_ms)
        self.store.save_issuer_keys(keys)
        self.keys = keys
        for key_id in gone:
            self.store.forget_key(key_id)
