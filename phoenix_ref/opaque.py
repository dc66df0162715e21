"""OPAQUE for the AS: a thin, typed wrapper over ``opaque-ke-py`` 0.1.0.

The AS authenticates users by password with OPAQUE
(``spec/authentication_service.md#authentication``: *Client Password* and
*Client 2FA*), registers them with OPAQUE's registration flow
(``#initialize-user-registration``, ``#finish-user-registration``) and keeps
the *AS OPAQUE key material* and an *ephemeral OPAQUE DB*
(``spec/authentication_service.md#as-state``). phoenix_ref follows OPAQUE as
``opaque-ke`` 4 implements it (``../shared/rfcs/opaque.md``; ristretto255
OPRF, 3DH, SHA-512), see ``docs/decisions.md`` "Final RFC texts".

Message sizes (``opaque.md#registration-messages``, ``#ake-messages``), checked
before the library sees the bytes:

======================  =====  ============================================
RegistrationRequest       32   blinded element
RegistrationResponse      64   evaluated element ‖ server public key
RegistrationRecord       192   client public key ‖ masking key ‖ envelope
KE1                       96   credential request ‖ client nonce ‖ keyshare
KE2                      320   credential response ‖ server nonce ‖ keyshare ‖ MAC
KE3                       64   client MAC
======================  =====  ============================================

The stored *password file* is the RegistrationRecord (192 bytes).

Errors: bytes that cannot be OPAQUE messages raise
:class:`~phoenix_ref.errors.Malformed` (code ``opaque_malformed``); a
handshake that fails (wrong password, tampered message, wrong server state)
raises :class:`~phoenix_ref.errors.Unauthorized` (code ``opaque_failed``).

Caution about the binding: ``ServerSetupData.get_public_key()`` of
``opaque-ke-py`` 0.1.0 returns the *whole serialized setup* — OPRF seed and
private keys. Never publish it; :attr:`OpaqueServerSetup.public_key` derives
the real public key instead.

Not provided by the binding, hence not here: simulated responses for unknown
users (``opaque.md#preventing-client-enumeration``). The AS reveals which
user ids exist anyway (``#fetch-user-profile`` is public), and login is only
used for known clients (2FA, account deletion).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import opaque_ke_py as _ok
import rbcl

from .errors import Conflict, Malformed, RateLimited, Unauthorized

__all__ = [
    "REGISTRATION_REQUEST_LEN", "REGISTRATION_RESPONSE_LEN", "REGISTRATION_RECORD_LEN",
    "KE1_LEN", "KE2_LEN", "KE3_LEN", "SERVER_SETUP_LEN", "OpaqueServerSetup",
    "ClientStart", "ClientRegistrationFinish", "ClientLoginFinish", "ServerLoginStart",
    "client_registration_start", "client_registration_finish", "server_registration_start",
    "server_registration_finish", "client_login_start", "client_login_finish",
    "server_login_start", "server_login_finish", "EPHEMERAL_TTL_MS", "EphemeralEntry", "EphemeralOpaqueDb",
]

REGISTRATION_REQUEST_LEN = 32
REGISTRATION_RESPONSE_LEN = 64
REGISTRATION_RECORD_LEN = 192
KE1_LEN = 96
KE2_LEN = 320
KE3_LEN = 64
SERVER_SETUP_LEN = 128  # oprf_seed (64) ‖ server private key (32) ‖ fake private key (32)
#: Lifetime of an ephemeral OPAQUE DB entry (docs/decisions.md, "Ephemeral OPAQUE DB").
EPHEMERAL_TTL_MS = 5 * 60 * 1000
_CLIENT_REGISTRATION_STATE_LEN = 64
_CLIENT_LOGIN_STATE_LEN = 192
_SERVER_LOGIN_STATE_LEN = 128


# --- error mapping ----------------------------------------------------------------

def _check_len(what: str, data: bytes, n: int) -> bytes:
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    if len(data) != n:
        raise Malformed(f"{what} must be {n} bytes, got {len(data)}", code="opaque_malformed")
    return bytes(data)


def _password(password: bytes | str) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def _call(step: str, fn, *args):
    """Run one library step; turn its ValueErrors into typed protocol errors.

    The library reports undecodable input as deserialization/size errors and
    every failed check as ``InvalidLoginError`` (or another protocol error).
    """
    try:
        return fn(*args)
    except ValueError as e:
        text = str(e)
        if "eserializ" in text or "SizeError" in text or "SerializationError" in text:
            raise Malformed(f"OPAQUE {step}: undecodable message", code="opaque_malformed") from None
        raise Unauthorized(f"OPAQUE {step} failed", code="opaque_failed") from None


# --- server key material -------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class OpaqueServerSetup:
    """The AS OPAQUE key material (``#as-state``): OPRF seed and server key
    pair, plus the fake key pair opaque-ke keeps for enumeration defence.

    Secret: persist :meth:`to_bytes` with the AS's other private keys.
    """
    _inner: Any

    @classmethod
    def generate(cls) -> "OpaqueServerSetup":
        return cls(_ok.server_setup())

    @classmethod
    def from_bytes(cls, data: bytes) -> "OpaqueServerSetup":
        """Load persisted key material; raises ValueError if it is not valid
        (local configuration, not client input)."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != SERVER_SETUP_LEN:
            raise ValueError(f"OPAQUE server setup must be {SERVER_SETUP_LEN} bytes")
        try:
            return cls(_ok.ServerSetupData.from_bytes(bytes(data)))
        except ValueError as e:
            raise ValueError(f"invalid OPAQUE server setup: {e}") from None

    def to_bytes(self) -> bytes:
        return bytes(self._inner.to_bytes())

    @property
    def public_key(self) -> bytes:
        """The server's ristretto255 public key (the ``server_public_key`` of
        ``opaque.md#registration-messages``), derived from its private key."""
        return rbcl.crypto_scalarmult_ristretto255_base(self.to_bytes()[64:96])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OpaqueServerSetup) and self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:  # never print the secrets
        return f"OpaqueServerSetup(public_key={self.public_key.hex()})"


