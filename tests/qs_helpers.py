"""Builders for QS tests: a QS core over chosen stores, clients with keys,
sealed queue configs, KeyPackages and fan-out messages."""

from __future__ import annotations

import os
from dataclasses import dataclass

from phoenix_ref import endpoints
from phoenix_ref.auth_tokens import QsAuthToken, RequestBinding
from phoenix_ref.client.qs_client import USER_OPERATIONS, QsIdentity
from phoenix_ref.codec import encode
from phoenix_ref.crypto import HpkeKeyPair, SigningKey
from phoenix_ref.federation.outbound import MemoryOutboundStore
from phoenix_ref.federation.outbound_crypto import OutboundKeys
from phoenix_ref.ids import Fqdn, GroupId
from phoenix_ref.mls.extensions import LastResortExtension, QueueConfigExtension, to_extension
from phoenix_ref.mls.extensions import ClientQueueConfig as ExtClientQueueConfig
from phoenix_ref.mls.keypackage import DEFAULT_LIFETIME_SECONDS, create_key_package
from phoenix_ref.mls.messages import ContentType, Credential, KeyPackage, MLSMessage, PrivateMessage
from phoenix_ref.queues import MemoryQueueStore, Queues
from phoenix_ref.queuing.core import QsConfig, QsCore, QsKeys, operation_path
from phoenix_ref.queuing.messages import AddPackage, ApplicationContent, ClientQueueConfig, FanOutMessage
from phoenix_ref.queuing.records import MemoryQsRecords
from phoenix_ref.queuing.store import QsStore

NOW = 1_767_225_600_000
#: The outbound queue key of the test QS stores (fixed, so that another
#: process can reopen a file a test wrote).
OUTBOUND_KEYS = OutboundKeys([b"\x07" * 32])


def make_core(domain: str = "a.example", *, sqlite_dir=None, **config) -> QsCore:
    keys = QsKeys(SigningKey.generate(), HpkeKeyPair.generate())
    if sqlite_dir is None:
        return QsCore(QsConfig(Fqdn(domain), **config), keys, MemoryQsRecords(), Queues(MemoryQueueStore()),
                      MemoryOutboundStore())
    store = QsStore(os.path.join(str(sqlite_dir), f"qs-{domain}.sqlite3"), OUTBOUND_KEYS)
    return QsCore(QsConfig(Fqdn(domain), **config), keys, store.records, Queues(store.queue_store), store.outbound,
                  transaction=store.transaction)


@dataclass
class Client(QsIdentity):
    """A :class:`~phoenix_ref.client.qs_client.QsIdentity` registered
    straight with a QS core (no HTTP), with what core tests vary: the token's
    sender, signing key and audience, and KeyPackages of its own."""
    core: QsCore | None = None

    @classmethod
    def register(cls, core: QsCore, now_ms: int = NOW) -> "Client":
        c = cls.new(core.config.domain)
        c.core = core
        c.created(core.create_user_record(c.create_user_record_params(), now_ms))
        return c

    def token(self, name: str, params, now_ms: int = NOW, *, as_user: bool | None = None,
              key: SigningKey | None = None, domain: str | None = None) -> QsAuthToken:
        """:meth:`QsIdentity.token`; ``as_user`` (default: as the endpoint
        wants), ``key`` and ``domain`` make the wrong tokens tests need."""
        if as_user is None and key is None and domain is None:
            return super().token(name, params, now_ms)
        as_user = name in USER_OPERATIONS if as_user is None else as_user
        sender = self.qs_uid if as_user else self.qs_cid
        key = key or (self.user_key if as_user else self.client_key)
        binding = RequestBinding(Fqdn(domain) if domain else self.domain, operation_path(name), encode(params))
        return QsAuthToken.create(key, sender, now_ms, binding)

    def request(self, name: str, params, now_ms: int = NOW, **wrong):
        """``…Request {auth, params}`` for endpoint ``name`` (see :meth:`token`)."""
        return endpoints.by_name("qs", name).request(self.token(name, params, now_ms, **wrong), params)

    def sealed_config(self, qs_config_key: bytes | None = None, push_token_key: bytes | None = None) -> bytes:
        """A sealed config for this client's QS (its core's key by default)."""
        return super().sealed_config(qs_config_key or self.core.keys.queue_config_key.public, push_token_key)

    def client_queue_config(self, qs_config_key: bytes | None = None) -> ClientQueueConfig:
        return super().client_queue_config(qs_config_key or self.core.keys.queue_config_key.public)

    def key_package(self, *, last_resort: bool = False, with_queue_config: bool = True,
                    config: bytes | None = None, **kw) -> KeyPackage:
        return make_key_package(self.domain.value, config if config is not None else self.sealed_config(),
                                last_resort=last_resort, with_queue_config=with_queue_config, **kw)

    def add_package(self, **kw) -> AddPackage:
        return AddPackage(self.key_package(**kw), os.urandom(40), os.urandom(40))


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
