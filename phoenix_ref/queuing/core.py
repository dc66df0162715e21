"""The Queuing Service core, sans-IO (``spec/queuing_service.md``).

:class:`QsCore` takes decoded requests, the QsAuthToken the client sent and
the current time, and returns a response struct or raises a
:class:`~phoenix_ref.errors.ProtocolError`. It never opens a socket and never
sleeps; its storage calls are synchronous (the HTTP layer runs it through
``trio.to_thread.run_sync``, GUIDE §4). Privacy Pass tokens are checked by
the HTTP layer before the core is called (``#authentication``: all client
endpoints but dequeue and websocket).

Sections and where they are enforced:

* ``#authentication`` — :meth:`QsCore._authenticate`: the QsSenderId names
  the record whose key verifies the token; the token's age is bounded.
* ``#user-record-management-endpoints`` and its sub-sections — one method per
  endpoint; client records (decision in :mod:`.messages`).
* ``#publish-keypackages`` — :meth:`QsCore.publish_key_packages` validates
  every KeyPackage with the MLS module (RFC 9420 §10.1 with the leaf checks
  of §7.3: signatures, capabilities, lifetime), and the spec's rules: a
  QueueConfig extension naming this client, at least one last-resort
  KeyPackage.
* ``#get-addpackage`` — :meth:`QsCore.get_add_package`.
* ``#dequeue-messages`` — :meth:`QsCore.dequeue_messages` (queue semantics in
  :mod:`phoenix_ref.queues`, encryption in :mod:`phoenix_ref.queue_crypto`).
* ``#negotiate-websocket-connection`` — :meth:`QsCore.authorize_websocket`
  (the wake-ups are :class:`~.service.QueueNotifier`'s).
* ``#enqueuing-messages`` / ``#local-enqueue-message`` —
  :meth:`QsCore.local_enqueue`: local configs are opened and enqueued, every
  other domain gets exactly one message in its durable outbound queue
  (:mod:`phoenix_ref.federation.outbound`); ``QueueDeleted`` for missing local
  queues is the return value, those reported by remote QSs go to the
  ``on_queue_deleted`` callback of :class:`~.service.QsService`. A fan-out
  handed over with a message id is done once per id (a repeat is answered
  from the store).
* ``#federated-qs-to-qs-communication`` and ``#rate-limiting`` —
  :meth:`QsCore.federated_enqueue`: destination, age, operator allow/deny
  list, the group belongs to the source
  (``threat_model/stride/security_requirements/federated_homeservers.md#message-fan-out``),
  signature, rate limits per source domain, per client queue config and per
  queue, replay (message id: answered with the first answer). The core fetches nothing: it is given
  the source QS's verifying keys the caller holds (or none) and raises
  :class:`UnknownSourceKey` when none verifies; the async layer
  (:class:`~.service.QsService`) then fetches the keys once and calls again.
* ``#fetch-qs-verifying-key`` / ``#fetch-queue-config-encryption-key`` —
  :meth:`QsCore.qs_verifying_key` / :meth:`QsCore.queue_config_encryption_key`.

:class:`~.service.QsService` is the async shell around the core.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..auth_tokens import RequestBinding
from ..codec import DecodeError, VarBytes, decode, encode
from ..crypto import CryptoError, HpkeKeyPair, SigningKey, hs_sign, hs_verify
from ..errors import Forbidden, Malformed, NotFound, ProtocolError, RateLimited, TooLarge, Unauthorized
from ..federation.outbound import OutboundItem, OutboundStore
from ..ids import Fqdn, GroupId, QsCid, QsUid
from ..mls.extensions import (
    LAST_RESORT_EXTENSION_TYPE, ExtensionError, QueueConfigExtension, find_extension, get_extension,
)
from ..mls.keypackage import KeyPackageError, validate_key_package
from ..mls.messages import KeyPackage
from ..paths import endpoint_path
from ..queue_crypto import check_queue_encryption_key
from ..queues import Queues
from ..rate_limit import WindowCounters
from .fanout import (
    ConfigLists, DigestedConfig, InvalidQueueConfig, OpenedQueueConfig, SealedConfigCache, config_digest,
    config_key_id, group_id_of, open_sealed_queue_config, payload_config_list, received_config_list, split_by_domain,
    with_digests,
)
from .messages import (
    MAX_BATCH_MESSAGES, MESSAGE_ID_LEN, AddPackage, BatchAccepted, BatchRefused, FederatedEnqueueBatchResponse,
    QsToQsBatch, QsToQsBatchTBS, encode_qs_to_qs_batch_tbs, received_batch_tbs, AddPackageParams, AddPackageResponse, AddPackageResponseTBS,
    BlockGroupRequest, ClientQueueConfig, ClientRecordResponse, CreateClientRecordRequest,
    CreateClientRecordResponse, CreateUserRecordParams, CreateUserRecordResponse,
    DeleteClientRecordRequest, DeleteUserRecordRequest, DequeueMessagesRequest, DequeueMessagesResponse,
    Empty, FanOutMessage, FederatedEnqueueResponse, MessageContent, PublishKeyPackagesRequest,
    QsQueueConfigEncryptionKeyResponse, QsToQsMessage, QsVerifyingKeyResponse, QueueDeleted,
    UpdateClientRecordRequest, UpdateUserRecordRequest, UserRecordRequest, UserRecordResponse, WsRequest,
    encode_qs_to_qs_tbs, received_qs_to_qs_tbs,
)
from .records import BLOCKLIST_SALT_LEN, LOCAL_SOURCE, ClientRecord, QsRecords, UserRecord

__all__ = [
    "QS_TO_QS_LABEL", "ADD_PACKAGE_RESPONSE_LABEL", "RateLimit", "QsConfig", "QsKeys",
    "LocalEnqueueResult", "FederatedEnqueueResult", "FederatedBatchResult", "QS_TO_QS_BATCH_LABEL", "QsCore", "operation_path", "UnknownSourceKey",
]

log = logging.getLogger(__name__)

QS_TO_QS_LABEL = "QsToQsMessage"
QS_TO_QS_BATCH_LABEL = "QsToQsBatch"
ADD_PACKAGE_RESPONSE_LABEL = "AddPackageResponse"
MAX_SIGNATURE_KEY_LEN = 32  # Ed25519 (ciphersuite 1)
MAX_FRIENDSHIP_TOKEN_LEN = 256


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` hits per fixed window of ``window_ms``."""
    limit: int
    window_ms: int = 60_000


