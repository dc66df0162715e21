"""Privacy Pass tokens of type 0x0005, VOPRF(ristretto255, SHA-512), batched.

Implements, on top of ``voprf.py`` (RFC 9497):

* the Amortized Privately Verifiable Token Batch Issuance protocol of
  ``draft-ietf-privacypass-batched-tokens`` (``#amortized-batch``): the client
  blinds ``Nr`` token inputs into one ``AmortizedBatchTokenRequest``, the
  issuer answers with ``Nr`` evaluated elements and one batched DLEQ proof, the
  client checks that proof once (``FinalizeBatch``) and builds ``Nr`` tokens;
* the ``TokenChallenge`` and ``Token`` structures and the
  ``Authorization: PrivateToken token=...`` credential of RFC 9577 §2;
* redemption: token verification as RFC 9578 §5.4 describes it (recompute
  the PRF output with the issuer's private key and compare in constant time)
  plus a double-spend store;
* issuer key management with rotation and an overlap window, and the
  issuance rate limits of ``spec/authentication_service.md#rate-limiting``.

Where Phoenix uses this (GUIDE §8, ``docs/decisions.md``): the AS issues
tokens at its token issuance endpoint (``spec/authentication_service.md#token-issuance``);
the AS, DS and QS of the same domain redeem them
(``spec/delivery_service.md``, ``spec/queuing_service.md``: "a privacy pass
token valid under the privacy pass public key of the AS of the same domain").

Choices the draft and the spec leave open (``homeserver_challenge``):

* The challenge is **fixed per homeserver** and computable by any client
  without a round trip, because Phoenix clients fetch tokens ahead of time
  (RFC 9577 §2.1.1 "cross-origin, non-interactive" tokens):
  ``issuer_name = "as.<domain>"``, ``redemption_context`` empty,
  ``origin_info = "as.<domain>,ds.<domain>,qs.<domain>"`` — the three
  services that accept the tokens, named by the spec's discovery rule.
* ``token_key_id = SHA-256(SerializeElement(pkI))`` (RFC 9578 §5 and the
  draft's token type registration; the draft's test vectors confirm it).
* Issuance refusals (wrong token type, unknown truncated key id, too many or
  undecodable blinded elements) are HTTP 422 as the draft requires
  (``#issuer-to-client-response``); redemption refusals are 401 so that the
  client knows to present another token (RFC 9577 §2.1).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Iterable, Protocol

from . import voprf
from .codec import (
    U8, U16, U64, DecodeError, EncodeError, Reader, WireType, decode, encode, fixed, optional, struct, vec,
)
from .errors import Forbidden, ProtocolError, RateLimited, Unauthorized, UpstreamError

__all__ = [
    "TOKEN_TYPE", "NK", "NID", "NONCE_LEN", "DEFAULT_MAX_BATCH",
    "InvalidToken", "MissingToken", "TokenSpent", "UnknownTokenKey", "LocalClientsOnly",
    "InvalidTokenRequest", "InvalidTokenResponse",
    "TokenChallenge", "homeserver_challenge", "AmortizedBatchTokenRequest",
    "AmortizedBatchTokenResponse", "TokenRequest", "TokenResponse", "Token",
    "decode_token_request", "decode_token_response", "decode_token",
    "IssuerKey", "IssuerKeys", "IssuanceState", "begin_issuance", "evaluate", "issue",
    "check_token_request", "finalize", "token_key_id", "SpentTokenStore",
    "MemorySpentTokenStore", "spend_id", "verify", "spend", "redeem", "authorization_header",
    "parse_authorization", "www_authenticate_header", "IssuanceLimits",
    "AllowanceWindow", "CounterStore", "MemoryCounterStore", "IssuancePolicy",
]

#: The token type this module implements (draft ``#iana-token-type``).
TOKEN_TYPE = 0x0005
NK = voprf.NH  # authenticator length: Nk = 64
NID = 32  # token_key_id length
NONCE_LEN = 32
#: How many tokens one request may ask for unless the caller says otherwise.
DEFAULT_MAX_BATCH = 100

_VOPRF = voprf.VOPRF()


# --- errors --------------------------------------------------------------------

class InvalidToken(Unauthorized):
    """The presented token (or its header) is malformed or does not verify."""
    code = "invalid_token"


class MissingToken(Unauthorized):
    """The request carries no Privacy Pass token where one is required."""
    code = "token_required"


class TokenSpent(Unauthorized):
    """The token verifies but was already redeemed."""
    code = "token_spent"


class UnknownTokenKey(Unauthorized):
    """The token names an issuer key this homeserver does not (or no longer) accept."""
    code = "unknown_token_key"


class LocalClientsOnly(Forbidden):
    """A valid token of the federated issuer key at an endpoint that only the
    homeserver's own clients may call (docs/decisions.md, A21)."""
    code = "local_clients_only"


