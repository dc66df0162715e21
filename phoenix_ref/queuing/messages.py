"""Wire structs of the Queuing Service (``spec/queuing_service.md``).

Struct and field names follow the spec so that a reader can search for them.

* Client endpoints (``#client-endpoints``): ``CreateUserRecordParams`` /
  ``CreateUserRecordResponse``, ``UpdateUserRecordParams``,
  ``UserRecordParams`` / ``UserRecordResponse``, ``DeleteUserRecordParams``,
  ``PublishKeyPackagesParams``, ``AddPackageParams`` / ``AddPackageResponse``,
  ``DequeueMessagesParams``, ``WsParams``.
* Client records (decision, see below): ``CreateClientRecordParams`` /
  ``CreateClientRecordResponse``, ``UpdateClientRecordParams``,
  ``DeleteClientRecordParams``, and ``BlockGroupParams`` for the blocklist.
* Fan-out (``spec/glossary.md#fan-out-message``): ``MessageContent``,
  ``FanOutMessage``, ``WelcomeBundle`` (``spec/glossary.md#welcomebundle``),
  ``QueueDeleted`` (``#enqueuing-messages``).
* Queue configs (``spec/glossary.md#sealed-queue-config``):
  ``ClientQueueConfig``, ``QueueConfig``, ``SealedQueueConfig``.
* Request envelopes ``…Request {auth: QsAuthToken, params: …Params}`` for
  every endpoint authenticated by a QsAuthToken (``#authentication``; the
  token travels in the body, before the params — :mod:`phoenix_ref.auth_tokens`).
  ``CreateUserRecordParams`` and ``AddPackageParams`` travel alone (no token).
  ``DequeueMessagesResponse`` is :class:`phoenix_ref.queues.DequeueMessagesResponse`.
* Federation (``#federated-qs-to-qs-communication``): ``QsToQsMessage`` and
  ``FederatedEnqueueResponse``; several messages of one source for one
  destination in one request: ``QsToQsBatch`` (entries ``QsToQsBatchEntry``)
  and ``FederatedEnqueueBatchResponse`` (a ``BatchEntryResult`` per entry).
* ``AddPackage`` (``spec/glossary.md#addpackage``).
* Key distribution (``spec/federation/use_cases.md#authentication-key-distribution``):
  ``QsVerifyingKeyResponse`` (``#fetch-qs-verifying-key``) and
  ``QsQueueConfigEncryptionKeyResponse`` (``#fetch-queue-config-encryption-key``),
  each a list of public keys, current first (docs/decisions.md).
* Websocket (``#negotiate-websocket-connection``): ``QsWsMessage``, what the
  QS sends on an open websocket — ``WsConnected`` once the connection is
  authenticated and watching the queue, then ``WsQueueUpdate`` whenever
  messages land in it.

Choices where the spec is silent (docs/decisions.md):

* **Client record endpoints.** The spec lists no endpoint to add, change or
  remove a single QS client record, yet bounds the number of client records
  per user (``#qs-configuration-options``), lets the client record key
  "change the queue configuration such as the authentication keys, or add
  entries to the block list" (``#qs-state``) and says a user record goes with
  its last client record (``#user-record-management-endpoints``). phoenix_ref
  adds ``CreateClientRecord`` (authenticated by the QsUid), and
  ``UpdateClientRecord``, ``DeleteClientRecord`` and ``BlockGroup``
  (authenticated by the QsCid).
* **Responses the spec does not spell out**: ``ClientRecordResponse``,
  ``DequeueMessagesResponse`` (the messages and how many remain) and
  ``FederatedEnqueueResponse`` (the ``QueueDeleted`` answers).
* **ClientQueueConfig.sealed_config** travels as ``opaque<V>`` holding an
  encoded ``SealedQueueConfig`` — the same bytes as
  :class:`phoenix_ref.mls.extensions.ClientQueueConfig` in the KeyPackage
  extension, so a DS copies the extension's value as is; the QS decodes it
  only when it opens it.
* **SealedQueueConfig** (``spec/glossary.md#sealed-queue-config``: HPKE in
  *auth* mode, and signed with the client record key). HPKE auth mode needs
  the sender's public key *before* opening, but the QS can only learn whose
  config it is by opening it. So the config is sealed in two layers: a
  base-mode ``sealed_sender`` that tells only the QS which QsCid sealed it,
  and an auth-mode ``sealed_queue_config`` whose sender key is that client's
  queue encryption key, both signed together with the client record auth
  key (see :mod:`phoenix_ref.queuing.fanout`). A ``config_key_id`` in front
  names the QS key it is sealed to, so configs sealed to a rotated-out key
  the QS still publishes keep working.
* **QsToQsMessage** carries two fields beyond the spec's: ``timestamp``
  (uint64 ms, checked against the maximal age of
  ``#qs-configuration-options``) and a random 16-byte ``message_id`` that the
  receiver remembers for that age to drop replays; both are signed. The
  signature is ``SignWithLabel(QS signing key, "QsToQsMessage", QsToQsMessageTBS)``
  with the homeserver prefix (``crypto.hs_sign``).
* **MessageContent** tag: ``uint8``, 1 Commit, 2 Application, 3 WelcomeBundle.
* **Websocket framing.** The handshake is a plain websocket upgrade (RFC 6455)
  of ``GET /phoenix/v1/websocket`` on ``qs.<domain>``; the client's first
  (binary) message is the encoded ``WsRequest``. The QS answers with the
  binary ``QsWsMessage`` ``WsConnected`` and from then on sends
  ``WsQueueUpdate`` where it would otherwise send a push notification. A
  refusal closes the socket with code ``4000 + HTTP status`` (e.g. 4401) and
  the error code as the reason. Notifications carry no content: the client
  dequeues (``#dequeue-messages``).
* **AddPackageResponse** is signed by the QS (``spec/glossary.md#qs-signing-key``:
  "sign KeyPackage bundles before returning them"), label ``"AddPackageResponse"``,
  over the friendship token and the AddPackages.
"""