# --- results -------------------------------------------------------------------------

class ClientStart(NamedTuple):
    """First client step: the message to send, and the state to keep (secret)."""
    message: bytes
    state: bytes


class ClientRegistrationFinish(NamedTuple):
    record: bytes      # RegistrationRecord, sent to the server (the password file)
    export_key: bytes  # client-only key (opaque.md#export-key-usage)


class ClientLoginFinish(NamedTuple):
    ke3: bytes
    session_key: bytes
    export_key: bytes


class ServerLoginStart(NamedTuple):
    ke2: bytes
    state: bytes  # secret; goes into the ephemeral OPAQUE DB until KE3 arrives


# --- registration (opaque.md#registration-phase) ----------------------------------------

def client_registration_start(password: bytes | str) -> ClientStart:
    """CreateRegistrationRequest: returns (RegistrationRequest, client state)."""
    r = _ok.client_registration_start(_password(password))
    return ClientStart(bytes(r.get_message()), bytes(r.get_state()))


def server_registration_start(setup: OpaqueServerSetup, request: bytes, credential_identifier: bytes) -> bytes:
    """CreateRegistrationResponse for the user named ``credential_identifier``
    (the AS uses the user id); returns the RegistrationResponse."""
    request = _check_len("RegistrationRequest", request, REGISTRATION_REQUEST_LEN)
    r = _call("registration start", _ok.server_registration_start, setup._inner, request,
              bytes(credential_identifier))
    return bytes(r.get_message())


