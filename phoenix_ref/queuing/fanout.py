"""Fan-out helpers of the QS: sealed queue configs and splitting by domain.

* :func:`seal_queue_config` / :func:`open_sealed_queue_config` — the
  ``SealedQueueConfig`` of ``spec/glossary.md#sealed-queue-config``: HPKE
  (RFC 9180) in *auth* mode to the QS's QueueConfig encryption key
  (``spec/glossary.md#queueconfig-encryption-key``), plus a signature by the
  client record auth key (``spec/glossary.md#qs-client-record-auth-key``).
  The signature is how a sender proves it may deliver to the target client:
  only configs the client itself issued open and verify.
* :class:`SealedConfigCache` — the decryption of a sealed config is cached
  by the hash of its bytes (:func:`config_digest`), so that a busy group costs one set of HPKE
  operations per member, not per member per message
  (``spec/performance_goals.md``, homeserver computational overhead).
* :class:`ConfigLists` — a busy group's list of configs comes unchanged
  with every message: the QS remembers the lists it decoded (with their
  configs' digests) by their bytes, and the lists it encoded for another
  domain by their items, so a repeat is one lookup (same section).
* :func:`split_by_domain` — ``spec/queuing_service.md#local-enqueue-message``:
  the configs of the own domain stay, those of every other domain become one
  FanOutMessage per domain.
* :func:`group_id_of` — the group a fan-out message belongs to (blocklist,
  ``QueueDeleted``).

Layering of a sealed config (the decision is in
:mod:`phoenix_ref.queuing.messages`): HPKE auth mode needs the sender's
public key to open, and the QS learns which client sealed the config only by
opening it. So::

    config_key_id       = SHA-256(pkQS)
    sealed_sender       = SealBase(pkQS, info("SealedQueueConfig sender"), aad="", QsCid)
    sealed_queue_config = SealAuth(pkQS, info("SealedQueueConfig"),
                                   aad=encode(sealed_sender), QueueConfig, skS = queue decryption key)
    signature           = SignWithLabel(client record key, "SealedQueueConfig",
                                        config_key_id || encode(sealed_sender) || encode(sealed_queue_config))

(``info(l)`` is ``EncryptContext("Phoenix Homeserver Protocol 1.0 " + l, "")``,
the signature uses the homeserver prefix.) Opening reverses this: pick the
QS's private key by ``config_key_id`` among the keys the QS still publishes
(current and rotated-out ones, ``spec/glossary.md#queueconfig-encryption-key``;
an id it does not publish is refused without any HPKE operation), learn the
QsCid, fetch that client record, open with its queue encryption key as the
sender key, verify with its client record key, and check the QueueConfig
names the same QsCid.

Because both keys of the client record are bound into the sealed config,
replacing either key invalidates configs issued before; a client that
rotates them must hand fresh ClientQueueConfigs to its groups.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Mapping

from ..codec import U64, DecodeError, Reader, decode, decode_varint, encode, vec
from ..crypto import (
    HOMESERVER_PREFIX, CryptoError, EncryptContext, HPKECiphertext, HpkeKeyPair, SigningKey,
    hash_, hpke_open, hpke_seal, hs_sign, hs_verify,
)
from ..errors import Forbidden, Malformed
from ..ids import Fqdn, GroupId, QsCid
from ..lru import BoundedLru
from ..mls.messages import MLSMessage, WireFormat
from .messages import (
    MESSAGE_ID_LEN, ClientInactivityRemoval, ClientQueueConfig, FanOutMessage, QsToQsMessage, QueueConfig,
    QueueDeletionRemoval, SealedQueueConfig, WelcomeBundle,
)

__all__ = [
    "SEALED_CONFIG_LABEL", "SEALED_SENDER_LABEL", "seal_queue_config", "config_key_id", "OpenedQueueConfig",
    "InvalidQueueConfig", "peek_sender", "open_sealed_queue_config", "config_digest", "SealedConfigCache",
    "DigestedConfig", "CONFIG_LIST_CACHE_BYTES", "with_digests", "ConfigLists", "received_config_list",
    "payload_config_list",
    "split_by_domain", "group_id_of",
]

SEALED_CONFIG_LABEL = "SealedQueueConfig"
SEALED_SENDER_LABEL = "SealedQueueConfig sender"


class InvalidQueueConfig(Forbidden):
    """A sealed queue config does not open or verify: the sender is not
    authorised to deliver to that queue (403)."""
    code = "invalid_queue_config"


def _info(label: str) -> bytes:
    return encode(EncryptContext(HOMESERVER_PREFIX + label.encode(), b""))


def _signed_content(config_key_id: bytes, sealed_sender: HPKECiphertext,
                    sealed_queue_config: HPKECiphertext) -> bytes:
    return config_key_id + encode(sealed_sender) + encode(sealed_queue_config)


def config_key_id(public_key: bytes) -> bytes:
    """The id of a QueueConfig encryption key carried in a sealed config: SHA-256
    of the public key, as every QS/DS key id (:func:`phoenix_ref.federation.keys.key_id`)."""
    return hash_(public_key)


def seal_queue_config(qs_config_key: bytes, queue_config: QueueConfig, *,
                      queue_encryption_key: HpkeKeyPair, client_record_key: SigningKey) -> bytes:
    """Client side: the encoded SealedQueueConfig of ``queue_config``.

    ``qs_config_key`` is the QS's QueueConfig encryption key (public),
    ``queue_encryption_key`` the client's queue key pair (the HPKE auth-mode
    sender key) and ``client_record_key`` its client record signing key.
    Every call gives different bytes (fresh HPKE encapsulations), so configs
    handed to different groups cannot be linked by the DS.
    """
    qs_cid = queue_config.pseudonymous_client_id
    key_id = config_key_id(qs_config_key)
    enc, ct = hpke_seal(qs_config_key, _info(SEALED_SENDER_LABEL), b"", encode(qs_cid))
    sealed_sender = HPKECiphertext(enc, ct)
    enc2, ct2 = hpke_seal(qs_config_key, _info(SEALED_CONFIG_LABEL), encode(sealed_sender),
                          encode(queue_config), sender=queue_encryption_key)
    sealed_config = HPKECiphertext(enc2, ct2)
    signature = hs_sign(client_record_key, SEALED_CONFIG_LABEL, _signed_content(key_id, sealed_sender, sealed_config))
    return encode(SealedQueueConfig(key_id, sealed_sender, sealed_config, signature))


@dataclass(frozen=True)
class OpenedQueueConfig:
    """A verified QueueConfig, the client keys it was verified with and the
    id of the QS key it was sealed to."""
    queue_config: QueueConfig
    client_record_auth_key: bytes
    queue_encryption_key: bytes
    config_key_id: bytes

    @property
    def qs_cid(self) -> QsCid:
        return self.queue_config.pseudonymous_client_id

    @functools.cached_property
    def queue_id(self) -> bytes:
        """The encoded QsCid: the id of the client's queue and record in the
        stores (encoded once per cached config, not once per message)."""
        return encode(self.qs_cid)


def peek_sender(config_keys: Mapping[bytes, bytes], sealed_config: bytes) -> tuple[SealedQueueConfig, QsCid]:
    """First step of opening: decode, pick the QS private key named by the
    config's key id in ``config_keys`` (key id → private key of every key the
    QS publishes) and learn which QsCid claims the config. Raises
    :class:`InvalidQueueConfig`."""
    try:
        sealed = decode(SealedQueueConfig, sealed_config)
    except DecodeError as e:
        raise InvalidQueueConfig(f"sealed queue config does not decode: {e}") from None
    private_key = config_keys.get(sealed.config_key_id)
    if private_key is None:
        raise InvalidQueueConfig("sealed queue config names a queue config encryption key this QS does not publish",
                                 code="unknown_queue_config_key")
    try:
        raw = hpke_open(private_key, sealed.sealed_sender.kem_output, _info(SEALED_SENDER_LABEL),
                        b"", sealed.sealed_sender.ciphertext)
        return sealed, decode(QsCid, raw)
    except (DecodeError, CryptoError) as e:
        raise InvalidQueueConfig(f"sealed queue config does not open: {e}") from None


def open_sealed_queue_config(config_keys: Mapping[bytes, bytes], sealed_config: bytes,
                             client_keys: Callable[[QsCid], tuple[bytes, bytes] | None]) -> OpenedQueueConfig | QsCid:
    """Open and verify a sealed config (see the module docstring).

    ``config_keys`` maps the id (:func:`config_key_id`) of every QueueConfig
    encryption key the QS still publishes to its private key.
    ``client_keys(qs_cid)`` returns ``(client_record_auth_key,
    queue_encryption_key)`` of an existing client record, or None. Returns
    the :class:`OpenedQueueConfig`, or just the QsCid when no such record
    exists (the caller answers ``QueueDeleted``). Raises
    :class:`InvalidQueueConfig` when anything does not open or verify.
    """
    sealed, qs_cid = peek_sender(config_keys, sealed_config)
    keys = client_keys(qs_cid)
    if keys is None:
        return qs_cid
    auth_key, queue_key = keys
    try:
        hs_verify(auth_key, SEALED_CONFIG_LABEL,
                  _signed_content(sealed.config_key_id, sealed.sealed_sender, sealed.sealed_queue_config),
                  sealed.signature)
        raw = hpke_open(config_keys[sealed.config_key_id], sealed.sealed_queue_config.kem_output,
                        _info(SEALED_CONFIG_LABEL), encode(sealed.sealed_sender),
                        sealed.sealed_queue_config.ciphertext, sender_public=queue_key)
        config = decode(QueueConfig, raw)
    except (DecodeError, CryptoError) as e:
        raise InvalidQueueConfig(f"sealed queue config of {qs_cid} does not verify: {e}") from None
    if config.pseudonymous_client_id != qs_cid:
        raise InvalidQueueConfig("sealed queue config names two different clients")
    return OpenedQueueConfig(config, auth_key, queue_key, sealed.config_key_id)


class SealedConfigCache(BoundedLru[bytes, OpenedQueueConfig]):
    """:func:`config_digest` of a sealed config → :class:`OpenedQueueConfig`,
    at most ``max_entries``.

    A hit is only used while the client record still has the keys the config
    was verified with (a key rotation invalidates it) and while the QS still
    publishes the key it was sealed to (:class:`~.core.QsCore` checks both).
    """

    def __init__(self, max_entries: int = 100_000):
        super().__init__(max_entries)


def config_digest(sealed_config: bytes) -> bytes:
    """``Hash(sealed_config)``: the key of a sealed config in the QS's cache
    of opened configs and in its per-config rate limit (``#rate-limiting``)."""
    return hash_(sealed_config)


#: A config of a fan-out with its :func:`config_digest`.
DigestedConfig = tuple[ClientQueueConfig, bytes]

#: Bytes of encoded config lists :class:`ConfigLists` keeps in each direction
#: (about 50 000 configs).
CONFIG_LIST_CACHE_BYTES = 8 << 20

_CONFIG_LIST = vec(ClientQueueConfig)


def with_digests(configs: list[ClientQueueConfig]) -> list[DigestedConfig]:
    """Each config with its :func:`config_digest`."""
    return [(cqc, config_digest(cqc.sealed_config)) for cqc in configs]


class ConfigLists:
    """The config lists of fan-outs the QS decoded and encoded, each direction
    up to ``max_bytes`` of encodings, least recently used out.

    Decoding and encoding are functions of their input (decoding is strict;
    configs are immutable, so equal lists encode equally), so a remembered
    result is what computing it again would give. Only lists that decoded
    are kept."""

    def __init__(self, max_bytes: int = CONFIG_LIST_CACHE_BYTES):
        self._decoded: BoundedLru[bytes, tuple[DigestedConfig, ...]] = BoundedLru(max_bytes)
        self._encoded: BoundedLru[tuple[ClientQueueConfig, ...], bytes] = BoundedLru(max_bytes)

    def decode(self, encoded: bytes) -> list[DigestedConfig]:
        """The configs of an encoded ``ClientQueueConfig client_queue_configs<V>``
        (length prefix included), each with its digest. Raises DecodeError."""
        hit = self._decoded.get(encoded)
        if hit is None:
            hit = tuple(with_digests(decode(_CONFIG_LIST, encoded)))
            self._decoded.put(encoded, hit, len(encoded))
        return list(hit)

    def encode_fan_out(self, configs: list[ClientQueueConfig], content: bytes) -> bytes:
        """``encode(FanOutMessage(configs, c))`` where ``content`` is
        ``encode(c, MessageContent)``: a struct encodes as its fields in
        order, the list (remembered) and then the content."""
        items = tuple(configs)
        encoded = self._encoded.get(items)
        if encoded is None:
            encoded = encode(list(items), _CONFIG_LIST)
            self._encoded.put(items, encoded, len(encoded))
        return encoded + content


def received_config_list(received: bytes, message: QsToQsMessage) -> bytes:
    """The encoded ``payload.client_queue_configs`` (length prefix included)
    inside ``received``, the bytes ``message`` was strictly decoded from
    (so they are its canonical encoding): a struct encodes as its fields in
    order, and the list follows the source, destination, timestamp and
    message id."""
    start = (len(encode(message.source)) + len(encode(message.destination))
             + len(encode(message.timestamp, U64)) + MESSAGE_ID_LEN)
    r = Reader(received, start)
    length = decode_varint(r)
    return received[start:r.pos + length]


def payload_config_list(payload: bytes) -> bytes:
    """The encoded ``client_queue_configs`` (length prefix included) at the
    start of ``payload``, an encoded FanOutMessage that strictly decoded
    (its first field is that list)."""
    r = Reader(payload, 0)
    length = decode_varint(r)
    return payload[:r.pos + length]


def split_by_domain(message: FanOutMessage) -> dict[Fqdn, FanOutMessage]:
    """One FanOutMessage per client homeserver domain, configs in their
    original order (``#local-enqueue-message``)."""
    groups: dict[Fqdn, list[ClientQueueConfig]] = {}
    for cqc in message.client_queue_configs:
        groups.setdefault(cqc.client_homeserver_domain, []).append(cqc)
    return {domain: FanOutMessage(configs, message.message_content) for domain, configs in groups.items()}


def group_id_of(message: FanOutMessage) -> GroupId:
    """The Phoenix GroupId of the group the message belongs to: the WelcomeBundle's
    ``group_id``, or the MLS ``group_id`` of the PublicMessages/PrivateMessages
    it carries (RFC 9420 §6) parsed as a GroupId; a DS removal message
    carries one or more proposals, all of one group. Raises :class:`Malformed`
    otherwise."""
    content = message.message_content
    if isinstance(content, WelcomeBundle):
        return content.group_id
    if isinstance(content, (ClientInactivityRemoval, QueueDeletionRemoval)):
        ids = {_mls_group_id(m, type(content).__name__) for m in content.proposals}
        if len(ids) != 1:
            raise Malformed(f"a {type(content).__name__} must carry proposals of exactly one group",
                            code="bad_fan_out_content")
        raw = ids.pop()
    else:
        raw = _mls_group_id(content.message, type(content).__name__)
    try:
        return GroupId.from_mls(raw)
    except DecodeError as e:
        raise Malformed(f"MLS group_id is not a Phoenix GroupId: {e}", code="bad_group_id") from None


def _mls_group_id(mls: MLSMessage, what: str) -> bytes:
    if mls.wire_format == WireFormat.mls_public_message:
        return bytes(mls.public_message.content.group_id)
    if mls.wire_format == WireFormat.mls_private_message:
        return bytes(mls.private_message.group_id)
    raise Malformed(f"a fan-out {what} must be a PublicMessage or PrivateMessage", code="bad_fan_out_content")