from __future__ import annotations

from ..auth_tokens import QsAuthToken
from ..codec import (U8, U16, U32, U64, String, VarBytes, decode, encode, encode_varint, fixed, keep_encoding, optional,
                     struct, variant, vec)
from ..crypto import HPKECiphertext
from ..ids import Fqdn, GroupId, QsCid, QsUid
from ..mls.messages import KeyPackage, MLSMessage, Welcome
from ..queues import DequeueMessagesResponse

__all__ = [
    "SignaturePublicKey", "HpkePublicKey", "FriendshipToken", "MESSAGE_ID_LEN",
    "QueueConfig", "SealedQueueConfig", "ClientQueueConfig",
    "CommitContent", "ApplicationContent", "WelcomeBundle", "MessageContent", "FanOutMessage",
    "QueueDeleted", "QsToQsMessageTBS", "QsToQsMessage", "encode_qs_to_qs_tbs", "received_qs_to_qs_tbs", "FederatedEnqueueResponse",
    "MAX_BATCH_MESSAGES", "QsToQsBatchEntry", "QsToQsBatchTBS", "QsToQsBatch", "BatchAccepted", "BatchRefused",
    "BatchEntryResult", "FederatedEnqueueBatchResponse", "encode_qs_to_qs_batch_tbs", "received_batch_tbs",
    "AddPackage", "CreateUserRecordParams", "CreateUserRecordResponse", "UpdateUserRecordParams",
    "UserRecordParams", "ClientRecordResponse", "UserRecordResponse", "DeleteUserRecordParams",
    "CreateClientRecordParams", "CreateClientRecordResponse", "UpdateClientRecordParams",
    "DeleteClientRecordParams", "BlockGroupParams", "PublishKeyPackagesParams",
    "AddPackageParams", "AddPackageResponse", "AddPackageResponseTBS",
    "DequeueMessagesParams", "DequeueMessagesResponse", "WsParams", "Empty",
    "UpdateUserRecordRequest", "UserRecordRequest", "DeleteUserRecordRequest",
    "CreateClientRecordRequest", "UpdateClientRecordRequest", "DeleteClientRecordRequest",
    "BlockGroupRequest", "PublishKeyPackagesRequest", "DequeueMessagesRequest", "WsRequest",
    "decode_sealed_queue_config", "QsVerifyingKeyResponse", "QsQueueConfigEncryptionKeyResponse",
    "WsConnected", "WsQueueUpdate", "QsWsMessage",
]