class InvalidTokenRequest(ProtocolError):
    """A token request the issuer cannot process (draft: HTTP 422)."""
    status, code = 422, "invalid_token_request"


class InvalidTokenResponse(UpstreamError):
    """Client side: the issuer's answer is malformed or its proof does not verify."""
    code = "invalid_token_response"


# --- wire structs ------------------------------------------------------------------

class _PrefixedOpaque(WireType):
    """``opaque x<lo..hi>`` with a fixed-size length prefix (RFC 8446 §3.4).

    RFC 9577's TokenChallenge uses these classic TLS vectors rather than the
    variable-length ones of the rest of the protocol.
    """

    def __init__(self, prefix: int, lo: int, hi: int, allowed: tuple[int, ...] | None = None):
        self.prefix, self.lo, self.hi, self.allowed = prefix, lo, hi, allowed
        self.name = f"opaque<{lo}..{hi}>"

    def _check(self, n: int) -> str | None:
        if not self.lo <= n <= self.hi:
            return f"length {n} outside {self.lo}..{self.hi}"
        if self.allowed is not None and n not in self.allowed:
            return f"length {n} is not one of {self.allowed}"
        return None

    def write(self, value: bytes, out: bytearray) -> None:
        if not isinstance(value, (bytes, bytearray)):
            raise EncodeError(f"{type(value).__name__} is not bytes")
        problem = self._check(len(value))
        if problem:
            raise EncodeError(problem)
        out += len(value).to_bytes(self.prefix, "big") + value

    def read(self, r: Reader) -> bytes:
        n = int.from_bytes(r.take(self.prefix), "big")
        problem = self._check(n)
        if problem:
            raise DecodeError(problem)
        return r.take(n)


def _opaque(prefix: int, lo: int, hi: int, allowed: tuple[int, ...] | None = None) -> Any:
    return Annotated[bytes, _PrefixedOpaque(prefix, lo, hi, allowed)]


@struct
class TokenChallenge:
    """RFC 9577 §2.1; ``redemption_context`` is empty or 32 bytes."""
    token_type: U16
    issuer_name: _opaque(2, 1, 0xFFFF)
    redemption_context: _opaque(1, 0, 32, (0, 32))
    origin_info: _opaque(2, 0, 0xFFFF)

    def digest(self) -> bytes:
        """``challenge_digest = SHA256(challenge)`` (draft ``#client-to-issuer-request``)."""
        return hashlib.sha256(encode(self)).digest()


def homeserver_challenge(domain: Any) -> TokenChallenge:
    """The one challenge every token of ``domain``'s AS answers (module docstring)."""
    d = str(domain)
    return TokenChallenge(
        token_type=TOKEN_TYPE,
        issuer_name=f"as.{d}".encode(),
        redemption_context=b"",
        origin_info=f"as.{d},ds.{d},qs.{d}".encode(),
    )


@struct
class AmortizedBatchTokenRequest:
    """Draft ``#client-to-issuer-request``; ``blinded_msgs`` are Ne-byte elements."""
    token_type: U16
    truncated_token_key_id: U8
    blinded_msgs: vec(fixed(voprf.NE))


@struct
class AmortizedBatchTokenResponse:
    """Draft ``#issuer-to-client-response``: Nr elements and one (c, s) proof."""
    evaluated_msgs: vec(fixed(voprf.NE))
    evaluated_proof: fixed(2 * voprf.NS)


# The Phoenix spec calls these TokenRequest / TokenResponse
# (spec/authentication_service.md#token-issuance).
TokenRequest = AmortizedBatchTokenRequest
TokenResponse = AmortizedBatchTokenResponse


@struct
class Token:
    """RFC 9577 §2.2 with Nid = 32 and Nk = 64 (draft ``#finalization``)."""
    token_type: U16
    nonce: fixed(NONCE_LEN)
    challenge_digest: fixed(32)
    token_key_id: fixed(NID)
    authenticator: fixed(NK)

    def token_input(self) -> bytes:
        """``token_type || nonce || challenge_digest || token_key_id``."""
        return _token_input(self.token_type, self.nonce, self.challenge_digest, self.token_key_id)


