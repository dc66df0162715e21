"""At-rest encryption of queued messages: the queue encryption ratchet.

Implements ``spec/queuing_service/queue_encryption.md`` for both kinds of
queue that use it: the QS fan-out queues (``spec/queuing_service.md#qs-state``)
and the AS direct queues (``spec/authentication_service.md#as-state``).

The service (QS or AS) keeps, per queue, a :class:`QueueKeyMaterial`: the
owner's HPKE *queue encryption key* (public only) and a symmetric *ratchet
key*. Every message the service stores is one of three kinds, tagged with
the queue's current sequence number (:class:`QueueMessage`):

``RatchetedMessage`` (``#key-ratcheting``)
    The ratchet key ``R`` for sequence number ``s`` yields, under distinct
    labels, a message key + nonce and the next ratchet key::

        key   = QueueExpand(R, "message key",   uint64(s), Nk)
        nonce = QueueExpand(R, "message nonce", uint64(s), Nn)
        R'    = QueueExpand(R, "next ratchet key", uint64(s), Nh)

    The payload is AES-128-GCM(key, nonce, aad = uint64(s), plaintext); ``R``
    is replaced by ``R'`` and forgotten.

``RatchetKeyUpdate`` (``#key-updates``)
    The service injects fresh randomness ``F`` (Nh bytes)::

        rotation = QueueExpand(R, "rotation key", uint64(s), Nh)
        R'       = QueueExpand(HKDF-Extract(salt=rotation, ikm=F),
                               "updated ratchet key", uint64(s), Nh)

    and stores ``F`` HPKE-encrypted to the queue encryption key.

``RatchetKeyReset``
    A whole new ratchet key, HPKE-encrypted to the queue encryption key. This
    is how the QS hands the owner the initial ratchet key it sampled
    (``#key-ratcheting``: "encrypts another copy under the queue encryption
    key … enqueued like regular messages"), and how an owner-chosen ratchet
    key takes effect at a well-defined point of the queue.

``QueueExpand(secret, label, context, length)`` is RFC 9420 §8's
ExpandWithLabel with the prefix ``"Phoenix Homeserver Protocol 1.0 queue "``
instead of ``"MLS 1.0 "``; HPKE uses the info ``EncryptContext(
"Phoenix Homeserver Protocol 1.0 queue " + label, uint64(s))`` (RFC 9420
§5.1.3 shape) with the labels ``"ratchet key update"`` and ``"ratchet key
reset"``. The distinct prefix keeps every derived key apart from MLS keys and
from other homeserver derivations; binding ``s`` into every key and into the
AEAD data means a stored ciphertext cannot be moved to another position.

Forward secrecy at rest (the spec's goal, ``#key-ratcheting``): the service
only ever holds the *current* ratchet key, and each ratchet step and update
is a one-way function of it, so whoever reads the service's state later
learns nothing about message keys of messages stored before. Stored update
and reset messages are encrypted to the owner's HPKE key, whose private half
the service never has. Post-compromise security (``#key-updates``) comes from
updates: after an update with randomness the attacker did not see, the
ratchet is again unknown to them. Setting a new queue encryption key
(:func:`set_queue_encryption_key`) performs such an update right away under
the *new* key, so an owner that replaces a leaked HPKE key also heals the
ratchet.

The owner mirrors the service with a :class:`QueueRatchetState` and
:func:`decrypt_queue_message`, processing messages strictly in sequence order
(every message, of any kind, advances ``generation`` by one).

Everything here is sans-IO: functions take and return immutable values.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence

from .codec import U8, U64, DecodeError, VarBytes, decode, encode, encode_varint, optional, struct, variant
from .crypto import (
    HOMESERVER_PREFIX, NH, NK, NN, CryptoError, EncryptContext, HPKECiphertext, KDFLabel,
    aead_open, aead_seal, check_hpke_public_key, hmac_, hpke_open, hpke_seal, kdf_expand, kdf_extract,
)
from .errors import Malformed

__all__ = [
    "QUEUE_LABEL_PREFIX", "RATCHET_KEY_LEN", "QueueKeyMaterial", "QueueRatchetState",
    "QueueMessage", "RatchetedMessage", "RatchetKeyUpdate", "RatchetKeyReset",
    "QueueDecryptError", "queue_expand", "new_queue", "queue_from_ratchet_key",
    "encrypt_for_queue", "rotate_ratchet_key", "set_ratchet_key", "set_queue_encryption_key",
    "rotation_due", "encode_queue_message", "decrypt_queue_message", "read_queue_messages", "decode_queue_message", "check_ratchet_key",
    "check_queue_encryption_key",
]

QUEUE_LABEL_PREFIX = HOMESERVER_PREFIX + b"queue "
RATCHET_KEY_LEN = NH  # a RatchetKey is Nh = 32 bytes
HPKE_PUBLIC_KEY_LEN = 32  # X25519
_UINT64_CONTEXT_LEN = encode_varint(8)  # the length prefix of an 8-byte opaque<V> context

# Labels (docs: module docstring). Each derivation has its own label.
LABEL_MESSAGE_KEY = b"message key"
LABEL_MESSAGE_NONCE = b"message nonce"
LABEL_NEXT_RATCHET_KEY = b"next ratchet key"
LABEL_ROTATION_KEY = b"rotation key"
LABEL_UPDATED_RATCHET_KEY = b"updated ratchet key"
HPKE_LABEL_UPDATE = b"ratchet key update"
HPKE_LABEL_RESET = b"ratchet key reset"


class QueueDecryptError(CryptoError):
    """The owner could not process a queue message: wrong order, a gap, a
    missing ratchet key, or a ciphertext that does not decrypt."""


# --- wire and state structs --------------------------------------------------

@struct
class RatchetedMessage:
    """A message encrypted under the ratchet's message key (``#key-ratcheting``)."""
    ciphertext: VarBytes