SignaturePublicKey = VarBytes
HpkePublicKey = VarBytes
FriendshipToken = VarBytes
MESSAGE_ID_LEN = 16
_MESSAGE_ID = fixed(MESSAGE_ID_LEN)   # built once: an Annotated type costs tens of microseconds


@struct
class Empty:
    """The body of an answer that carries nothing but its status."""


# --- queue configs (spec/glossary.md#sealed-queue-config) ----------------------

@struct
class QueueConfig:
    """What a sealed config reveals to the client's QS."""
    option_push_token_key: optional(VarBytes)
    pseudonymous_client_id: QsCid


@struct
class SealedQueueConfig:
    """A QueueConfig that only the client's QS can open (see the module docstring).

    * ``config_key_id``: SHA-256 of the QueueConfig encryption key it is
      sealed to, so that the QS picks the right one of the keys it publishes
      (current and rotated-out) without trying each;
    * ``sealed_sender``: HPKE base mode to the QueueConfig encryption key,
      plaintext the encoded QsCid of the client;
    * ``sealed_queue_config``: HPKE auth mode to the same key, sender key the
      client's queue encryption key, plaintext the encoded QueueConfig, AAD the
      encoded ``sealed_sender``;
    * ``signature``: the client record auth key's signature, label
      ``"SealedQueueConfig"``, over ``config_key_id || sealed_sender || sealed_queue_config``.
    """
    config_key_id: fixed(32)
    sealed_sender: HPKECiphertext
    sealed_queue_config: HPKECiphertext
    signature: VarBytes


@keep_encoding   # the DS stores one per member and writes them all into every fan-out
@struct
class ClientQueueConfig:
    """Where and to which queue a DS delivers a member's messages.

    ``sealed_config`` is an encoded :class:`SealedQueueConfig` (opaque to
    everyone but the client's QS)."""
    client_homeserver_domain: Fqdn
    sealed_config: VarBytes


# --- fan-out (spec/glossary.md#fan-out-message) -------------------------------------

@struct
class CommitContent:
    """``MessageContent::Commit(MlsMessage)``."""
    message: MLSMessage


@struct
class ApplicationContent:
    """``MessageContent::Application(MlsMessage)``."""
    message: MLSMessage


@struct
class WelcomeBundle:
    """``spec/glossary.md#welcomebundle``."""
    welcome: Welcome
    encrypted_welcome_attribution_info: VarBytes
    encrypted_group_state_ear_key: VarBytes
    encrypted_credential_encryption_key: VarBytes
    group_id: GroupId


@struct
class ProposalContent:
    """``MessageContent::Proposal(MlsMessage)``: a member's proposal, e.g. a
    self-remove (docs/decisions.md, A1)."""
    message: MLSMessage


@struct
class ClientInactivityRemoval:
    """``spec/delivery_service.md#ds-induced-removals``: the DS's Remove
    proposals for clients past the inactivity limit."""
    proposals: vec(MLSMessage)


@struct
class QueueDeletionRemoval:
    """``spec/delivery_service.md#ds-induced-removals``: the DS's Remove
    proposals for clients whose queue is gone."""
    proposals: vec(MLSMessage)


MessageContent = variant(U8, {1: CommitContent, 2: ApplicationContent, 3: WelcomeBundle, 4: ProposalContent,
                              5: ClientInactivityRemoval, 6: QueueDeletionRemoval}, "MessageContent")