@dataclass(frozen=True)
class QsConfig:
    """``spec/queuing_service.md#qs-configuration-options`` plus phoenix_ref's own.

    * ``max_inter_qs_token_age_ms`` — "Maximal InterQsAuthToken age" (1 h):
      the oldest QsToQsMessage timestamp accepted, and how long message ids
      (with their answers) are remembered against replays.
    * ``local_message_id_keep_ms`` — how long the id of a fan-out the local
      DS handed over is remembered (7 days): a DS that crashed before it
      learnt the answer hands the fan-out over again when it restarts, and
      that may be after a long outage (docs/decisions.md).
    * ``max_client_token_age_ms`` — oldest QsAuthToken accepted (decision:
      the same 1 h).
    * ``max_clock_skew_ms`` — how far in the future a timestamp may be.
    * ``max_client_records_per_user`` — 10.
    * ``max_client_record_age_ms`` — "Maximal QS client record age": a
      client record whose queue nobody fetched from (or that was created)
      longer ago is deleted by :meth:`QsCore.prune_inactive` (default 90 days).
    * ``rate_limit_*`` — ``#rate-limiting``; ``None`` disables one.
    * ``federation_allow`` / ``federation_deny`` — operator lists of domains
      (``spec/federation/use_cases.md``: "what other homeservers it wants to
      federate with"). With an allow list only those domains are accepted;
      a denied domain is always refused. Applies both ways.
    """
    domain: Fqdn
    max_inter_qs_token_age_ms: int = 3_600_000
    max_client_token_age_ms: int = 3_600_000
    max_clock_skew_ms: int = 60_000
    max_client_records_per_user: int = 10
    max_client_record_age_ms: int = 90 * 86_400_000
    local_message_id_keep_ms: int = 7 * 86_400_000
    rate_limit_per_domain: RateLimit | None = RateLimit(6000)
    rate_limit_per_client_queue_config: RateLimit | None = RateLimit(600)
    rate_limit_per_queue: RateLimit | None = RateLimit(1200)
    federation_allow: frozenset[Fqdn] | None = None
    federation_deny: frozenset[Fqdn] = frozenset()

    def federates_with(self, domain: Fqdn) -> bool:
        if domain in self.federation_deny:
            return False
        return self.federation_allow is None or domain in self.federation_allow


@dataclass(frozen=True)
class QsKeys:
    """The QS's own keys (``#qs-state``): the QS signing key and the
    QueueConfig encryption key pair, plus the rotated-out QueueConfig keys
    it still publishes (newest first) — configs sealed to them still open."""
    signing_key: SigningKey
    queue_config_key: HpkeKeyPair
    older_queue_config_keys: tuple[HpkeKeyPair, ...] = ()

    def queue_config_keys_by_id(self) -> dict[bytes, bytes]:
        """Key id → private key of every published QueueConfig encryption key."""
        return {config_key_id(k.public): k.private for k in (self.queue_config_key, *self.older_queue_config_keys)}

    def published_verifying_keys(self) -> list[bytes]:
        """The verifying keys the QS publishes, current first."""
        return [self.signing_key.public]

    def published_queue_config_keys(self) -> list[bytes]:
        """The QueueConfig encryption keys the QS publishes, current first."""
        return [k.public for k in (self.queue_config_key, *self.older_queue_config_keys)]


@dataclass
class LocalEnqueueResult:
    """What :meth:`QsCore.local_enqueue` did.

    * ``queue_deleted`` — for the DS: local configs whose client record is gone
      (``#enqueuing-messages``);
    * ``rejected`` — local configs that do not open or verify (not enqueued);
    * ``blocked`` — local configs whose queue blocks the group (silently dropped);
    * ``enqueued`` — QsCids that received the message (websocket wake-ups);
    * ``forwarded`` — remote domains that got one outbound message each;
    * ``duplicate`` — the message id was taken already: this call did
      nothing, ``queue_deleted`` is the first call's and the other lists
      are empty.
    """
    queue_deleted: list[QueueDeleted] = field(default_factory=list)
    rejected: list[ClientQueueConfig] = field(default_factory=list)
    blocked: list[ClientQueueConfig] = field(default_factory=list)
    enqueued: list[QsCid] = field(default_factory=list)
    forwarded: list[Fqdn] = field(default_factory=list)
    duplicate: bool = False


@dataclass
class FederatedEnqueueResult:
    """What :meth:`QsCore.federated_enqueue` did: the answer for the source
    QS, the QsCids that received the message, and whether it was a replay
    (then nothing was enqueued and ``response`` is the first answer)."""
    response: FederatedEnqueueResponse
    enqueued: list[QsCid]
    duplicate: bool = False


class UnknownSourceKey(Unauthorized):
    """None of the verifying keys the core was given (if any) verifies a
    QsToQsMessage: the caller may fetch the source QS's keys afresh and call
    once more; a second refusal is final (401)."""
    code = "bad_signature"

    def __init__(self, message: str, *, source: Fqdn):
        super().__init__(message)
        self.source = source


def operation_path(name: str) -> str:
    """The ``operation`` a QsAuthToken is bound to: the endpoint's path
    (:mod:`phoenix_ref.auth_tokens`, :mod:`phoenix_ref.paths`)."""
    return endpoint_path(name)


# A config of a fan-out after opening: (config, its digest, what it opened to).
_OpenedConfig = tuple[ClientQueueConfig, bytes, "OpenedQueueConfig | QsCid | None"]


def _queue_id(qs_cid: QsCid) -> bytes:
    return encode(qs_cid)


def _check_sig_key(key: bytes, what: str) -> bytes:
    if len(key) != MAX_SIGNATURE_KEY_LEN:
        raise Malformed(f"{what} must be a {MAX_SIGNATURE_KEY_LEN}-byte Ed25519 public key",
                        code="bad_signature_key")
    return key


def _check_friendship_token(token: bytes) -> bytes:
    if not 16 <= len(token) <= MAX_FRIENDSHIP_TOKEN_LEN:
        raise Malformed(f"a friendship token has 16 to {MAX_FRIENDSHIP_TOKEN_LEN} bytes",
                        code="bad_friendship_token")
    return token


