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
  window (:class:`~phoenix_ref.privacy_pass.IssuerKeys`). There are two
  sets, rotated alike: the **local** keys, which the AS issues under only for
  its own clients, and the **federated** keys, for clients of other
  homeservers (``spec/federation/federation_protocol.md#client-to-remote-as-communication``).
  Rows of the endpoint table marked ``local_only`` (the DS's *request group
  id* and *create group*, ``spec/federation/use_cases.md#message-distribution``)
  refuse a valid federated token with 403 ``local_clients_only`` and leave it
  unspent; every other row redeems both (docs/decisions.md, A21);
* the **spent-token store** — one persistent table for the three services, so
  a token redeemed at the QS cannot be spent again at the DS, and a restart
  forgets nothing (:mod:`phoenix_ref.privacy_pass_store`);
* the **allowance counters** of token issuance (``#rate-limiting``), in the
  same SQLite file.

A request carries its token as ``Authorization: PrivateToken token=<base64url>``
(RFC 9577 §2.2). Refusals are 401 with a stable code (docs/decisions.md):
``token_required`` (no PrivateToken header), ``invalid_token`` (malformed,
wrong challenge, bad authenticator), ``unknown_token_key`` and
``token_spent`` (a double spend). A token is spent only after it verified
(and, at a local-only row, only if it is a local token).

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
from .privacy_pass_store import FEDERATED, LOCAL, PrivacyPassStore

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
    """*Get Privacy Pass issuer keys*: two lists, each with the key to request
    tokens under first, then its older keys that still redeem.
    ``token_keys`` are for the homeserver's own clients, ``federated_token_keys``
    for clients of other homeservers; a client asks under the first key of
    the list that matches it (the AS refuses a request under the other with 422)."""
    token_keys: vec(TokenKey)
    federated_token_keys: vec(TokenKey)


class PrivacyPassGate:
    """Issuer keys, spent tokens and issuance counters of one homeserver.

    ``await gate(endpoint, call)`` is the homeserver's ``privacy_pass`` check
    (:data:`phoenix_ref.http.CallCheck`). The gate owns its store; the
    homeserver closes it with :meth:`close`. ``keys`` is the local set,
    ``federated_keys`` the federated one (module docstring).
    """

    def __init__(self, domain: str, store: PrivacyPassStore, keys: pp.IssuerKeys,
                 federated_keys: pp.IssuerKeys, *,
                 rotation_ms: int = ISSUER_KEY_ROTATION_MS, overlap_ms: int = ISSUER_KEY_OVERLAP_MS):
        self.domain = str(domain)
        self.store = store
        self.keys = keys
        self.federated_keys = federated_keys
        self.challenge = pp.homeserver_challenge(self.domain)
        self.rotation_ms = rotation_ms
        self.overlap_ms = overlap_ms
        self._lock = trio.Lock()

    @classmethod
    def open_sync(cls, path: Path | str, domain: str, now_ms: int, **kw: Any) -> "PrivacyPassGate":
        """Open the store at ``path``; load both issuer key sets, generating
        and saving the first key of a set not stored yet (blocking: run in a thread)."""
        store = PrivacyPassStore(path)
        try:
            sets: dict[str, pp.IssuerKeys] = {}
            for role in (LOCAL, FEDERATED):
                keys = store.load_issuer_keys(role)
                if keys is None:
                    taken = {k.truncated_key_id for other in sets.values() for k in other.all()}
                    keys = pp.IssuerKeys(_fresh_key(now_ms, taken))
                    store.save_issuer_keys(keys, role)
                sets[role] = keys
        except BaseException:
            store.close()
            raise
        return cls(domain, store, sets[LOCAL], sets[FEDERATED], **kw)

    @classmethod
    async def open(cls, path: Path | str, domain: str, now_ms: int, **kw: Any) -> "PrivacyPassGate":
        return await trio.to_thread.run_sync(lambda: cls.open_sync(path, domain, now_ms, **kw))

    def close(self) -> None:
        self.store.close()

    def issuing_keys(self, *, local: bool) -> pp.IssuerKeys:
        """The set the AS issues under for a client of this homeserver
        (``local``) or of another one."""
        return self.keys if local else self.federated_keys

    # --- redemption -------------------------------------------------------------------

    async def __call__(self, endpoint: Any, call: Any) -> str:
        """Redeem the request's token or raise (module docstring); a row with
        ``local_only`` set takes local tokens only. Returns the role of the
        token's key (``"local"`` or ``"federated"``), for the metrics."""
        return await self.redeem_header(call.headers.get("Authorization"), call.now_ms,
                                 local_only=bool(getattr(endpoint, "local_only", False)))

    async def redeem_header(self, value: str | None, now_ms: int, *, local_only: bool = False) -> str:
        """Redeem the token of an ``Authorization`` value; returns the role
        of its key (``"local"`` or ``"federated"``). With ``local_only`` a
        valid federated token raises :class:`~phoenix_ref.privacy_pass.LocalClientsOnly`
        and stays unspent."""
        token = pp.parse_authorization(value)           # MissingToken / InvalidToken
        return await trio.to_thread.run_sync(self._redeem_sync, token, now_ms, local_only)

    def _redeem_sync(self, token: pp.Token, now_ms: int, local_only: bool) -> str:
        local, federated = self.keys, self.federated_keys   # one snapshot: rotation swaps them
        try:
            token, role = pp.verify(token, local, challenge=self.challenge, now_ms=now_ms), LOCAL
        except pp.UnknownTokenKey:
            token, role = pp.verify(token, federated, challenge=self.challenge, now_ms=now_ms), FEDERATED
        if local_only and role != LOCAL:
            raise pp.LocalClientsOnly("this endpoint is for clients of this homeserver only; "
                                      "the token was issued to a client of another homeserver")
        pp.spend(token, self.store)
        return role

    # --- issuer keys ------------------------------------------------------------------------

    def directory(self, now_ms: int) -> IssuerKeysResponse:
        """Per set, the current key first, then rotated-out keys that still redeem."""
        def live(keys: pp.IssuerKeys) -> list[TokenKey]:
            return [TokenKey(pp.TOKEN_TYPE, k.public_key) for k in keys.all() if k.redeemable_at(now_ms)]
        return IssuerKeysResponse(live(self.keys), live(self.federated_keys))

    async def maybe_rotate(self, now_ms: int) -> bool:
        """Rotate the issuing key of each set once it is older than
        ``rotation_ms``, drop keys past their overlap (and their spent-token
        rows), and persist. Rotation limits token hoarding
        (``threat_model/qualitative/federation.md#hoarding-attacks``)."""
        async with self._lock:
            sets = (self.keys, self.federated_keys)
            if not any(keys.rotation_due(now_ms, self.rotation_ms) for keys in sets) and \
                    all(k.redeemable_at(now_ms) for keys in sets for k in keys.previous):
                return False
            await trio.to_thread.run_sync(self._rotate_sync, now_ms, False)
            return True

    async def rotate(self, now_ms: int) -> tuple[pp.IssuerKey, pp.IssuerKey]:
        """Operator action: a new issuing key in both sets now (the old ones
        redeem for ``overlap_ms``); returns the new (local, federated) keys."""
        async with self._lock:
            await trio.to_thread.run_sync(self._rotate_sync, now_ms, True)
            return self.keys.current, self.federated_keys.current

    def _rotate_sync(self, now_ms: int, force: bool) -> None:
        # copies, swapped in once saved
        new = {LOCAL: pp.IssuerKeys(self.keys.current, self.keys.previous),
               FEDERATED: pp.IssuerKeys(self.federated_keys.current, self.federated_keys.previous)}
        gone = [key_id for keys in new.values() for key_id in keys.prune(now_ms)]
        for role, keys in new.items():
            if force or keys.rotation_due(now_ms, self.rotation_ms):
                # no live key of either set shares the new key's one-byte id, so a
                # request under the wrong set's key is refused, never answered under another key
                taken = {k.truncated_key_id for other in new.values() for k in other.all()}
                keys.rotate(now_ms, self.overlap_ms, _fresh_key(now_ms, taken))
            self.store.save_issuer_keys(keys, role)
        self.keys, self.federated_keys = new[LOCAL], new[FEDERATED]
        for key_id in gone:
            self.store.forget_key(key_id)


def _fresh_key(now_ms: int, taken: set[int]) -> pp.IssuerKey:
    """A new issuer key whose truncated key id is none of ``taken``."""
    key = pp.IssuerKey.generate(now_ms)
    while key.truncated_key_id in taken:
        key = pp.IssuerKey.generate(now_ms)
    return key