@struct
class FanOutMessage:
    """A message from a DS for the queues named by ``client_queue_configs``."""
    client_queue_configs: vec(ClientQueueConfig)
    message_content: MessageContent


@struct
class QueueDeleted:
    """``#enqueuing-messages``: a queue named by a config no longer exists."""
    client_queue_config: ClientQueueConfig
    group_id: GroupId


# --- federation (#federated-qs-to-qs-communication) ---------------------------------

@struct
class QsToQsMessageTBS:
    """The signed part of a :class:`QsToQsMessage` (every field but the signature)."""
    source: Fqdn
    destination: Fqdn
    timestamp: U64
    message_id: fixed(MESSAGE_ID_LEN)
    payload: FanOutMessage


@struct
class QsToQsMessage:
    source: Fqdn
    destination: Fqdn
    timestamp: U64
    message_id: fixed(MESSAGE_ID_LEN)
    payload: FanOutMessage
    signature: VarBytes

    def tbs(self) -> bytes:
        return encode(QsToQsMessageTBS(self.source, self.destination, self.timestamp,
                                       self.message_id, self.payload))


def encode_qs_to_qs_tbs(source: Fqdn, destination: Fqdn, timestamp: int, message_id: bytes,
                        payload: bytes) -> bytes:
    """``encode(QsToQsMessageTBS(...))`` for a ``payload`` that is already an
    encoded FanOutMessage (as an outbound queue stores it). A struct encodes
    as its fields' encodings in order, so this is the other fields followed
    by the payload bytes: a sender frames a large fan-out without decoding
    and re-encoding it. The encoded QsToQsMessage is this followed by the
    encoded ``signature``."""
    return (encode(source) + encode(destination) + encode(timestamp, U64)
            + encode(message_id, _MESSAGE_ID) + payload)


def received_qs_to_qs_tbs(received: bytes, message: QsToQsMessage) -> bytes:
    """The signed bytes of a QsToQsMessage taken from the bytes it arrived
    as (``received``, which strictly decoded to ``message``), without
    re-encoding a fan-out of hundreds of configs.

    Equivalent to ``message.tbs()``: strict decoding (minimal varints, no
    trailing bytes, canonical Fqdns, known tags) accepts exactly the
    canonical encoding of the value it returns, so ``received ==
    encode(message)``; and a struct encodes as its fields in order, so the
    signed part is ``received`` without the encoded ``signature`` at its
    end. Raises ValueError if ``received`` does not end with it (a caller
    passed bytes that are not the message).
    """
    sig = encode(message.signature, VarBytes)
    if len(received) < len(sig) or not received.endswith(sig):
        raise ValueError("the received bytes do not end with the message's signature")
    return received[:len(received) - len(sig)]


@struct
class FederatedEnqueueResponse:
    """Answer to a QsToQsMessage: the configs whose queues do not exist."""
    queue_deleted: vec(QueueDeleted)


# --- several QS-to-QS messages in one request (docs/decisions.md, "QS-to-QS batches") --------

#: The most messages one :class:`QsToQsBatch` may carry (a receiver refuses
#: more with 413); a sender also bounds a batch's bytes (``[limits]
#: federation_batch_max_bytes``) below the receiver's body limit.
MAX_BATCH_MESSAGES = 100


@struct
class QsToQsBatchEntry:
    """One message of a batch: its id (the receiver's dedupe key, as in a
    QsToQsMessage) and its FanOutMessage, encoded, as an opaque vector so
    that one entry that does not decode is refused alone."""
    message_id: _MESSAGE_ID
    payload: VarBytes


@struct
class QsToQsBatchTBS:
    """The signed part of a :class:`QsToQsBatch` (every field but the signature)."""
    source: Fqdn
    destination: Fqdn
    timestamp: U64
    entries: vec(QsToQsBatchEntry)


@struct
class QsToQsBatch:
    """Several QsToQsMessages of one source for one destination in one
    request, signed once (label ``"QsToQsBatch"``): what each entry means
    is exactly what a QsToQsMessage with the same source, destination,
    timestamp, message id and payload would mean."""
    source: Fqdn
    destination: Fqdn
    timestamp: U64
    entries: vec(QsToQsBatchEntry)
    signature: VarBytes