def _token_input(token_type: int, nonce: bytes, challenge_digest: bytes, key_id: bytes) -> bytes:
    return token_type.to_bytes(2, "big") + nonce + challenge_digest + key_id


def decode_token_request(data: bytes, *, max_batch: int = DEFAULT_MAX_BATCH) -> AmortizedBatchTokenRequest:
    """Parse a request body; anything malformed is :class:`InvalidTokenRequest`."""
    limit = 3 + 4 + max_batch * voprf.NE
    try:
        return decode(AmortizedBatchTokenRequest, data, max_len=limit)
    except DecodeError as e:
        raise InvalidTokenRequest(f"malformed token request: {e}") from None


def decode_token_response(data: bytes) -> AmortizedBatchTokenResponse:
    """Parse a response body; anything malformed is :class:`InvalidTokenResponse`."""
    try:
        return decode(AmortizedBatchTokenResponse, data)
    except DecodeError as e:
        raise InvalidTokenResponse(f"malformed token response: {e}") from None


def decode_token(data: bytes) -> Token:
    """Parse a token; anything malformed is :class:`InvalidToken`."""
    try:
        return decode(Token, data)
    except DecodeError as e:
        raise InvalidToken(f"malformed token: {e}") from None


# --- issuer keys ----------------------------------------------------------------

def token_key_id(public_key: bytes) -> bytes:
    """``SHA-256(SerializeElement(pkI))`` — the draft's Token Key ID for 0x0005."""
    return hashlib.sha256(public_key).digest()


@struct
class IssuerKey:
    """One VOPRF key pair of the issuer.

    ``redeem_until_ms`` is ``None`` while the key is current (it issues and
    redeems); once rotated out it still redeems until that time.
    """
    private_key: fixed(voprf.NS)
    public_key: fixed(voprf.NE)
    created_ms: U64
    redeem_until_ms: optional(U64)

    @property
    def key_id(self) -> bytes:
        return token_key_id(self.public_key)

    @property
    def truncated_key_id(self) -> int:
        """The least significant byte of ``token_key_id`` (draft)."""
        return self.key_id[-1]

    @classmethod
    def generate(cls, now_ms: int) -> "IssuerKey":
        sk, pk = _VOPRF.generate_key_pair()
        return cls(sk, pk, now_ms, None)

    @classmethod
    def derive(cls, seed: bytes, info: bytes, now_ms: int) -> "IssuerKey":
        """DeriveKeyPair (RFC 9497 §3.2.1), for deterministic keys."""
        sk, pk = _VOPRF.derive_key_pair(seed, info)
        return cls(sk, pk, now_ms, None)

    @classmethod
    def from_private(cls, private_key: bytes, now_ms: int = 0) -> "IssuerKey":
        sk = voprf.deserialize_scalar(private_key)
        return cls(sk, voprf.scalar_mult_gen(sk), now_ms, None)

    def redeemable_at(self, now_ms: int) -> bool:
        return self.redeem_until_ms is None or now_ms < self.redeem_until_ms


@struct
class _IssuerKeySet:
    """Serialized form of :class:`IssuerKeys`: the current key first."""
    current: IssuerKey
    previous: vec(IssuerKey)