@struct
class RatchetKeyUpdate:
    """Fresh randomness for a ratchet key update, HPKE-sealed (``#key-updates``)."""
    encrypted_randomness: HPKECiphertext


@struct
class RatchetKeyReset:
    """A complete new ratchet key, HPKE-sealed (initial key or owner-chosen key)."""
    encrypted_ratchet_key: HPKECiphertext


@struct
class QueueMessage:
    """One stored queue entry, as returned by the dequeue endpoints.

    ``payload`` is ``select (QueueMessageType)``: 1 ratcheted message,
    2 ratchet key update, 3 ratchet key reset.
    """
    sequence_number: U64
    payload: variant(U8, {1: RatchetedMessage, 2: RatchetKeyUpdate, 3: RatchetKeyReset},
                     "QueueMessagePayload")


@struct
class QueueKeyMaterial:
    """The service's per-queue key material (``#qs-state``, ``#as-state``).

    ``ratchet_key`` encrypts the message with sequence number ``generation``;
    the two advance together. ``rotated_at_ms`` is when fresh randomness last
    entered the ratchet (for the rotation interval of
    ``spec/queuing_service.md#qs-configuration-options``). Encoded with the
    codec for storage.
    """
    queue_encryption_key: VarBytes
    ratchet_key: VarBytes
    generation: U64
    rotated_at_ms: U64


@struct
class QueueRatchetState:
    """The owner's mirror of the ratchet: the key for sequence number
    ``generation`` (absent until the QS's initial reset message is read)."""
    ratchet_key: optional(VarBytes)
    generation: U64


# --- derivations ----------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _kdf_label_head(label: bytes, length: int) -> bytes:
    """The encoded ``KDFLabel`` (RFC 9420 §8) up to its context: ``uint16
    length`` and ``opaque label<V>`` with the queue prefix. Struct fields are
    simply concatenated, so the full KDFLabel is this head followed by the
    encoded context; the head depends only on the label and the length."""
    return encode(KDFLabel(length, QUEUE_LABEL_PREFIX + label, b""))[:-len(encode_varint(0))]


