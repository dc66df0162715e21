"""Builders for QS tests: a QS core over chosen stores, clients with keys,
sealed queue configs, KeyPackages and fan-out messages."""

from __future__ import annotations

import os
from dataclasses import dataclass

from phoenix_ref.auth_tokens import QsAuthToken, RequestBinding
from phoenix_ref.codec import encode
from phoenix_ref.crypto import HpkeKeyPair, SigningKey
from phoenix_ref.federation.outbound import MemoryOutboundStore
from phoenix_ref.ids import Fqdn, GroupId, QsCid, QsUid
from phoenix_ref.mls.extensions import LastResortExtension, QueueConfigExtension, to_extension
from phoenix_ref.mls.extensions import ClientQueueConfig as ExtClientQueueConfig
from phoenix_ref.mls.keypackage import DEFAULT_LIFETIME_SECONDS, create_key_package
from phoenix_ref.mls.messages import ContentType, Credential, KeyPackage, MLSMessage, PrivateMessage
from phoenix_ref.queue_crypto import QueueRatchetState, read_queue_messages
from phoenix_ref.queues import MemoryQueueStore, Queues
from phoenix_ref.queuing.core import QsConfig, QsCore, QsKeys, operation_path
from phoenix_ref.queuing.fanout import seal_queue_config
from phoenix_ref.queuing.messages import (
    AddPackage, ApplicationContent, ClientQueueConfig, CreateUserRecordParams, FanOutMessage,
    QueueConfig,
)
from phoenix_ref.queuing.records import MemoryQsRecords
from phoenix_ref.queuing.store import QsStore

NOW = 1_767_225_600_000


def make_core(domain: str = "a.example", *, sqlite_dir=None, **config) -> QsCore:
    keys = QsKeys(SigningKey.generate(), HpkeKeyPair.generate())
    if sqlite_dir is None:
        return QsCore(QsConfig(Fqdn(domain), **config), keys, MemoryQsRecords(), Queues(MemoryQueueStore()),
                      MemoryOutboundStore())
    store = QsStore(os.path.join(str(sqlite_dir), f"qs-{domain}.sqlite3"))
    return QsCore(QsConfig(Fqdn(domain), **config), keys, store.records, Queues(store.queue_store), store.outbound,
                  transaction=store.transaction)


@dataclass
class Client:
    """A QS client: its keys and ids, and its view of its queue."""
    core: QsCore
    user_key: SigningKey
    client_key: SigningKey
    queue_key: HpkeKeyPair
    friendship_token: bytes
    qs_uid: QsUid | None = None
    qs_cid: QsCid | None = None
    ratchet: QueueRatchetState = QueueRatchetState(None, 0)

    @classmethod
    def register(cls, core: QsCore, now_ms: int = NOW) -> "Client":
        c = cls(core, SigningKey.generate(), SigningKey.generate(), HpkeKeyPair.generate(), os.urandom(32))
        resp = core.create_user_record(CreateUserRecordParams(
            c.user_key.public, c.friendship_token, c.client_key.public, c.queue_key.public), now_ms)
        c.qs_uid, c.qs_cid = resp.qs_uid, resp.qs_cid
        return c

    def token(self, operation: str, params, *, as_user: bool = False, now_ms: int = NOW,
              key: SigningKey | None = None, domain: str | None = None) -> QsAuthToken:
        sender = self.qs_uid if as_user else self.qs_cid
        key = key or (self.user_key if as_user else self.client_key)
        binding = RequestBinding(Fqdn(domain or self.core.config.domain.value), operation_path(operation),
                                 encode(params))
        return QsAuthToken.create(key, sender, now_ms, binding)

    def request(self, cls, operation: str, params, **kw):
        return cls(self.token(operation, params, **kw), params)

    def sealed_config(self, push_key: bytes | None = None) -> bytes:
        return seal_queue_config(self.core.keys.queue_config_key.public, QueueConfig(push_key, self.qs_cid),
                                 queue_encryption_key=self.queue_key, client_record_key=self.client_key)

    def client_queue_config(self) -> ClientQueueConfig:
        return ClientQueueConfig(self.core.config.domain, self.sealed_config())

    def key_package(self, *, last_resort: bool = False, with_queue_config: bool = True,
                    config: bytes | None = None, **kw) -> KeyPackage:
        return make_key_package(self.core.config.domain.value,
                                config if config is not None else self.sealed_config(),
                                last_resort=last_resort, with_queue_config=with_queue_config, **kw)

    def add_package(self, **kw) -> AddPackage:
        return AddPackage(self.key_package(**kw), os.urandom(40), os.urandom(40))

    def read_queue(self, messages) -> list[bytes]:
        """Decrypt dequeued messages in order (skipping ratchet control messages)."""
        out, self.ratchet = read_queue_messages(self.queue_key.private, self.ratchet, messages)
        return out


def make_key_package(domain: str, sealed_config: bytes, *, last_resort: bool = False,
                     with_queue_config: bool = True, signer: SigningKey | None = None,
                     now_ms: int = NOW, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS) -> KeyPackage:
    """A KeyPackage made by the MLS module (RFC 9420 §10: signed leaf, default
    capabilities, lifetime from ``now_ms``) carrying the client's queue config."""
    exts = []
    if with_queue_config:
        exts.append(to_extension(QueueConfigExtension(ExtClientQueueConfig(domain.encode(), sealed_config))))
    if last_resort:
        exts.append(to_extension(LastResortExtension()))
    return create_key_package(signer or SigningKey.generate(), Credential.basic(b"pseudonym"),
                              now=now_ms // 1000, lifetime_seconds=lifetime_seconds,
                              extensions=exts).key_package


def application_message(group_id: GroupId, body: bytes = b"hello") -> ApplicationContent:
    pm = PrivateMessage(group_id.to_mls(), 1, ContentType.application, b"", bytes(16), body)
    return ApplicationContent(MLSMessage.wrap(pm))


def fan_out(configs, group_id: GroupId, body: bytes = b"hello") -> FanOutMessage:
    return FanOutMessage(list(configs), application_message(group_id, body))