class IssuerKeys:
    """The issuer's current key and the rotated-out keys still in their overlap.

    Rotation (``threat_model/qualitative/federation.md#hoarding-attacks``: rotating keys
    invalidates hoarded tokens) makes the current key ``previous`` with
    ``redeem_until_ms = now + overlap``: tokens issued under it keep
    redeeming until then, after which they are refused as
    :class:`UnknownTokenKey`. Only the current key issues.
    """

    def __init__(self, current: IssuerKey, previous: Iterable[IssuerKey] = ()):
        if current.redeem_until_ms is not None:
            raise ValueError("the current key has no end of redemption")
        self.current = current
        self.previous = list(previous)

    @classmethod
    def generate(cls, now_ms: int) -> "IssuerKeys":
        return cls(IssuerKey.generate(now_ms))

    def all(self) -> list[IssuerKey]:
        return [self.current, *self.previous]

    def rotate(self, now_ms: int, overlap_ms: int, new_key: IssuerKey | None = None) -> IssuerKey:
        """Make a new current key; the old one redeems for ``overlap_ms`` more.

        A generated key is drawn again while its truncated key id equals that
        of a key still redeemable, so that the one-byte id in a request never
        names two live keys. An explicit ``new_key`` must satisfy the same.
        """
        self.prune(now_ms)
        taken = {k.truncated_key_id for k in self.all()}
        if new_key is None:
            new_key = IssuerKey.generate(now_ms)
            while new_key.truncated_key_id in taken:
                new_key = IssuerKey.generate(now_ms)
        elif new_key.truncated_key_id in taken:
            raise ValueError("the new key's truncated key id collides with a live key")
        old = dataclasses.replace(self.current, redeem_until_ms=now_ms + overlap_ms)
        self.previous.insert(0, old)
        self.current = dataclasses.replace(new_key, redeem_until_ms=None)
        return self.current

    def rotation_due(self, now_ms: int, rotation_period_ms: int) -> bool:
        """Whether the current key is ``rotation_period_ms`` old."""
        return now_ms - self.current.created_ms >= rotation_period_ms

    def maybe_rotate(self, now_ms: int, rotation_period_ms: int, overlap_ms: int) -> IssuerKey | None:
        """:meth:`rotate` if :meth:`rotation_due`; returns the new key or None."""
        if self.rotation_due(now_ms, rotation_period_ms):
            return self.rotate(now_ms, overlap_ms)
        return None

    def prune(self, now_ms: int) -> list[bytes]:
        """Drop keys past their overlap window; returns their key ids."""
        gone = [k for k in self.previous if not k.redeemable_at(now_ms)]
        self.previous = [k for k in self.previous if k.redeemable_at(now_ms)]
        return [k.key_id for k in gone]

    def for_issuance(self, truncated_key_id: int) -> IssuerKey:
        """The current key if the request names it (draft: otherwise 422)."""
        if truncated_key_id != self.current.truncated_key_id:
            raise InvalidTokenRequest("truncated_token_key_id does not name the current issuer key")
        return self.current

    def for_redemption(self, key_id: bytes, now_ms: int) -> IssuerKey:
        for k in self.all():
            if hmac.compare_digest(k.key_id, key_id) and k.redeemable_at(now_ms):
                return k
        raise UnknownTokenKey("the token's key id names no issuer key accepted now")

    def to_bytes(self) -> bytes:
        return encode(_IssuerKeySet(self.current, self.previous))

    @classmethod
    def from_bytes(cls, data: bytes) -> "IssuerKeys":
        s = decode(_IssuerKeySet, data)
        return cls(s.current, s.previous)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IssuerKeys) and self.all() == other.all()


# --- issuance: client side ----------------------------------------------------

@dataclass(frozen=True)
class IssuanceState:
    """What the client keeps between its request and the issuer's answer."""
    public_key: bytes
    challenge_digest: bytes
    token_key_id: bytes
    nonces: tuple[bytes, ...]
    blinds: tuple[bytes, ...]
    blinded: tuple[bytes, ...]


def begin_issuance(public_key: bytes, challenge: TokenChallenge, n: int, *,
                   nonces: list[bytes] | None = None,
                   blinds: list[bytes] | None = None) -> tuple[IssuanceState, AmortizedBatchTokenRequest]:
    """Blind ``n`` fresh token inputs for the issuer key ``public_key``.

    Draft ``#client-to-issuer-request``: one fresh 32-byte nonce per token,
    ``token_input = token_type || nonce || SHA256(challenge) || token_key_id``.
    ``nonces`` and ``blinds`` are for replaying test vectors only.
    Raises :class:`InvalidTokenResponse` if ``public_key`` is not a valid
    element (it came from the issuer).
    """
    if n < 1:
        raise ValueError("a token request asks for at least one token")
    if challenge.token_type != TOKEN_TYPE:
        raise ValueError(f"challenge is for token type {challenge.token_type:#06x}, not {TOKEN_TYPE:#06x}")
    try:
        pk = voprf.deserialize_element(public_key)
    except voprf.DeserializeError as e:
        raise InvalidTokenResponse(f"issuer public key: {e}") from None
    nonces = list(nonces) if nonces is not None else [os.urandom(NONCE_LEN) for _ in range(n)]
    blinds = list(blinds) if blinds is not None else [voprf.random_scalar() for _ in range(n)]
    if len(nonces) != n or len(blinds) != n:
        raise ValueError("need exactly n nonces and n blinds")
    digest = challenge.digest()
    key_id = token_key_id(pk)
    blinded = []
    for nonce, blind in zip(nonces, blinds):
        _, element = _VOPRF.blind(_token_input(TOKEN_TYPE, nonce, digest, key_id), blind)
        blinded.append(element)
    state = IssuanceState(pk, digest, key_id, tuple(nonces), tuple(blinds), tuple(blinded))
    return state, AmortizedBatchTokenRequest(TOKEN_TYPE, key_id[-1], list(blinded))