def queue_expand(secret: bytes, label: bytes, sequence_number: int, length: int) -> bytes:
    """ExpandWithLabel (RFC 9420 §8) with the queue prefix and a uint64 context:
    ``KDFLabel{length, prefix + label, uint64(sequence_number)}`` as info (its
    constant head is encoded once per label, :func:`_kdf_label_head`)."""
    info = _kdf_label_head(label, length) + _UINT64_CONTEXT_LEN + sequence_number.to_bytes(8, "big")
    if length <= NH:   # HKDF-Expand (RFC 5869 §2.3) of at most HashLen bytes is T(1) alone
        return hmac_(secret, info + b"\x01")[:length]
    return kdf_expand(secret, info, length)


def _hpke_info(label: bytes, sequence_number: int) -> bytes:
    return encode(EncryptContext(QUEUE_LABEL_PREFIX + label, sequence_number.to_bytes(8, "big")))


def _aad(sequence_number: int) -> bytes:
    return sequence_number.to_bytes(8, "big")


def _message_keys(ratchet_key: bytes, seq: int) -> tuple[bytes, bytes, bytes]:
    """(message key, nonce, next ratchet key) for sequence number ``seq``."""
    return (queue_expand(ratchet_key, LABEL_MESSAGE_KEY, seq, NK),
            queue_expand(ratchet_key, LABEL_MESSAGE_NONCE, seq, NN),
            queue_expand(ratchet_key, LABEL_NEXT_RATCHET_KEY, seq, NH))


def _updated_key(ratchet_key: bytes, seq: int, randomness: bytes) -> bytes:
    """``#key-updates``: rotation key from the ratchet key, then mix in ``randomness``."""
    rotation = queue_expand(ratchet_key, LABEL_ROTATION_KEY, seq, NH)
    return queue_expand(kdf_extract(rotation, randomness), LABEL_UPDATED_RATCHET_KEY, seq, NH)


# --- input checks (request fields from clients) -----------------------------------