class QsCore:
    """The QS's protocol rules over its stores. Thread-safe as far as its
    stores are; every public method is one request.

    ``records``, ``queues`` and ``outbound`` may be one database
    (:class:`~.store.QsStore`); ``transaction`` then makes a fan-out's writes
    to all three one atomic unit."""

    def __init__(self, config: QsConfig, keys: QsKeys, records: QsRecords, queues: Queues,
                 outbound: OutboundStore, *, config_cache: SealedConfigCache | None = None,
                 transaction: Callable[[], AbstractContextManager] = nullcontext,
                 purge_deleted: Callable[[], object] = lambda: None,
                 rate_limits: WindowCounters | None = None):
        self.config = config
        self.keys = keys
        self.records = records
        self.queues = queues
        self.outbound = outbound
        self.config_cache = config_cache if config_cache is not None else SealedConfigCache()
        #: Config lists of fan-outs decoded and encoded before (a busy group's repeat).
        self.config_lists = ConfigLists()
        #: Federation rate-limit counters (``#rate-limiting``), in memory.
        self.rate_limits = rate_limits if rate_limits is not None else WindowCounters()
        #: Groups store calls into one atomic write (``QsStore.transaction``
        #: when the stores share an SQLite database; the in-memory test stores
        #: have no rollback and use ``nullcontext``).
        self.transaction = transaction
        #: Called after client records were deleted, outside the transaction:
        #: wipes the deleted rows' old versions from the database's files
        #: (``QsStore.purge_deleted``; metadata minimalism, docs/storage.md).
        self.purge_deleted = purge_deleted
        #: Called with the QsCids of deleted client records, after the deletion
        #: (the service closes their websockets). Any thread may call it.
        self.on_clients_deleted: Callable[[list[QsCid]], None] | None = None

    # --- authentication (#authentication) ----------------------------------------------

    def _check_timestamp(self, timestamp: int, now_ms: int, max_age_ms: int, what: str) -> None:
        if timestamp > now_ms + self.config.max_clock_skew_ms:
            raise Unauthorized(f"{what} timestamp is in the future", code="timestamp_in_future")
        if now_ms - timestamp > max_age_ms:
            raise Unauthorized(f"{what} is older than {max_age_ms} ms", code="message_expired")

    def _authenticate(self, request, operation: str, record_id: QsUid | QsCid, now_ms: int):
        """``#authentication``: verify ``request.auth`` (a QsAuthToken) for the
        endpoint ``operation`` acting on ``record_id``.

        The token's ``sender_id`` names the record whose key verifies it (a
        QsUid: the user record auth key; a QsCid: the client record auth
        key); its signature also binds this homeserver, the operation and the
        params (:mod:`phoenix_ref.auth_tokens`). Returns the record:
        ``(UserRecord, [ClientRecord])`` for a QsUid, a ClientRecord for a
        QsCid. Unknown record, bad signature or age → 401; a valid token for
        another record than ``record_id`` → 403.
        """
        token = request.auth
        sender = token.sender_id
        if type(sender) is not type(record_id):
            raise Unauthorized(f"this endpoint is authenticated by a {type(record_id).__name__}",
                               code="wrong_sender_id")
        if isinstance(sender, QsUid):
            record = self.records.get_user(sender)
            key = record[0].user_record_auth_key if record else None
        else:
            record = self.records.get_client(sender)
            key = record.client_record_auth_key if record else None
        if record is None:
            raise Unauthorized("unknown QS record", code="unknown_record")
        binding = RequestBinding(self.config.domain, operation_path(operation), encode(request.params))
        token.verify(key, now_ms, binding, max_age_ms=self.config.max_client_token_age_ms)
        token.check_sender(record_id)
        return record

    # --- user records (#user-record-management-endpoints) --------------------------------

    def create_user_record(self, params: CreateUserRecordParams, now_ms: int) -> CreateUserRecordResponse:
        """``#create-new-qs-user-record``: fresh QsUid and QsCid, a queue whose
        first message is the sealed initial ratchet key."""
        _check_sig_key(params.user_record_auth_key, "user_record_auth_key")
        _check_sig_key(params.client_record_auth_key, "client_record_auth_key")
        _check_friendship_token(params.friendship_token)
        check_queue_encryption_key(params.queue_encryption_key)
        qs_uid = QsUid.random()
        qs_cid = QsCid.random(qs_uid)
        with self.transaction():   # the records and the queue, or nothing
            self.records.create_user(
                UserRecord(qs_uid, params.user_record_auth_key, params.friendship_token),
                self._new_client(qs_cid, params.client_record_auth_key, params.queue_encryption_key))
            self.queues.create(_queue_id(qs_cid), params.queue_encryption_key, now_ms)
        return CreateUserRecordResponse(qs_uid, qs_cid)

    @staticmethod
    def _new_client(qs_cid: QsCid, auth_key: bytes, queue_key: bytes) -> ClientRecord:
        return ClientRecord(qs_cid, auth_key, queue_key, None, os.urandom(BLOCKLIST_SALT_LEN))

    def update_user_record(self, request: UpdateUserRecordRequest, now_ms: int) -> Empty:
        """``#update-qs-user-record`` (auth: QsUid)."""
        params = request.params
        self._authenticate(request, "update_user_record", params.qs_uid, now_ms)
        _check_sig_key(params.user_record_auth_key, "user_record_auth_key")
        _check_friendship_token(params.friendship_token)
        if not self.records.update_user(params.qs_uid, params.user_record_auth_key, params.friendship_token):
            raise NotFound("no such QS user record", code="unknown_record")
        return Empty()

    def get_user_record(self, request: UserRecordRequest, now_ms: int) -> UserRecordResponse:
        """``#get-own-qs-user-record`` (auth: QsUid)."""
        user, clients = self._authenticate(request, "get_user_record", request.params.qs_uid, now_ms)
        out = []
        for c in clients:
            try:
                activity = self.queues.info(_queue_id(c.qs_cid)).activity_ms
            except NotFound:
                activity = 0
            out.append(ClientRecordResponse(c.qs_cid, c.client_record_auth_key, c.queue_encryption_key, activity))
        return UserRecordResponse(user.user_record_auth_key, user.friendship_token, out)

    def delete_user_record(self, request: DeleteUserRecordRequest, now_ms: int) -> Empty:
        """``#delete-qs-user-record`` (auth: QsUid): the user, its clients and queues."""
        params = request.params
        self._authenticate(request, "delete_user_record", params.qs_uid, now_ms)
        with self.transaction():   # the records and every queue, or nothing
            deleted = self.records.delete_user(params.qs_uid)
            for qs_cid in deleted:
                self._delete_queue(qs_cid)
        self._clients_deleted(deleted)
        return Empty()

    def _clients_deleted(self, qs_cids: list[QsCid]) -> None:
        if not qs_cids:
            return
        self.purge_deleted()
        if self.on_clients_deleted is not None:
            self.on_clients_deleted(qs_cids)

    def _delete_queue(self, qs_cid: QsCid) -> None:
        try:
            self.queues.delete(_queue_id(qs_cid))
        except NotFound:
            pass

    def prune_inactive(self, now_ms: int) -> list[QsCid]:
        """Delete the client records whose queue has been inactive for longer
        than ``max_client_record_age_ms`` (``#qs-configuration-options``;
        activity: creation or the last dequeue, ``#qs-state``), each with its
        queue, KeyPackages and blocklist in one transaction; a user record
        goes with its last client record. The activity is checked again
        inside the transaction, so a client that dequeues meanwhile stays.
        Websockets of deleted records are closed. Returns the deleted QsCids."""
        before = now_ms - self.config.max_client_record_age_ms
        gone = []
        for queue_id in self.queues.inactive(before):
            try:
                qs_cid = decode(QsCid, queue_id)
            except DecodeError:   # not a queue of a client record: leave it alone
                continue
            with self.transaction():
                try:
                    if self.queues.info(queue_id).activity_ms >= before:
                        continue
                except NotFound:
                    continue
                existed, _ = self.records.delete_client(qs_cid)
                self._delete_queue(qs_cid)
            if existed:
                gone.append(qs_cid)
        self._clients_deleted(gone)
        return gone

    def expire_key_packages(self, now_ms: int) -> int:
        """Delete the AddPackages whose KeyPackage lifetime (RFC 9420 §7.2,
        ``not_after`` in seconds, inclusive) ended before ``now_ms``, last
        resort ones too: nobody may add with them any more. Returns how many."""
        return self.records.expire_add_packages(now_ms // 1000)

    # --- client records (decision, see .messages) ------------------------------------------

    def create_client_record(self, request: CreateClientRecordRequest, now_ms: int) -> CreateClientRecordResponse:
        """Add a client record and its queue (auth: QsUid; at most
        ``max_client_records_per_user``)."""
        params = request.params
        self._authenticate(request, "create_client_record", params.qs_uid, now_ms)
        _check_sig_key(params.client_record_auth_key, "client_record_auth_key")
        check_queue_encryption_key(params.queue_encryption_key)
        qs_cid = QsCid.random(params.qs_uid)
        client = self._new_client(qs_cid, params.client_record_auth_key, params.queue_encryption_key)
        with self.transaction():
            if not self.records.add_client(client, self.config.max_client_records_per_user):
                raise NotFound("no such QS user record", code="unknown_record")
            self.queues.create(_queue_id(qs_cid), params.queue_encryption_key, now_ms)
        return CreateClientRecordResponse(qs_cid)

    def update_client_record(self, request: UpdateClientRecordRequest, now_ms: int) -> Empty:
        """New keys for a client record (auth: QsCid); a new queue encryption key
        takes effect with a ratchet key update sealed to it
        (``spec/queuing_service/queue_encryption.md#key-updates``)."""
        params = request.params
        record: ClientRecord = self._authenticate(request, "update_client_record", params.qs_cid, now_ms)
        _check_sig_key(params.client_record_auth_key, "client_record_auth_key")
        check_queue_encryption_key(params.queue_encryption_key)
        if params.encrypted_push_token is not None and len(params.encrypted_push_token) > 4096:
            raise Malformed("push token too long", code="bad_push_token")
        with self.transaction():   # the record and the queue's key, or neither
            self.records.update_client(params.qs_cid, params.client_record_auth_key,
                                       params.queue_encryption_key, params.encrypted_push_token)
            if params.queue_encryption_key != record.queue_encryption_key:
                self.queues.set_queue_encryption_key(_queue_id(params.qs_cid), params.queue_encryption_key, now_ms)
        return Empty()

    def delete_client_record(self, request: DeleteClientRecordRequest, now_ms: int) -> Empty:
        """Delete one client record and its queue (auth: QsCid); the last one
        takes the user record with it (``#user-record-management-endpoints``)."""
        params = request.params
        self._authenticate(request, "delete_client_record", params.qs_cid, now_ms)
        with self.transaction():
            existed, _ = self.records.delete_client(params.qs_cid)
            self._delete_queue(params.qs_cid)
        if existed:
            self._clients_deleted([params.qs_cid])
        return Empty()

    def block_group(self, request: BlockGroupRequest, now_ms: int) -> Empty:
        """Add a salted group-id hash to the queue's blocklist (``#qs-state``; auth: QsCid)."""
        params = request.params
        self._authenticate(request, "block_group", params.qs_cid, now_ms)
        self.records.block(params.qs_cid, params.group_id)
        return Empty()

    # --- KeyPackages (#publish-keypackages, #get-addpackage) -----------------------------------

    def _validate_key_package(self, kp: KeyPackage, qs_cid: QsCid, index: int, now_ms: int) -> bool:
        """The MLS module's KeyPackage validation (RFC 9420 §10.1, with the
        leaf node checks of §7.3 — leaf signature, capabilities, lifetime
        containing now — and unique extensions, §13), then the spec's: a
        QueueConfig extension naming this client. Returns whether the
        KeyPackage is a last-resort one."""
        where = f"add_packages[{index}].key_package"
        try:
            validate_key_package(kp, now=now_ms // 1000)
            qce = get_extension(kp.extensions, QueueConfigExtension)
        except (KeyPackageError, ExtensionError) as e:
            raise Malformed(f"{where}: {e}", code="bad_key_package") from None
        if qce is None:
            raise Malformed(f"{where}: the QueueConfig extension is missing", code="missing_queue_config")
        self._check_own_queue_config(qce, qs_cid, where)
        return find_extension(kp.extensions, LAST_RESORT_EXTENSION_TYPE) is not None

    def _check_own_queue_config(self, qce: QueueConfigExtension, qs_cid: QsCid, where: str) -> None:
        """The extension must route to this QS and open to the publishing client."""
        cqc = qce.client_queue_config
        if cqc.client_homeserver_domain != self.config.domain.value.encode():
            raise Malformed(f"{where}: the queue config names another homeserver", code="foreign_queue_config")
        digest = config_digest(cqc.sealed_config)
        opened = self._open(cqc.sealed_config, digest, self.keys.queue_config_keys_by_id(),
                            self.config_cache.get(digest))
        if not isinstance(opened, OpenedQueueConfig) or opened.qs_cid != qs_cid:
            raise Malformed(f"{where}: the queue config is not this client's", code="foreign_queue_config")

    def publish_key_packages(self, request: PublishKeyPackagesRequest, now_ms: int) -> Empty:
        """``#publish-keypackages`` (auth: QsCid): replace the client's KeyPackages."""
        params = request.params
        self._authenticate(request, "publish_key_packages", params.qs_cid, now_ms)
        if not params.add_packages:
            raise Malformed("no AddPackages", code="bad_key_package")
        rows = []
        for i, ap in enumerate(params.add_packages):
            last_resort = self._validate_key_package(ap.key_package, params.qs_cid, i, now_ms)
            rows.append((encode(ap), last_resort, ap.key_package.leaf_node.lifetime.not_after))
        if not any(lr for _, lr, _ in rows):
            raise Malformed("no KeyPackage of last resort among the AddPackages", code="missing_last_resort")
        self.records.replace_add_packages(params.qs_cid, rows)
        return Empty()

    def get_add_package(self, params: AddPackageParams, now_ms: int) -> AddPackageResponse:
        """``#get-addpackage``: the friendship token authenticates; one AddPackage
        per client of the user, signed by the QS. A KeyPackage whose lifetime
        ended is never handed out (``state_expiration.md#state-expiration``:
        key material with an expiration date "has to be rotated in time"; a
        client without a live one is left out of the answer); the sweeper
        deletes it (:meth:`expire_key_packages`)."""
        taken = self.records.take_add_packages(params.friendship_token, now_ms // 1000)
        if taken is None:
            raise Unauthorized("unknown friendship token", code="unknown_friendship_token")
        packages = [decode(AddPackage, raw) for raw in taken]
        tbs = encode(AddPackageResponseTBS(params.friendship_token, packages))
        return AddPackageResponse(packages, hs_sign(self.keys.signing_key, ADD_PACKAGE_RESPONSE_LABEL, tbs))

    # --- queues (#dequeue-messages, #negotiate-websocket-connection) -----------------------------

    def dequeue_messages(self, request: DequeueMessagesRequest, now_ms: int) -> DequeueMessagesResponse:
        """``#dequeue-messages`` (auth: QsCid; no Privacy Pass)."""
        params = request.params
        self._authenticate(request, "dequeue_messages", params.qs_cid, now_ms)
        result = self.queues.dequeue(_queue_id(params.qs_cid), params.sequence_number_start,
                                     params.max_message_number, now_ms)
        return DequeueMessagesResponse(result.messages, result.remaining)

    def authorize_websocket(self, request: WsRequest, now_ms: int) -> QsCid:
        """``#negotiate-websocket-connection`` (auth: QsCid; no Privacy Pass):
        the QsCid whose queue the socket watches."""
        self._authenticate(request, "websocket", request.params.qs_cid, now_ms)
        return request.params.qs_cid

    # --- enqueueing (#enqueuing-messages, #local-enqueue-message) ------------------------------

    def _client_keys(self, qs_cid: QsCid):
        c = self.records.get_client(qs_cid)
        return None if c is None else (c.client_record_auth_key, c.queue_encryption_key)

    def _open(self, sealed_config: bytes, digest: bytes, config_keys: dict[bytes, bytes],
              hit: OpenedQueueConfig | None) -> OpenedQueueConfig | QsCid:
        """Open a sealed config, or take ``hit``, its entry in the cache
        (``spec/performance_goals.md``); ``digest`` is its
        :func:`~.fanout.config_digest`, ``config_keys`` the QS's published
        QueueConfig keys by id (a cached config sealed to a key the QS no
        longer publishes is refused)."""
        if hit is not None:
            if hit.config_key_id not in config_keys:
                raise InvalidQueueConfig("sealed to a queue config encryption key this QS no longer publishes",
                                         code="unknown_queue_config_key")
            return hit
        opened = open_sealed_queue_config(config_keys, sealed_config, self._client_keys)
        if isinstance(opened, OpenedQueueConfig):
            self.config_cache.put(digest, opened)
        return opened

    def _open_all(self, configs: list[DigestedConfig]) -> list[_OpenedConfig]:
        """Open every config of a fan-out (each with its digest): ``(config,
        digest, opened)`` where ``opened`` is the :class:`OpenedQueueConfig`,
        the QsCid alone when that client record does not exist, or None when
        the config does not open or verify."""
        config_keys = self.keys.queue_config_keys_by_id()
        out = []
        for (cqc, digest), hit in zip(configs, self.config_cache.get_many([d for _, d in configs])):
            try:
                opened = self._open(cqc.sealed_config, digest, config_keys, hit)
            except InvalidQueueConfig as e:
                log.info("refused queue config: %s", e.message)
                opened = None
            out.append((cqc, digest, opened))
        return out

    def _received_configs(self, message: QsToQsMessage, received: bytes | None) -> list[DigestedConfig]:
        """The configs of a QsToQsMessage with their digests, through
        :attr:`config_lists` when the bytes it arrived as are known."""
        if received is None:
            return with_digests(message.payload.client_queue_configs)
        return self.config_lists.decode(received_config_list(received, message))

    @staticmethod
    def _candidates(opened: list[_OpenedConfig], group_id: GroupId,
                    result: LocalEnqueueResult) -> list[tuple[ClientQueueConfig, OpenedQueueConfig]]:
        """The configs that opened to an existing record; the others are
        reported in ``result`` (rejected, or ``QueueDeleted``)."""
        candidates = []
        for cqc, _, o in opened:
            if o is None:
                result.rejected.append(cqc)
            elif isinstance(o, QsCid):   # opened, but no such client record
                result.queue_deleted.append(QueueDeleted(cqc, group_id))
            else:
                candidates.append((cqc, o))
        return candidates

    def _enqueue_candidates(self, candidates: list[tuple[ClientQueueConfig, OpenedQueueConfig]], group_id: GroupId,
                            plaintext: bytes, now_ms: int, result: LocalEnqueueResult) -> None:
        """Enqueue ``plaintext`` (an encoded MessageContent) for opened configs
        of this homeserver (``#enqueuing-messages``): skip records that are
        gone (``QueueDeleted``), whose keys changed since the config was
        verified (rejected) or that block the group (blocked).

        ``spec/performance_goals.md`` (IO overhead): with the sealed configs
        cached, the whole fan-out costs one store read (every client record
        with its blocklist) and one store write (every queue, one transaction).
        """
        if not candidates:
            return
        found = self.records.clients_for_enqueue([o.queue_id for _, o in candidates], group_id)
        targets: list[tuple[ClientQueueConfig, OpenedQueueConfig]] = []
        for cqc, opened in candidates:
            keys = found.get(opened.queue_id)
            if keys is None:
                result.queue_deleted.append(QueueDeleted(cqc, group_id))
            elif (keys.client_record_auth_key != opened.client_record_auth_key
                  or keys.queue_encryption_key != opened.queue_encryption_key):
                result.rejected.append(cqc)   # keys rotated since this config was verified
            elif keys.blocked:
                result.blocked.append(cqc)
            else:
                targets.append((cqc, opened))
        if not targets:
            return
        seqs = self.queues.enqueue_many([o.queue_id for _, o in targets], plaintext, now_ms)
        for (cqc, opened), seq in zip(targets, seqs):
            if seq is None:
                result.queue_deleted.append(QueueDeleted(cqc, group_id))
            else:
                result.enqueued.append(opened.qs_cid)

    def _first_answer(self, source: str, message_id: bytes, now_ms: int) -> FederatedEnqueueResponse | None:
        """The answer stored with a taken message id, or None if it is new."""
        stored = self.records.message_answer(source, message_id, now_ms)
        return None if stored is None else decode(FederatedEnqueueResponse, stored)

    def _remember(self, source: str, message_id: bytes, queue_deleted: list[QueueDeleted],
                  expires_ms: int) -> None:
        self.records.remember_message_id(source, message_id, encode(FederatedEnqueueResponse(queue_deleted)),
                                         expires_ms)

    def local_enqueue(self, message: FanOutMessage, now_ms: int, message_id: bytes | None = None
                      ) -> LocalEnqueueResult:
        """``#local-enqueue-message``: the local DS hands over a FanOutMessage.

        Configs of this homeserver are enqueued now; for every other domain
        exactly one FanOutMessage (with that domain's configs) goes to its
        outbound queue, to be framed as a signed QsToQsMessage when sent. A
        domain the operator does not federate with gets nothing; its configs
        are reported in ``rejected``. Not reachable over HTTP.

        Everything that can fail (decoding, opening configs) happens first;
        then the local queue writes and the outbound messages are one store
        transaction, so after a crash either the whole fan-out happened or
        none of it (a DS that got no answer hands it over again).

        ``message_id`` (:data:`~.messages.MESSAGE_ID_LEN` bytes, the DS's
        outbox entry) makes the hand-over idempotent: the id is looked up
        and, with the ``queue_deleted`` answer, remembered in that same
        transaction (for :attr:`QsConfig.local_message_id_keep_ms`). A
        second call with a taken id does nothing and returns ``duplicate``
        with the first call's ``queue_deleted``.
        """
        prepared = self._prepare_local(message, message_id)
        with self.transaction():
            return self._store_local(prepared, now_ms)

    def local_enqueue_many(self, handovers: Sequence[tuple[FanOutMessage, bytes | None]], now_ms: int
                           ) -> tuple[list[LocalEnqueueResult], ProtocolError | None]:
        """Several hand-overs of the local DS (``(message, message_id)``, as
        :meth:`local_enqueue` takes them) in ONE store transaction, in order
        (``spec/performance_goals.md#homeserver-processing``: one write per
        request; a DS request that leaves several fan-outs, or the DS's
        outbox after a restart). The hand-overs before the first one that
        is refused are done; the refusal is returned with their results and
        nothing after it is looked at, so the DS keeps its outbox order.
        A message id given twice is done once (the second gets ``duplicate``)."""
        prepared: list[_PreparedLocal] = []
        refused: ProtocolError | None = None
        for message, message_id in handovers:
            try:
                prepared.append(self._prepare_local(message, message_id))
            except ProtocolError as e:
                refused = e
                break
        if not prepared:
            return [], refused
        with self.transaction():
            return [self._store_local(p, now_ms) for p in prepared], refused

    def _prepare_local(self, message: FanOutMessage, message_id: bytes | None) -> "_PreparedLocal":
        """Everything of a local hand-over that can fail, before any write:
        the group of the content, the local configs opened, each remote
        domain's FanOutMessage encoded with a fresh outbound message id."""
        if message_id is not None and len(message_id) != MESSAGE_ID_LEN:
            raise ValueError(f"a message id has {MESSAGE_ID_LEN} bytes, not {len(message_id)}")
        result = LocalEnqueueResult()
        group_id = group_id_of(message)  # refuse undeliverable content before anything is queued
        plaintext = encode(message.message_content, MessageContent)
        candidates: list[tuple[ClientQueueConfig, OpenedQueueConfig]] = []
        forward: list[tuple[Fqdn, bytes, bytes]] = []
        for domain, part in split_by_domain(message).items():
            if domain == self.config.domain:
                candidates = self._candidates(self._open_all(with_digests(part.client_queue_configs)), group_id,
                                              result)
            elif not self.config.federates_with(domain):
                result.rejected.extend(part.client_queue_configs)
            else:
                payload = self.config_lists.encode_fan_out(part.client_queue_configs, plaintext)
                forward.append((domain, os.urandom(MESSAGE_ID_LEN), payload))
        return _PreparedLocal(message_id, group_id, plaintext, candidates, forward, result)

    def _store_local(self, p: "_PreparedLocal", now_ms: int) -> LocalEnqueueResult:
        """Inside the caller's transaction: the replay check of the DS's id,
        the local queue writes, the outbound appends and the id with its answer."""
        if p.message_id is not None:
            first = self._first_answer(LOCAL_SOURCE, p.message_id, now_ms)
            if first is not None:
                log.info("fan-out %s was handed over before: nothing done", p.message_id.hex())
                return LocalEnqueueResult(queue_deleted=first.queue_deleted, duplicate=True)
        result = p.result
        self._enqueue_candidates(p.candidates, p.group_id, p.plaintext, now_ms, result)
        for domain, outbound_id, payload in p.forward:
            self.outbound.append(domain.value, outbound_id, payload, now_ms)
            result.forwarded.append(domain)
        if p.message_id is not None:
            self._remember(LOCAL_SOURCE, p.message_id, result.queue_deleted,
                           now_ms + self.config.local_message_id_keep_ms)
        return result

    # --- key distribution (spec/federation/use_cases.md#authentication-key-distribution) ---------

    def qs_verifying_key(self) -> QsVerifyingKeyResponse:
        """``#fetch-qs-verifying-key``: the published verifying keys, current first."""
        return QsVerifyingKeyResponse(self.keys.published_verifying_keys())

    def queue_config_encryption_key(self) -> QsQueueConfigEncryptionKeyResponse:
        """``#fetch-queue-config-encryption-key``: the published keys, current first."""
        return QsQueueConfigEncryptionKeyResponse(self.keys.published_queue_config_keys())

    # --- federation (#federated-qs-to-qs-communication) -----------------------------------------

    def frame_outbound(self, item: OutboundItem, now_ms: int) -> bytes:
        """Frame a stored outbound payload (an encoded FanOutMessage) as an
        encoded, signed QsToQsMessage. Called at every attempt, so the
        timestamp is that of the attempt while the message id (the receiver's
        dedupe key) stays the same. The payload is framed as stored, never
        decoded (:func:`~.messages.encode_qs_to_qs_tbs`)."""
        tbs = encode_qs_to_qs_tbs(self.config.domain, Fqdn(item.destination), now_ms, item.message_id, item.payload)
        return tbs + encode(hs_sign(self.keys.signing_key, QS_TO_QS_LABEL, tbs), VarBytes)

    def frame_outbound_batch(self, items: Sequence[OutboundItem], now_ms: int) -> bytes:
        """Frame several stored outbound payloads of one destination as one
        encoded, signed :class:`~.messages.QsToQsBatch` (docs/decisions.md,
        "QS-to-QS batches"): one timestamp and one signature for all, each
        payload framed as stored with its own message id."""
        destinations = {item.destination for item in items}
        if len(destinations) != 1 or not 1 <= len(items) <= MAX_BATCH_MESSAGES:
            raise ValueError(f"a batch is 1..{MAX_BATCH_MESSAGES} items of one destination")
        tbs = encode_qs_to_qs_batch_tbs(self.config.domain, Fqdn(items[0].destination), now_ms,
                                        [(item.message_id, item.payload) for item in items])
        return tbs + encode(hs_sign(self.keys.signing_key, QS_TO_QS_BATCH_LABEL, tbs), VarBytes)

    # The checks of a federated message, shared by a lone QsToQsMessage and
    # the entries of a QsToQsBatch (#federated-qs-to-qs-communication):
    # _check_frame (partner, source, destination, age) and the signature
    # once per request; _check_group, _admit (configs, rate limits) per
    # message; _store_admitted (replay, enqueue, id) inside the transaction.

    def _check_frame(self, source: Fqdn, destination: Fqdn, timestamp: int, now_ms: int, what: str) -> None:
        cfg = self.config
        if not cfg.federates_with(source):
            raise Forbidden(f"{source} is not a federation partner", code="domain_not_allowed")
        if source == cfg.domain:
            raise Forbidden(f"a {what} from our own domain", code="wrong_source")
        if destination != cfg.domain:
            raise Forbidden(f"{what} is for {destination}, this is {cfg.domain}", code="wrong_destination")
        self._check_timestamp(timestamp, now_ms, cfg.max_inter_qs_token_age_ms, what)

    @staticmethod
    def _check_group(source: Fqdn, payload: FanOutMessage) -> GroupId:
        """The payload's group, which must be one of ``source``'s (403
        ``not_group_owner``; threat_model/stride/security_requirements/federated_homeservers.md#message-fan-out)."""
        group_id = group_id_of(payload)
        if group_id.ds_domain != source:
            raise Forbidden(f"group {group_id} is not a group of {source}", code="not_group_owner")
        return group_id

    def _admit(self, source: Fqdn, message_id: bytes, payload: FanOutMessage, group_id: GroupId,
               configs: list[DigestedConfig], now_ms: int) -> "_Admitted":
        """Every check of one authenticated federated message that needs no
        store write: its configs name this homeserver (403), they open, and
        the rate limits (#rate-limiting) per source domain, per client queue
        config and per queue admit it (429 with Retry-After). The counters
        are in memory (docs/decisions.md), so a 429 leaves no trace but them
        and the sender's retry is clean."""
        cfg = self.config
        if any(c.client_homeserver_domain != cfg.domain for c in payload.client_queue_configs):
            raise Forbidden("the message holds queue configs of another homeserver", code="misdirected_config")
        opened = self._open_all(configs)
        per_domain, per_config, per_queue = (cfg.rate_limit_per_domain, cfg.rate_limit_per_client_queue_config,
                                             cfg.rate_limit_per_queue)
        hits = [] if per_domain is None else [(("domain", source.value), per_domain.limit, per_domain.window_ms)]
        for _, digest, o in opened:
            if o is None:   # configs that do not open reach nobody: they are only refused
                continue
            if per_config is not None:
                hits.append((("config", digest), per_config.limit, per_config.window_ms))
            if per_queue is not None:
                queue_id = o.queue_id if isinstance(o, OpenedQueueConfig) else _queue_id(o)
                hits.append((("queue", queue_id), per_queue.limit, per_queue.window_ms))
        over = self.rate_limits.hit_all(hits, now_ms)
        if over is not None:
            (kind, _), window_end = over
            retry_after = max(1, -(-(window_end - now_ms) // 1000))
            raise RateLimited(f"rate limit for {kind} exceeded", retry_after=retry_after)
        result = LocalEnqueueResult()
        candidates = self._candidates(opened, group_id, result)
        return _Admitted(message_id, group_id, candidates, result,
                         encode(payload.message_content, MessageContent))

    def _store_admitted(self, source: str, admitted: "_Admitted", now_ms: int) -> FederatedEnqueueResult:
        """Inside the caller's transaction: a taken message id gets its first
        answer and nothing is enqueued; a new one is enqueued and remembered
        with its answer, so an id is remembered exactly when its message
        was enqueued."""
        cfg = self.config
        first = self._first_answer(source, admitted.message_id, now_ms)
        if first is not None:
            log.info("replayed QS-to-QS message %s from %s: the first answer again, nothing enqueued",
                     admitted.message_id.hex(), source)
            return FederatedEnqueueResult(first, [], duplicate=True)
        result = admitted.result
        self._enqueue_candidates(admitted.candidates, admitted.group_id, admitted.plaintext, now_ms, result)
        self._remember(source, admitted.message_id, result.queue_deleted,
                       now_ms + cfg.max_inter_qs_token_age_ms + cfg.max_clock_skew_ms)
        return FederatedEnqueueResult(FederatedEnqueueResponse(result.queue_deleted), result.enqueued)

    def federated_enqueue(self, message: QsToQsMessage, now_ms: int, source_keys: Sequence[bytes] | None, *,
                          received: bytes | None = None) -> FederatedEnqueueResult:
        """Accept a QsToQsMessage from a remote QS.

        ``source_keys`` are the verifying keys of the source QS the caller
        holds (its remote key cache), or None if it holds none; when none of
        them verifies the signature the core raises :class:`UnknownSourceKey`
        (401) and the caller may fetch the keys and call once more.
        ``received`` is, when given, the bytes the message was strictly
        decoded from; the signature is then checked over a slice of them
        (:func:`~.messages.received_qs_to_qs_tbs`) rather than over a
        re-encoding of the whole fan-out.

        Checks, in this order (cheap first, and nothing is enqueued unless
        all pass): the source is a domain we federate with (403); we are the
        destination (403); the timestamp is within the maximal age and not in
        the future (401); the group of the payload is the source's — its
        GroupId's ``ds_domain`` is the source domain (403 ``not_group_owner``,
        ``threat_model/stride/security_requirements/federated_homeservers.md#message-fan-out``:
        no homeserver fans out on behalf of another; checked before the
        signature, so such a message makes the QS fetch no key); the
        signature verifies under one of ``source_keys`` (401
        :class:`UnknownSourceKey`); every config names this homeserver
        (403); rate limits per source domain, per client queue config and
        per queue (429 with Retry-After). Then the message is processed like
        one from the local DS (``#enqueuing-messages``), unless its id was
        taken already: a replay (the sender's retry after a lost answer)
        enqueues nothing and gets the answer the first delivery got, stored
        with the id in the enqueue's transaction (``duplicate`` in the result).
        """
        self._check_frame(message.source, message.destination, message.timestamp, now_ms, "QsToQsMessage")
        group_id = self._check_group(message.source, message.payload)
        self._verify_remote_signature(
            message.source, source_keys, QS_TO_QS_LABEL, message.signature,
            lambda: message.tbs() if received is None else received_qs_to_qs_tbs(received, message))
        admitted = self._admit(message.source, message.message_id, message.payload, group_id,
                               self._received_configs(message, received), now_ms)
        with self.transaction():
            return self._store_admitted(message.source.value, admitted, now_ms)

    def federated_enqueue_batch(self, batch: QsToQsBatch, now_ms: int, source_keys: Sequence[bytes] | None, *,
                                received: bytes | None = None) -> "FederatedBatchResult":
        """Accept a :class:`~.messages.QsToQsBatch`: several messages of one
        source for this QS in one request (docs/decisions.md, "QS-to-QS
        batches").

        The request as a whole is checked once, as a lone QsToQsMessage
        would be, and refused as a whole (raises) if it fails: at least one
        and at most :data:`~.messages.MAX_BATCH_MESSAGES` entries (400
        ``empty_batch`` / 413 ``batch_too_large``), partner, source,
        destination, age, then the signature (:class:`UnknownSourceKey` as in
        :meth:`federated_enqueue`). Then each entry on its own: its payload
        decodes strictly as a FanOutMessage (400 ``bad_payload``), and the
        checks of :meth:`federated_enqueue` that concern one message (group
        owner, configs of this homeserver, rate limits). An entry that fails
        gets its refusal in ``results``; the others go on — except after a
        429: the entries behind a rate-limited one get the same 429 without
        being looked at, so that none of them reaches a queue before it
        (the sender retries them in order; the destination's order holds). Finally every
        admitted entry is replay-checked, enqueued and remembered in ONE
        store transaction: after a crash all of the batch's enqueues
        happened or none did. Entries with an id taken before — by an
        earlier request or by an earlier entry of this batch — get the
        first answer and enqueue nothing.
        """
        n = len(batch.entries)
        if n == 0:
            raise Malformed("a QsToQsBatch carries at least one message", code="empty_batch")
        if n > MAX_BATCH_MESSAGES:
            raise TooLarge(f"a QsToQsBatch carries at most {MAX_BATCH_MESSAGES} messages, not {n}",
                           code="batch_too_large")
        self._check_frame(batch.source, batch.destination, batch.timestamp, now_ms, "QsToQsBatch")
        self._verify_remote_signature(
            batch.source, source_keys, QS_TO_QS_BATCH_LABEL, batch.signature,
            lambda: encode(QsToQsBatchTBS(batch.source, batch.destination, batch.timestamp, batch.entries))
            if received is None else received_batch_tbs(received, batch))
        admitted: list[_Admitted | ProtocolError] = []
        limited: RateLimited | None = None
        for entry in batch.entries:
            if limited is not None:   # keep the order: nothing overtakes a message told to come back
                admitted.append(limited)
                continue
            try:
                try:
                    payload = decode(FanOutMessage, entry.payload)
                except DecodeError as e:
                    raise Malformed(f"the payload is not a FanOutMessage: {e}", code="bad_payload") from None
                group_id = self._check_group(batch.source, payload)
                configs = self.config_lists.decode(payload_config_list(entry.payload))
                admitted.append(self._admit(batch.source, entry.message_id, payload, group_id, configs, now_ms))
            except RateLimited as e:
                limited = e
                admitted.append(e)
            except ProtocolError as e:
                admitted.append(e)
        source = batch.source.value
        results: list[FederatedEnqueueResult | ProtocolError] = []
        with self.transaction():
            for a in admitted:
                results.append(a if isinstance(a, ProtocolError) else self._store_admitted(source, a, now_ms))
        return FederatedBatchResult(results)

    def _verify_remote_signature(self, source: Fqdn, keys: Sequence[bytes] | None, label: str, signature: bytes,
                                 tbs: Callable[[], bytes]) -> None:
        if keys is None:
            raise UnknownSourceKey(f"no verifying key of {source} at hand", source=source)
        signed = tbs()
        for key in keys:
            try:
                hs_verify(key, label, signed, signature)
                return
            except CryptoError:
                continue
        raise UnknownSourceKey(f"{label} signature does not verify", source=source)


@dataclass
class _PreparedLocal:
    """A local hand-over checked and opened, ready for its transaction
    (:meth:`QsCore._store_local`)."""
    message_id: bytes | None
    group_id: GroupId
    plaintext: bytes
    candidates: list[tuple[ClientQueueConfig, OpenedQueueConfig]]
    forward: list[tuple[Fqdn, bytes, bytes]]   # (domain, outbound message id, encoded FanOutMessage)
    result: LocalEnqueueResult


@dataclass
class _Admitted:
    """A federated message that passed every check but the replay check:
    what its enqueue needs (:meth:`QsCore._store_admitted`)."""
    message_id: bytes
    group_id: GroupId
    candidates: list[tuple[ClientQueueConfig, OpenedQueueConfig]]
    result: LocalEnqueueResult   # configs already reported (rejected, QueueDeleted) while opening
    plaintext: bytes


@dataclass
class FederatedBatchResult:
    """What :meth:`QsCore.federated_enqueue_batch` did: per entry, in order,
    its :class:`FederatedEnqueueResult` or the refusal it got."""
    results: list[FederatedEnqueueResult | ProtocolError]

    @property
    def enqueued(self) -> list[QsCid]:
        """The QsCids that received any of the batch's messages (wake-ups)."""
        return [c for r in self.results if isinstance(r, FederatedEnqueueResult) for c in r.enqueued]

    @property
    def duplicates(self) -> int:
        return sum(1 for r in self.results if isinstance(r, FederatedEnqueueResult) and r.duplicate)

    def response(self) -> FederatedEnqueueBatchResponse:
        """The answer for the source QS: one result per entry."""
        return FederatedEnqueueBatchResponse([
            BatchAccepted(r.response) if isinstance(r, FederatedEnqueueResult)
            else BatchRefused(r.status, r.code, r.message, r.retry_after or 0)
            for r in self.results])