@struct
class BatchAccepted:
    """A batch entry that was enqueued, or a replay of one that was (its
    first answer)."""
    response: FederatedEnqueueResponse


@struct
class BatchRefused:
    """A batch entry refused on its own: the status and error code a lone
    QsToQsMessage with it would have got, and ``retry_after`` (seconds, 0
    for none) of a 429."""
    status: U16
    code: String
    message: String
    retry_after: U32


BatchEntryResult = variant(U8, {1: BatchAccepted, 2: BatchRefused}, "BatchEntryResult")


@struct
class FederatedEnqueueBatchResponse:
    """Answer to a :class:`QsToQsBatch`: one result per entry, in the entries' order."""
    results: vec(BatchEntryResult)


def encode_qs_to_qs_batch_tbs(source: Fqdn, destination: Fqdn, timestamp: int,
                              entries: list[tuple[bytes, bytes]]) -> bytes:
    """``encode(QsToQsBatchTBS(...))`` for entries given as ``(message_id,
    encoded FanOutMessage)``, without decoding the stored payloads (a struct
    encodes as its fields in order; a vector is its varint length and its
    items)."""
    body = b"".join(encode(mid, _MESSAGE_ID) + encode(payload, VarBytes) for mid, payload in entries)
    return (encode(source) + encode(destination) + encode(timestamp, U64)
            + encode_varint(len(body)) + body)


def received_batch_tbs(received: bytes, batch: QsToQsBatch) -> bytes:
    """The signed bytes of a batch taken from the bytes it was strictly
    decoded from: ``received`` without the encoded signature at its end
    (the argument of :func:`received_qs_to_qs_tbs`). Raises ValueError if
    ``received`` does not end with it."""
    sig = encode(batch.signature, VarBytes)
    if len(received) < len(sig) or not received.endswith(sig):
        raise ValueError("the received bytes do not end with the batch's signature")
    return received[:len(received) - len(sig)]


# --- KeyPackages (spec/queuing_service/keypackage_publication.md) ---------------------

@struct
class AddPackage:
    """``spec/glossary.md#addpackage``."""
    key_package: KeyPackage
    encrypted_client_credential: VarBytes
    encrypted_signature_encryption_key: VarBytes


# --- client endpoints (#client-endpoints) -----------------------------------------------

@struct
class CreateUserRecordParams:
    """``#create-new-qs-user-record``."""
    user_record_auth_key: SignaturePublicKey
    friendship_token: FriendshipToken
    client_record_auth_key: SignaturePublicKey
    queue_encryption_key: HpkePublicKey


@struct
class CreateUserRecordResponse:
    qs_uid: QsUid
    qs_cid: QsCid


@struct
class UpdateUserRecordParams:
    """``#update-qs-user-record``."""
    qs_uid: QsUid
    user_record_auth_key: SignaturePublicKey
    friendship_token: FriendshipToken


@struct
class UserRecordParams:
    """``#get-own-qs-user-record``."""
    qs_uid: QsUid


@struct
class ClientRecordResponse:
    """One client record in a :class:`UserRecordResponse` (decision)."""
    qs_cid: QsCid
    client_record_auth_key: SignaturePublicKey
    queue_encryption_key: HpkePublicKey
    activity_time: U64


@struct
class UserRecordResponse:
    user_record_auth_key: SignaturePublicKey
    friendship_token: FriendshipToken
    client_records: vec(ClientRecordResponse)


@struct
class DeleteUserRecordParams:
    """``#delete-qs-user-record``."""
    qs_uid: QsUid


@struct
class CreateClientRecordParams:
    """Add a client record to a user record (decision; auth: QsUid)."""
    qs_uid: QsUid
    client_record_auth_key: SignaturePublicKey
    queue_encryption_key: HpkePublicKey


@struct
class CreateClientRecordResponse:
    qs_cid: QsCid