def check_ratchet_key(key: bytes) -> bytes:
    """A RatchetKey from a request (e.g. ``initial_queue_ratchet_key``) must be Nh bytes."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != RATCHET_KEY_LEN:
        raise Malformed(f"ratchet key must be {RATCHET_KEY_LEN} bytes", code="bad_ratchet_key")
    return bytes(key)


def check_queue_encryption_key(public_key: bytes) -> bytes:
    """A queue encryption key must be an X25519 HPKE public key (32 bytes)
    the service can seal key updates to (not a low-order point), else 400."""
    try:
        return check_hpke_public_key(public_key)
    except CryptoError:
        raise Malformed("queue encryption key must be a 32-byte X25519 public key of full order",
                        code="bad_queue_encryption_key") from None


def _check_seq(material: QueueKeyMaterial, seq: int) -> None:
    # The queue's sequence counter and the ratchet generation move together;
    # a mismatch means the caller's storage is inconsistent, not bad input.
    if seq != material.generation:
        raise ValueError(f"sequence number {seq} != ratchet generation {material.generation}")


# --- service side -------------------------------------------------------------------

def new_queue(queue_encryption_key: bytes, now_ms: int, first_sequence_number: int = 0,
              *, ratchet_key: bytes | None = None) -> tuple[QueueMessage, QueueKeyMaterial]:
    """QS queue creation (``#key-ratcheting``): sample the initial ratchet key,
    keep it, and return a reset message carrying a sealed copy for the owner.

    The message takes ``first_sequence_number``; the returned material is
    ready for the next one. ``ratchet_key`` is only for tests.
    """
    pk = check_queue_encryption_key(queue_encryption_key)
    key = check_ratchet_key(ratchet_key if ratchet_key is not None else os.urandom(RATCHET_KEY_LEN))
    placeholder = QueueKeyMaterial(pk, bytes(RATCHET_KEY_LEN), first_sequence_number, now_ms)
    return set_ratchet_key(placeholder, first_sequence_number, key, now_ms)


def queue_from_ratchet_key(queue_encryption_key: bytes, initial_ratchet_key: bytes, now_ms: int,
                           first_sequence_number: int = 0) -> QueueKeyMaterial:
    """AS direct queue creation: the owner supplied ``initial_queue_ratchet_key``
    (``spec/authentication_service.md#finish-user-registration``,
    ``#register-alias``), so no message is needed to tell it the key."""
    return QueueKeyMaterial(check_queue_encryption_key(queue_encryption_key),
                            check_ratchet_key(initial_ratchet_key), first_sequence_number, now_ms)


def encrypt_for_queue(material: QueueKeyMaterial, seq: int,
                      plaintext: bytes) -> tuple[QueueMessage, QueueKeyMaterial]:
    """Encrypt one message for sequence number ``seq`` and step the ratchet.

    Returns the message to store and the material to store in place of the
    old one (the caller must overwrite it: that deletion is what gives forward
    secrecy, ``#key-ratcheting``).
    """
    _check_seq(material, seq)
    key, nonce, next_key = _message_keys(material.ratchet_key, seq)
    ct = aead_seal(key, nonce, _aad(seq), plaintext)
    new = QueueKeyMaterial(material.queue_encryption_key, next_key, seq + 1, material.rotated_at_ms)
    return QueueMessage(seq, RatchetedMessage(ct)), new


def encode_queue_message(msg: QueueMessage) -> bytes:
    """``encode(msg)``, written out for the ratcheted message a fan-out stores
    once per queue: ``uint64 sequence_number``, the ``uint8`` tag 1 and the
    ciphertext as ``opaque<V>`` (the struct's fields in order). Other
    payloads go through the codec."""
    if isinstance(msg.payload, RatchetedMessage):
        ct = msg.payload.ciphertext
        return msg.sequence_number.to_bytes(8, "big") + b"\x01" + encode_varint(len(ct)) + ct
    return encode(msg)


def rotate_ratchet_key(material: QueueKeyMaterial, seq: int, now_ms: int,
                       *, randomness: bytes | None = None) -> tuple[QueueMessage, QueueKeyMaterial]:
    """Ratchet key update (``#key-updates``): inject fresh randomness, seal it
    to the queue encryption key, and return the update message for ``seq``.
    ``randomness`` is only for tests."""
    _check_seq(material, seq)
    fresh = randomness if randomness is not None else os.urandom(NH)
    enc, ct = hpke_seal(material.queue_encryption_key, _hpke_info(HPKE_LABEL_UPDATE, seq), _aad(seq), fresh)
    new = dataclasses.replace(material, ratchet_key=_updated_key(material.ratchet_key, seq, fresh),
                              generation=seq + 1, rotated_at_ms=now_ms)
    return QueueMessage(seq, RatchetKeyUpdate(HPKECiphertext(enc, ct))), new


def set_ratchet_key(material: QueueKeyMaterial, seq: int, new_ratchet_key: bytes,
                    now_ms: int) -> tuple[QueueMessage, QueueKeyMaterial]:
    """Replace the ratchet key with ``new_ratchet_key`` from sequence number
    ``seq`` on; the returned reset message (sealed to the queue encryption key)
    marks the switch in the queue so the owner knows where it happens."""
    _check_seq(material, seq)
    key = check_ratchet_key(new_ratchet_key)
    enc, ct = hpke_seal(material.queue_encryption_key, _hpke_info(HPKE_LABEL_RESET, seq), _aad(seq), key)
    new = dataclasses.replace(material, ratchet_key=key, generation=seq + 1, rotated_at_ms=now_ms)
    return QueueMessage(seq, RatchetKeyReset(HPKECiphertext(enc, ct))), new


def set_queue_encryption_key(material: QueueKeyMaterial, seq: int, new_public_key: bytes,
                             now_ms: int) -> tuple[QueueMessage, QueueKeyMaterial]:
    """The owner rotates its queue encryption key. The service switches to the
    new key and immediately updates the ratchet under it, so a ratchet known to
    whoever held the old private key is healed at once (decision, ``#key-updates``)."""
    pk = check_queue_encryption_key(new_public_key)
    return rotate_ratchet_key(dataclasses.replace(material, queue_encryption_key=pk), seq, now_ms)


def rotation_due(material: QueueKeyMaterial, now_ms: int, interval_ms: int | None) -> bool:
    """True when the configured rotation interval has passed since fresh
    randomness last entered the ratchet (``spec/queuing_service.md#qs-configuration-options``).
    ``None`` disables periodic rotation."""
    return interval_ms is not None and now_ms - material.rotated_at_ms >= interval_ms


# --- owner side ------------------------------------------------------------------------

def decode_queue_message(data: bytes) -> QueueMessage:
    """Strictly decode a stored/returned queue message; bad bytes → Malformed."""
    try:
        return decode(QueueMessage, data)
    except DecodeError as e:
        raise Malformed(f"bad QueueMessage: {e}") from None


def _hpke_open_any(private_keys: Sequence[bytes], label: bytes, seq: int, sealed: HPKECiphertext) -> bytes:
    info = _hpke_info(label, seq)
    for sk in private_keys:
        try:
            return hpke_open(sk, sealed.kem_output, info, _aad(seq), sealed.ciphertext)
        except CryptoError:
            continue
    raise QueueDecryptError(f"queue message {seq}: no queue decryption key opens it")


def decrypt_queue_message(private_key: bytes | Sequence[bytes], state: QueueRatchetState,
                          msg: QueueMessage) -> tuple[bytes | None, QueueRatchetState]:
    """Owner side of ``#key-ratcheting`` / ``#key-updates``: process ``msg``.

    ``private_key`` is the queue decryption key, or several (newest first)
    while messages sealed to a replaced key may still be in the queue.
    Messages must come strictly in order: ``msg.sequence_number`` must equal
    ``state.generation``. Returns the plaintext (``None`` for update and reset
    messages, which carry no application data) and the next state; the caller
    replaces its state (and so forgets the old ratchet key).

    Raises :class:`QueueDecryptError` for an out-of-order message, a gap,
    a ratcheted message before any ratchet key is known, or failed decryption.
    """
    keys = [private_key] if isinstance(private_key, (bytes, bytearray)) else list(private_key)
    seq = msg.sequence_number
    if seq < state.generation:
        raise QueueDecryptError(f"queue message {seq} was already processed (expected {state.generation})")
    if seq > state.generation:
        raise QueueDecryptError(f"queue messages {state.generation}..{seq - 1} are missing")
    payload = msg.payload
    if isinstance(payload, RatchetKeyReset):
        key = _hpke_open_any(keys, HPKE_LABEL_RESET, seq, payload.encrypted_ratchet_key)
        if len(key) != RATCHET_KEY_LEN:
            raise QueueDecryptError(f"queue message {seq}: reset carries a {len(key)}-byte key")
        return None, QueueRatchetState(key, seq + 1)
    if state.ratchet_key is None:
        raise QueueDecryptError(f"queue message {seq}: no ratchet key yet (initial reset message missing)")
    if isinstance(payload, RatchetKeyUpdate):
        fresh = _hpke_open_any(keys, HPKE_LABEL_UPDATE, seq, payload.encrypted_randomness)
        return None, QueueRatchetState(_updated_key(state.ratchet_key, seq, fresh), seq + 1)
    key, nonce, next_key = _message_keys(state.ratchet_key, seq)
    try:
        plaintext = aead_open(key, nonce, _aad(seq), payload.ciphertext)
    except CryptoError:
        raise QueueDecryptError(f"queue message {seq}: decryption failed") from None
    return plaintext, QueueRatchetState(next_key, seq + 1)


def read_queue_messages(private_key: bytes | Sequence[bytes], state: QueueRatchetState,
                        messages: Iterable[QueueMessage]) -> tuple[list[bytes], QueueRatchetState]:
    """Owner side of a dequeue (QS client queues and AS direct queues alike):
    process dequeued ``messages`` in order with :func:`decrypt_queue_message`.

    Messages below ``state.generation`` were processed by an earlier read
    (a dequeue answer may repeat them, ``spec/queuing_service.md#dequeue-messages``)
    and are skipped. Returns the application plaintexts (update and reset
    messages carry none) and the state after the last message. Nothing is
    returned on :class:`QueueDecryptError`, so the caller keeps its old state
    and reads the same messages again (they stay queued until a later dequeue
    starts past them).
    """
    out = []
    for msg in messages:
        if msg.sequence_number < state.generation:
            continue
        plain, state = decrypt_queue_message(private_key, state, msg)
        if plain is not None:
            out.append(plain)
    return out, state