def client_registration_finish(password: bytes | str, state: bytes, response: bytes) -> ClientRegistrationFinish:
    """FinalizeRegistrationRequest: returns the RegistrationRecord and export key."""
    state = _check_len("client registration state", state, _CLIENT_REGISTRATION_STATE_LEN)
    response = _check_len("RegistrationResponse", response, REGISTRATION_RESPONSE_LEN)
    r = _call("registration finish", _ok.client_registration_finish, _password(password), state, response)
    return ClientRegistrationFinish(bytes(r.get_message()), bytes(r.get_export_key()))


def server_registration_finish(record: bytes) -> bytes:
    """Check the RegistrationRecord decodes and return the password file to store."""
    record = _check_len("RegistrationRecord", record, REGISTRATION_RECORD_LEN)
    r = _call("registration record", _ok.server_registration_finish, record)
    return bytes(r.get_password_file())


# --- login (opaque.md#online-phase) ----------------------------------------------------

def client_login_start(password: bytes | str) -> ClientStart:
    """GenerateKE1: returns (KE1, client state)."""
    r = _ok.client_login_start(_password(password))
    return ClientStart(bytes(r.get_message()), bytes(r.get_state()))


def server_login_start(setup: OpaqueServerSetup, password_file: bytes, ke1: bytes,
                       credential_identifier: bytes) -> ServerLoginStart:
    """GenerateKE2 against the stored password file; returns KE2 and the
    server state to keep until :func:`server_login_finish`."""
    password_file = _check_len("password file", password_file, REGISTRATION_RECORD_LEN)
    ke1 = _check_len("KE1", ke1, KE1_LEN)
    r = _call("login start", _ok.server_login_start, setup._inner, password_file, ke1,
              bytes(credential_identifier))
    return ServerLoginStart(bytes(r.get_message()), bytes(r.get_state()))


def client_login_finish(password: bytes | str, state: bytes, ke2: bytes) -> ClientLoginFinish:
    """GenerateKE3: fails with Unauthorized on a wrong password or a KE2
    that does not authenticate the server."""
    state = _check_len("client login state", state, _CLIENT_LOGIN_STATE_LEN)
    ke2 = _check_len("KE2", ke2, KE2_LEN)
    r = _call("login finish", _ok.client_login_finish, _password(password), state, ke2)
    return ClientLoginFinish(bytes(r.get_message()), bytes(r.get_session_key()), bytes(r.get_export_key()))


def server_login_finish(state: bytes, ke3: bytes) -> bytes:
    """ServerFinish: verifies the client MAC, returns the session key."""
    state = _check_len("server login state", state, _SERVER_LOGIN_STATE_LEN)
    ke3 = _check_len("KE3", ke3, KE3_LEN)
    r = _call("server finish", _ok.server_login_finish, state, ke3)
    return bytes(r.get_session_key())


# --- the ephemeral OPAQUE DB (spec/authentication_service.md#as-state) ---------------------

@dataclass(frozen=True)
class EphemeralEntry:
    """One pending registration or 2FA login: the client credential and,
    for the online AKE only, the OPAQUE server state. ``source`` is the
    network source that started an unauthenticated registration (None for
    authenticated starts)."""
    client_credential: Any
    opaque_state: bytes | None
    expires_at_ms: int
    source: str | None = None