def finalize(state: IssuanceState, response: AmortizedBatchTokenResponse) -> list[Token]:
    """Check the batched proof and build the tokens (draft ``#finalization``).

    Raises :class:`InvalidTokenResponse` if the answer has the wrong number
    of elements, an element that does not deserialize, or a proof that does
    not verify against ``state.public_key``.
    """
    if len(response.evaluated_msgs) != len(state.blinded):
        raise InvalidTokenResponse(
            f"{len(response.evaluated_msgs)} evaluated elements for {len(state.blinded)} requested")
    try:
        evaluated = [voprf.deserialize_element(e) for e in response.evaluated_msgs]
    except voprf.DeserializeError as e:
        raise InvalidTokenResponse(f"evaluated element: {e}") from None
    inputs = [_token_input(TOKEN_TYPE, n, state.challenge_digest, state.token_key_id) for n in state.nonces]
    try:
        outputs = _VOPRF.finalize_batch(inputs, list(state.blinds), evaluated, list(state.blinded),
                                        state.public_key, response.evaluated_proof)
    except voprf.VerifyError:
        raise InvalidTokenResponse("the issuer's batched DLEQ proof does not verify") from None
    return [Token(TOKEN_TYPE, nonce, state.challenge_digest, state.token_key_id, out)
            for nonce, out in zip(state.nonces, outputs)]


# --- issuance: issuer side ----------------------------------------------------

def check_token_request(request: AmortizedBatchTokenRequest, keys: IssuerKeys | IssuerKey, *,
                        max_batch: int = DEFAULT_MAX_BATCH) -> tuple[IssuerKey, list[bytes]]:
    """The issuer's validation (draft ``#issuer-to-client-response``).

    Returns the key to use and the deserialized blinded elements. Raises
    :class:`InvalidTokenRequest` (422) for an unsupported token type, a
    truncated key id that is not the current key's, an empty batch or one
    larger than ``max_batch``, or an element that does not deserialize.
    Callers that charge an allowance do so after this check, so that a
    broken request costs the client nothing.
    """
    if request.token_type != TOKEN_TYPE:
        raise InvalidTokenRequest(f"unsupported token type {request.token_type:#06x}")
    if isinstance(keys, IssuerKeys):
        key = keys.for_issuance(request.truncated_token_key_id)
    else:
        key = keys
        if request.truncated_token_key_id != key.truncated_key_id:
            raise InvalidTokenRequest("truncated_token_key_id does not name the issuer key")
    n = len(request.blinded_msgs)
    if not 1 <= n <= max_batch:
        raise InvalidTokenRequest(f"a request asks for 1..{max_batch} tokens, not {n}")
    try:
        elements = [voprf.deserialize_element(b) for b in request.blinded_msgs]
    except voprf.DeserializeError as e:
        raise InvalidTokenRequest(f"blinded element: {e}") from None
    return key, elements


def evaluate(key: IssuerKey, elements: list[bytes], r: bytes | None = None) -> AmortizedBatchTokenResponse:
    """BlindEvaluateBatch on what :func:`check_token_request` returned: every
    blinded element evaluated, one proof for all. ``r`` is the proof
    randomness, for tests only."""
    evaluated, proof = _VOPRF.blind_evaluate_batch(key.private_key, key.public_key, elements, r)
    return AmortizedBatchTokenResponse(evaluated, proof)


def issue(request: AmortizedBatchTokenRequest, keys: IssuerKeys | IssuerKey, *,
          max_batch: int = DEFAULT_MAX_BATCH, r: bytes | None = None) -> AmortizedBatchTokenResponse:
    """:func:`check_token_request`, then :func:`evaluate` (raises InvalidTokenRequest)."""
    key, elements = check_token_request(request, keys, max_batch=max_batch)
    return evaluate(key, elements, r)


# --- redemption ---------------------------------------------------------------------