@struct
class UpdateClientRecordParams:
    """Replace a client record's keys and push token (decision; auth: QsCid).

    A new ``queue_encryption_key`` takes effect with a ratchet key update
    sealed to it (:func:`phoenix_ref.queue_crypto.set_queue_encryption_key`).
    ``encrypted_push_token`` is stored as given (encrypted by the client under
    its push-token key, ``#qs-state``); absent means none.
    """
    qs_cid: QsCid
    client_record_auth_key: SignaturePublicKey
    queue_encryption_key: HpkePublicKey
    encrypted_push_token: optional(VarBytes)


@struct
class DeleteClientRecordParams:
    """Delete one client record; the last one takes its user record along."""
    qs_cid: QsCid


@struct
class BlockGroupParams:
    """Add a group to the queue's blocklist (decision; auth: QsCid).

    The QS stores only ``Hash(blocklist_salt || group_id)``."""
    qs_cid: QsCid
    group_id: GroupId


@struct
class PublishKeyPackagesParams:
    """``#publish-keypackages``."""
    qs_cid: QsCid
    add_packages: vec(AddPackage)


@struct
class AddPackageParams:
    """``#get-addpackage``."""
    friendship_token: FriendshipToken


@struct
class AddPackageResponseTBS:
    friendship_token: FriendshipToken
    add_packages: vec(AddPackage)


@struct
class AddPackageResponse:
    """One AddPackage per client of the user, signed by the QS (decision)."""
    add_packages: vec(AddPackage)
    signature: VarBytes


@struct
class DequeueMessagesParams:
    """``#dequeue-messages``."""
    qs_cid: QsCid
    sequence_number_start: U64
    max_message_number: U64


@struct
class WsParams:
    """``#negotiate-websocket-connection``."""
    qs_cid: QsCid


@struct
class WsConnected:
    """Sent once on a websocket: authenticated, the queue is watched from now on."""


@struct
class WsQueueUpdate:
    """Sent on a websocket whenever messages were enqueued (the websocket
    stands in for a push notification)."""


QsWsMessage = variant(U8, {1: WsConnected, 2: WsQueueUpdate}, "QsWsMessage")


# --- request envelopes: a QsAuthToken before the params (auth_tokens.py) ---------------

@struct
class UpdateUserRecordRequest:
    """QsSenderId: QsUid."""
    auth: QsAuthToken
    params: UpdateUserRecordParams


@struct
class UserRecordRequest:
    """QsSenderId: QsUid."""
    auth: QsAuthToken
    params: UserRecordParams


@struct
class DeleteUserRecordRequest:
    """QsSenderId: QsUid."""
    auth: QsAuthToken
    params: DeleteUserRecordParams


@struct
class CreateClientRecordRequest:
    """QsSenderId: QsUid."""
    auth: QsAuthToken
    params: CreateClientRecordParams


@struct
class UpdateClientRecordRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: UpdateClientRecordParams


@struct
class DeleteClientRecordRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: DeleteClientRecordParams


@struct
class BlockGroupRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: BlockGroupParams


@struct
class PublishKeyPackagesRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: PublishKeyPackagesParams


@struct
class DequeueMessagesRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: DequeueMessagesParams


@struct
class WsRequest:
    """QsSenderId: QsCid."""
    auth: QsAuthToken
    params: WsParams


def decode_sealed_queue_config(data: bytes) -> SealedQueueConfig:
    """Strictly decode the ``sealed_config`` bytes of a ClientQueueConfig."""
    return decode(SealedQueueConfig, data)


# --- key distribution (spec/federation/use_cases.md#authentication-key-distribution) --------------

@struct
class QsVerifyingKeyResponse:
    """``#fetch-qs-verifying-key``: Ed25519 public keys, current first."""
    verifying_keys: vec(VarBytes)


@struct
class QsQueueConfigEncryptionKeyResponse:
    """``#fetch-queue-config-encryption-key``: HPKE (X25519) public keys, current first."""
    encryption_keys: vec(VarBytes)