class EphemeralOpaqueDb:
    """In-memory entries indexed by user name or client id, each living
    ``ttl_ms``. The spec keeps this table in memory only; a restart simply
    abandons pending handshakes.

    Registration start needs neither authentication nor a Privacy Pass token
    (``#initialize-user-registration``), so the table is bounded twice:
    one source (see :func:`phoenix_ref.http.source_of`) holds at most
    ``max_per_source`` live entries, so that a flood from one place leaves
    room for everybody else, and the whole table at most ``max_entries``.
    Past either bound :meth:`put` raises
    :class:`~phoenix_ref.errors.RateLimited` until an entry expires
    (docs/decisions.md, "Pending registrations per source"). Thread-safe.
    """

    def __init__(self, ttl_ms: int = EPHEMERAL_TTL_MS, max_entries: int = 100_000,
                 max_per_source: int = 32) -> None:
        self.ttl_ms = ttl_ms
        self.max_entries = max_entries
        self.max_per_source = max_per_source
        self._entries: dict[bytes, EphemeralEntry] = {}
        self._by_source: dict[str, dict[bytes, int]] = {}   # source → its keys → expiry
        self._lock = threading.Lock()

    def _drop(self, key: bytes) -> EphemeralEntry | None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.source is not None:
            keys = self._by_source.get(entry.source, {})
            keys.pop(key, None)
            if not keys:
                self._by_source.pop(entry.source, None)
        return entry

    def _purge(self, now_ms: int) -> int:
        expired = [k for k, e in self._entries.items() if e.expires_at_ms <= now_ms]
        for k in expired:
            self._drop(k)
        return len(expired)

    def _check_room(self, key: bytes, source: str | None, now_ms: int) -> None:
        """Raise RateLimited if storing ``key`` would pass a bound (replacing
        an entry takes no extra room)."""
        for attempt in range(2):   # the second look after dropping what expired
            own = self._by_source.get(source, {}) if source is not None else {}
            if len(own) - (key in own) >= self.max_per_source:
                held, what = own, "from this source"
            elif len(self._entries) - (key in self._entries) >= self.max_entries:
                held, what = {k: e.expires_at_ms for k, e in self._entries.items()}, "on this homeserver"
            else:
                return
            if attempt == 0:
                self._purge(now_ms)
        raise RateLimited(f"too many pending OPAQUE handshakes {what}",
                          retry_after=max(1, -(-(min(held.values()) - now_ms) // 1000)))

    def put(self, key: bytes, client_credential: Any, now_ms: int, opaque_state: bytes | None = None,
            source: str | None = None,
            may_replace: Callable[[EphemeralEntry], bool] | None = None) -> EphemeralEntry:
        """Store (or replace) the entry for ``key``, counted against ``source``
        if given; raises RateLimited past a bound (class docstring). With
        ``may_replace``, a live entry under ``key`` is replaced only if
        ``may_replace(entry)`` is true, else Conflict (``registration_pending``);
        the check and the write happen under one lock."""
        with self._lock:
            live = self._entries.get(key)
            if may_replace is not None and live is not None and live.expires_at_ms > now_ms \
                    and not may_replace(live):
                raise Conflict("a registration of this user id is in progress; it ends within "
                               f"{self.ttl_ms // 1000} s unless finished", code="registration_pending")
            self._check_room(key, source, now_ms)
            self._drop(key)
            entry = EphemeralEntry(client_credential, opaque_state, now_ms + self.ttl_ms, source)
            self._entries[key] = entry
            if source is not None:
                self._by_source.setdefault(source, {})[key] = entry.expires_at_ms
            return entry

    def get(self, key: bytes, now_ms: int) -> EphemeralEntry:
        """The live entry for ``key``; raises Unauthorized (``no_pending_opaque``)
        when there is none or it expired — the caller must start over."""
        with self._lock:
            e = self._entries.get(key)
            if e is None or e.expires_at_ms <= now_ms:
                self._drop(key)
                raise Unauthorized("no pending OPAQUE handshake (missing or expired)", code="no_pending_opaque")
            return e

    def take(self, key: bytes, now_ms: int) -> EphemeralEntry:
        """:meth:`get` and delete: a handshake state is used once."""
        with self._lock:
            e = self._drop(key)
            if e is None or e.expires_at_ms <= now_ms:
                raise Unauthorized("no pending OPAQUE handshake (missing or expired)", code="no_pending_opaque")
            return e

    def delete(self, key: bytes) -> None:
        with self._lock:
            self._drop(key)

    def purge(self, now_ms: int) -> int:
        """Drop every entry that expired by ``now_ms`` (an expired entry is
        refused anyway; this frees the credential and OPAQUE state it
        holds, which otherwise stay until a bound is reached). Returns how
        many went. The homeserver's sweeper calls it."""
        with self._lock:
            return self._purge(now_ms)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