class SpentTokenStore(Protocol):
    """Remembers redeemed tokens. ``mark_spent`` is one atomic insert-if-absent."""

    def mark_spent(self, spend_id: bytes, token_key_id: bytes) -> bool:
        """Record the token; ``False`` if it was already recorded."""

    def forget_key(self, token_key_id: bytes) -> int:
        """Drop the records of a key that no longer redeems; returns how many."""


class MemorySpentTokenStore:
    """In-memory :class:`SpentTokenStore` for tests (persistent one: ``privacy_pass_store``)."""

    def __init__(self) -> None:
        self.spent: dict[bytes, bytes] = {}

    def mark_spent(self, spend_id: bytes, token_key_id: bytes) -> bool:
        if spend_id in self.spent:
            return False
        self.spent[spend_id] = token_key_id
        return True

    def forget_key(self, token_key_id: bytes) -> int:
        gone = [s for s, k in self.spent.items() if k == token_key_id]
        for s in gone:
            del self.spent[s]
        return len(gone)


def spend_id(token: Token) -> bytes:
    """The double-spend key: ``SHA-256(token_key_id || nonce)``."""
    return hashlib.sha256(token.token_key_id + token.nonce).digest()


def verify(token: Token | bytes, keys: IssuerKeys, *, challenge: TokenChallenge, now_ms: int) -> Token:
    """Check a token without spending it; returns the decoded token or raises.

    Checks, in order: the token type (0x0005), that the token answers
    ``challenge``, that its key id names a key redeemable at ``now_ms``
    (:class:`UnknownTokenKey`), and that its authenticator equals
    ``Evaluate(skI, token_input)`` compared in constant time (RFC 9578 §5.4;
    :class:`InvalidToken`).
    """
    if not isinstance(token, Token):
        token = decode_token(token)
    if token.token_type != TOKEN_TYPE:
        raise InvalidToken(f"unsupported token type {token.token_type:#06x}")
    if not hmac.compare_digest(token.challenge_digest, challenge.digest()):
        raise InvalidToken("the token answers another challenge")
    key = keys.for_redemption(token.token_key_id, now_ms)
    expected = _VOPRF.evaluate(key.private_key, token.token_input())
    if not hmac.compare_digest(expected, token.authenticator):
        raise InvalidToken("the token's authenticator does not verify")
    return token


def spend(token: Token, spent: SpentTokenStore) -> None:
    """Record a verified token as redeemed, or raise :class:`TokenSpent`."""
    if not spent.mark_spent(spend_id(token), token.token_key_id):
        raise TokenSpent("the token was already redeemed")


def redeem(token: Token | bytes, keys: IssuerKeys, spent: SpentTokenStore, *,
           challenge: TokenChallenge, now_ms: int) -> None:
    """Accept a token once, or raise: :func:`verify`, then :func:`spend` (a
    double spend is :class:`TokenSpent`). Only a verified token reaches the
    spent store."""
    spend(verify(token, keys, challenge=challenge, now_ms=now_ms), spent)


# --- the PrivateToken HTTP authentication scheme (RFC 9577 §2) ----------------------

_MAX_HEADER = 4096
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def authorization_header(token: Token) -> str:
    """The ``Authorization`` value: ``PrivateToken token=<base64url>`` (unpadded)."""
    return f"PrivateToken token={_b64url(encode(token))}"


def www_authenticate_header(challenge: TokenChallenge, public_key: bytes) -> str:
    """A ``WWW-Authenticate`` value naming the challenge and key (RFC 9577 §2.1)."""
    return f'PrivateToken challenge="{_b64url(encode(challenge))}", token-key="{_b64url(public_key)}"'


def _parse_params(text: str) -> dict[str, str]:
    """``#auth-param`` (RFC 9110 §11.2): ``name=token`` or ``name="quoted"``."""
    params: dict[str, str] = {}
    pos, n = 0, len(text)
    name_re = re.compile(rf"[ \t]*({_TCHAR}+)[ \t]*=[ \t]*")
    token_re = re.compile(rf"{_TCHAR}+")
    quoted_re = re.compile(r'"((?:[^"\\]|\\.)*)"')
    while True:
        while pos < n and text[pos] in " \t,":
            pos += 1
        if pos >= n:
            return params
        m = name_re.match(text, pos)
        if not m:
            raise InvalidToken("malformed PrivateToken parameters")
        name = m.group(1).lower()
        pos = m.end()
        if pos < n and text[pos] == '"':
            q = quoted_re.match(text, pos)
            if not q:
                raise InvalidToken("unterminated quoted string")
            value = re.sub(r"\\(.)", r"\1", q.group(1))
            pos = q.end()
        else:
            t = token_re.match(text, pos)
            if not t:
                raise InvalidToken(f"parameter {name!r} has no value")
            value = t.group(0)
            pos = t.end()
        if name in params:
            raise InvalidToken(f"parameter {name!r} repeated")
        params[name] = value
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] != ",":
            raise InvalidToken("parameters must be separated by commas")


def parse_authorization(value: str | bytes | None) -> Token:
    """Parse an ``Authorization`` value into a :class:`Token`.

    Accepts the scheme name in any case, the ``token`` parameter as a token or
    quoted string, base64url with or without padding (RFC 9577 §2.2.2), and
    ignores unknown parameters. No header is :class:`MissingToken`; anything
    else that is not one canonical base64url Token is :class:`InvalidToken`.
    """
    if value is None or value == "" or value == b"":
        raise MissingToken("a PrivateToken Authorization header is required")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidToken("Authorization header is not ASCII") from None
    if not isinstance(value, str) or len(value) > _MAX_HEADER:
        raise InvalidToken("Authorization header too long")
    value = value.strip(" \t")
    scheme, _, rest = value.partition(" ")
    if scheme.lower() != "privatetoken":
        raise MissingToken("the Authorization header is not a PrivateToken credential")
    params = _parse_params(rest)
    if "token" not in params:
        raise InvalidToken("PrivateToken credential without a token parameter")
    b64 = params["token"]
    stripped = b64.rstrip("=")
    if not _B64URL.fullmatch(b64) or len(stripped) % 4 == 1 or (stripped != b64 and len(b64) % 4):
        raise InvalidToken("token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not base64url") from None
    if _b64url(raw) != stripped:
        raise InvalidToken("token is not canonical base64url")
    return decode_token(raw)


# --- issuance rate limits (spec/authentication_service.md#rate-limiting) ------------

@dataclass(frozen=True)
class IssuanceLimits:
    """The AS's issuance configuration (``spec/authentication_service.md#configuration``).

    ``time_frame_ms`` is the "anonymous token time-frame", ``client_allowance``
    the "default token allowance" per client in it. ``domain_allowance`` is
    the additional budget shared by all clients of one other homeserver
    (``#rate-limiting``: "per-homeserver (or per homeserver domain)").
    """
    time_frame_ms: int = 24 * 3600 * 1000
    client_allowance: int = 100
    domain_allowance: int = 10_000
    max_batch: int = DEFAULT_MAX_BATCH


@dataclass(frozen=True)
class AllowanceWindow:
    """Tokens issued to one subject in a window that ends at ``end_ms``."""
    end_ms: int
    issued: int


class CounterStore(Protocol):
    """Persistence of allowance windows, one per counter key (opaque bytes).

    ``update`` loads the windows of ``keys`` (``None`` where absent), calls
    ``fn`` with them and stores what it returns — all in one transaction; if
    ``fn`` raises, nothing is stored. ``delete`` drops the windows of
    ``keys``; ``purge`` drops every window that ended by ``now_ms``.
    """

    def update(self, keys: list[bytes],
               fn: Callable[[list[AllowanceWindow | None]], list[AllowanceWindow]]) -> None: ...

    def load(self, key: bytes) -> AllowanceWindow | None: ...

    def delete(self, keys: list[bytes]) -> None: ...

    def purge(self, now_ms: int) -> int: ...


class MemoryCounterStore:
    def __init__(self) -> None:
        self.windows: dict[bytes, AllowanceWindow] = {}

    def load(self, key: bytes) -> AllowanceWindow | None:
        return self.windows.get(key)

    def update(self, keys, fn) -> None:
        new = fn([self.windows.get(k) for k in keys])
        self.windows.update(zip(keys, new))

    def delete(self, keys: list[bytes]) -> None:
        for k in keys:
            self.windows.pop(k, None)

    def purge(self, now_ms: int) -> int:
        gone = [k for k, w in self.windows.items() if w.end_ms <= now_ms]
        self.delete(gone)
        return len(gone)


#: Windows end on a multiple of this fraction of the time frame (an hour for
#: the default day), so a stored end tells when within the frame a subject
#: first drew tokens only to that granularity.
WINDOW_GRANULES_PER_FRAME = 24


class IssuancePolicy:
    """Counts issued tokens per client and per remote domain (sans-IO).

    A window opens at a subject's first issuance and lasts ``time_frame_ms``,
    its end rounded up to a granule (:data:`WINDOW_GRANULES_PER_FRAME`);
    within it at most the allowance is issued, after it the count restarts
    (the spec's "amount of time which each client has to wait until it can
    obtain new anonymous authentication tokens"). A client of another
    homeserver is charged both its own allowance and its domain's.

    Metadata minimalism (``threat_model/stride/security_requirements.md#metadata-minimalism``,
    ``docs/storage.md, "Privacy Pass store"``): the store sees a counter key, an
    HMAC-SHA256 under ``counter_secret`` (kept in the keys directory) of the
    subject, never a client id or domain; windows are purged once they end
    (at each issuance and by :meth:`purge`), and :meth:`forget` drops a
    deleted client's window.
    """

    def __init__(self, limits: IssuanceLimits, store: CounterStore, local_domain: Any, counter_secret: bytes):
        if len(counter_secret) < 32:
            raise ValueError("the counter secret must have at least 32 bytes")
        self.limits = limits
        self.store = store
        self.local_domain = str(local_domain)
        self._secret = bytes(counter_secret)

    def counter_key(self, kind: str, name: Any) -> bytes:
        """The stored name of a subject: HMAC-SHA256(secret, kind ‖ 0x00 ‖ name)."""
        return hmac.new(self._secret, f"{kind}\0{name}".encode(), hashlib.sha256).digest()

    def _subjects(self, client_id: str, client_domain: str) -> list[tuple[bytes, int]]:
        subjects = [(self.counter_key("client", client_id), self.limits.client_allowance)]
        if str(client_domain) != self.local_domain:
            subjects.append((self.counter_key("domain", client_domain), self.limits.domain_allowance))
        return subjects

    def window_end(self, now_ms: int) -> int:
        """The end of a window opened at ``now_ms``: one time frame later,
        rounded up to a granule."""
        granule = max(1000, self.limits.time_frame_ms // WINDOW_GRANULES_PER_FRAME)
        return -(-(now_ms + self.limits.time_frame_ms) // granule) * granule

    def _current(self, w: AllowanceWindow | None, now_ms: int) -> AllowanceWindow:
        if w is None or now_ms >= w.end_ms:
            return AllowanceWindow(self.window_end(now_ms), 0)
        return w

    def consume(self, *, client_id: Any, client_domain: Any, n: int, now_ms: int) -> None:
        """Charge ``n`` tokens or raise; nothing is charged when it raises.

        :class:`InvalidTokenRequest` if ``n`` exceeds an allowance outright
        (waiting would not help); :class:`RateLimited` with ``retry_after``
        in seconds until the exhausted window ends. Windows that ended are
        purged first.
        """
        subjects = self._subjects(str(client_id), str(client_domain))
        for _, allowance in subjects:
            if n > allowance:
                raise InvalidTokenRequest(f"{n} tokens exceed the allowance of {allowance} per time frame")

        def charge(windows: list[AllowanceWindow | None]) -> list[AllowanceWindow]:
            current = [self._current(w, now_ms) for w in windows]
            waits = [w.end_ms - now_ms for w, (_, allowance) in zip(current, subjects) if w.issued + n > allowance]
            if waits:
                retry = max(1, -(-max(waits) // 1000))
                raise RateLimited("token allowance exhausted for this time frame", retry_after=retry)
            return [AllowanceWindow(w.end_ms, w.issued + n) for w in current]

        self.store.purge(now_ms)
        self.store.update([s for s, _ in subjects], charge)

    def remaining(self, *, client_id: Any, client_domain: Any, now_ms: int) -> int:
        """How many tokens the client could get now."""
        left = []
        for key, allowance in self._subjects(str(client_id), str(client_domain)):
            w = self._current(self.store.load(key), now_ms)
            left.append(max(0, allowance - w.issued))
        return min(left)

    def forget(self, client_id: Any) -> None:
        """Drop the window of a client whose entry was deleted (its domain's
        window, shared with other clients, stays)."""
        self.store.delete([self.counter_key("client", client_id)])

    def purge(self, now_ms: int) -> int:
        """Drop every window that ended; returns how many."""
        return self.store.purge(now_ms)
