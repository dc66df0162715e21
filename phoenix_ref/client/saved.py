"""The client's state as bytes: one struct per thing the client keeps.

:mod:`.state_store` puts these into SQLite rows. They are encoded with the
project's codec (strict decoding: trailing bytes or an unknown variant is
an error) and hold private keys — signature keys, HPKE keys, queue ratchet
keys, the OPAQUE password, unspent Privacy Pass tokens — in the clear: the
file that holds them is the client's secret (docs/decisions.md,
"Client state on disk").

* :class:`SavedAccount` — the AS identity (signing key, client credential,
  password, direct-queue reader, connection keys), the aliases held, the
  Privacy Pass wallet, the QS identity (keys, QsUid/QsCid, queue ratchet),
  the friendship and profile keys and the AS credentials trusted per domain;
* :class:`SavedKeyPackage` — a published KeyPackage's private keys and leaf;
* :class:`SavedMember` — one group: the MLS state (:meth:`Group.to_bytes
  <phoenix_ref.mls.group.Group.to_bytes>`), the leaf identity, the EAR and
  credential encryption keys and the members' credential information; and,
  while a commit's DS answer is lost (:attr:`GroupMember.unsure
  <phoenix_ref.client.groups.GroupMember.unsure>`), that commit (request,
  MLS pending Commit, the added members' information) and the messages held
  back for the group. Those messages were dequeued already, and the QS has
  no other copy of them; the commit may have made the group's new epoch.
"""

from __future__ import annotations

from typing import Any

from .. import privacy_pass as pp
from ..codec import U8, U32, String, VarBytes, decode, encode, optional, struct, vec
from ..credentials import AsCredentialsResponse, ClientCredential, LeafCredential
from ..crypto import HpkeKeyPair, SigningKey
from ..ids import Alias, ClientId, Fqdn, GroupId, QsCid, QsUid
from ..mls.group import Group
from ..mls.keypackage import KeyPackageBundle
from ..mls.messages import KeyPackage
from ..queue_crypto import QueueRatchetState
from .as_client import AliasIdentity, AsIdentity, DirectQueueReader
from ..queuing.messages import MessageContent
from .groups import GroupMember, PendingRequest, request_type
from .phoenix_credentials import CredentialInformation, LeafIdentity
from .qs_client import QsIdentity
from .session import TokenWallet

__all__ = ["SavedAccount", "SavedKeyPackage", "SavedMember", "ACCOUNT_VERSION", "READABLE_VERSIONS", "read_member",
           "save_account", "restore_account", "save_key_package", "restore_key_package",
           "save_member", "restore_member"]

#: 2: a group keeps an unsure commit and its held messages (SavedMember)
ACCOUNT_VERSION = 2
#: formats this code reads; a format-1 group row is :class:`SavedMemberV1`
READABLE_VERSIONS = (1, 2)


@struct
class SavedKeyPair:
    private: VarBytes
    public: VarBytes


@struct
class SavedQueueReader:
    keys: SavedKeyPair
    state: QueueRatchetState


@struct
class SavedAsIdentity:
    domain: String
    client_id: ClientId
    signing_key: VarBytes
    credential: ClientCredential
    password: VarBytes
    queue: SavedQueueReader
    connection_keys: vec(SavedKeyPair)


@struct
class SavedAlias:
    domain: String
    alias: String
    auth_key: VarBytes
    queue: SavedQueueReader
    connection_keys: vec(SavedKeyPair)


@struct
class SavedWalletEntry:
    domain: String
    issuer_key: optional(VarBytes)
    tokens: vec(pp.Token)


@struct
class SavedQsIdentity:
    domain: String
    user_key: VarBytes
    client_key: VarBytes
    queue_key: SavedKeyPair
    friendship_token: VarBytes
    qs_uid: optional(QsUid)
    qs_cid: optional(QsCid)
    ratchet: QueueRatchetState


@struct
class SavedTrust:
    domain: String
    answer: AsCredentialsResponse


@struct
class SavedAccount:
    version: U8
    as_identity: SavedAsIdentity
    aliases: vec(SavedAlias)
    wallet: vec(SavedWalletEntry)
    qs_identity: SavedQsIdentity
    friendship_key: VarBytes
    profile_key: VarBytes
    trusted: vec(SavedTrust)


@struct
class SavedLeaf:
    signing_key: VarBytes
    credential: LeafCredential
    signature_encryption_key: VarBytes


@struct
class SavedKeyPackage:
    key_package: KeyPackage
    init_priv: VarBytes
    encryption_priv: VarBytes
    signing_key: VarBytes
    leaf: SavedLeaf


@struct
class SavedMemberInfo:
    leaf_index: U32
    info: CredentialInformation


@struct
class SavedRequest:
    """A DS request built by the member: its endpoint name and encoded body."""
    name: String
    body: VarBytes


@struct
class SavedUnsure:
    """A commit whose DS answer was lost: the request to send again, the MLS
    pending Commit (:meth:`Group.pending_to_bytes
    <phoenix_ref.mls.group.Group.pending_to_bytes>`) and the credential
    information of the members it adds."""
    request: SavedRequest
    pending_commit: VarBytes
    pending_adds: vec(CredentialInformation)


@struct
class SavedMember:
    group_id: GroupId
    group: VarBytes
    leaf: SavedLeaf
    ear_key: VarBytes
    credential_key: VarBytes
    members: vec(SavedMemberInfo)
    unsure: optional(SavedUnsure)
    held: vec(MessageContent)


@struct
class SavedMemberV1:
    """A group as format 1 saved it: no unsure commit, no held messages
    (format 1 did not keep them, so a state of that format has none)."""
    group_id: GroupId
    group: VarBytes
    leaf: SavedLeaf
    ear_key: VarBytes
    credential_key: VarBytes
    members: vec(SavedMemberInfo)


def read_member(data: bytes, version: int) -> SavedMember:
    """A group row of an account saved in format ``version``."""
    if version == 1:
        old = decode(SavedMemberV1, data)
        return SavedMember(old.group_id, old.group, old.leaf, old.ear_key, old.credential_key, old.members,
                           None, [])
    return decode(SavedMember, data)


# --- small pieces ---------------------------------------------------------------------------

def _pair(kp: HpkeKeyPair) -> SavedKeyPair:
    return SavedKeyPair(kp.private, kp.public)


def _hpke(saved: SavedKeyPair) -> HpkeKeyPair:
    return HpkeKeyPair(bytes(saved.private), bytes(saved.public))


def _reader(q: DirectQueueReader) -> SavedQueueReader:
    return SavedQueueReader(_pair(q.keys), q.state)


def _queue(saved: SavedQueueReader) -> DirectQueueReader:
    return DirectQueueReader(_hpke(saved.keys), saved.state)


def _keys(keys: dict[bytes, HpkeKeyPair]) -> list[SavedKeyPair]:
    return [_pair(kp) for kp in keys.values()]


def _key_dict(saved: list[SavedKeyPair]) -> dict[bytes, HpkeKeyPair]:
    return {bytes(k.public): _hpke(k) for k in saved}


def save_leaf(leaf: LeafIdentity) -> SavedLeaf:
    return SavedLeaf(leaf.signing_key.private, leaf.credential, leaf.signature_encryption_key)


def restore_leaf(saved: SavedLeaf) -> LeafIdentity:
    return LeafIdentity(SigningKey.from_private(bytes(saved.signing_key)), saved.credential,
                        bytes(saved.signature_encryption_key))


# --- the account ------------------------------------------------------------------------------

def save_account(identity: AsIdentity, aliases: dict[Alias, AliasIdentity], wallet: TokenWallet,
                 qs: QsIdentity, friendship_key: bytes, profile_key: bytes,
                 trusted: dict[Fqdn, AsCredentialsResponse]) -> SavedAccount:
    as_identity = SavedAsIdentity(str(identity.domain), identity.client_id, identity.signing_key.private,
                                  identity.credential, identity.password, _reader(identity.queue),
                                  _keys(identity.connection_keys))
    saved_aliases = [SavedAlias(str(a.domain), str(a.alias), a.auth_key.private, _reader(a.queue),
                                _keys(a.connection_keys)) for a in aliases.values()]
    domains = sorted(set(wallet.tokens) | set(wallet.issuer_keys), key=str)
    entries = [SavedWalletEntry(str(d), wallet.issuer_keys.get(d), list(wallet.tokens.get(d, [])))
               for d in domains]
    qs_identity = SavedQsIdentity(str(qs.domain), qs.user_key.private, qs.client_key.private, _pair(qs.queue_key),
                                  qs.friendship_token, qs.qs_uid, qs.qs_cid, qs.ratchet)
    trust = [SavedTrust(str(d), answer) for d, answer in sorted(trusted.items(), key=lambda kv: str(kv[0]))]
    return SavedAccount(ACCOUNT_VERSION, as_identity, saved_aliases, entries, qs_identity, friendship_key, profile_key,
                       trust)


def restore_account(saved: SavedAccount) -> dict[str, Any]:
    """The pieces :func:`save_account` took, rebuilt (keyword names as there)."""
    if saved.version not in READABLE_VERSIONS:
        raise ValueError(f"saved account has format {saved.version}, this code reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    a = saved.as_identity
    identity = AsIdentity(Fqdn(a.domain), a.client_id, SigningKey.from_private(bytes(a.signing_key)), a.credential,
                          bytes(a.password), _queue(a.queue), _key_dict(a.connection_keys))
    aliases = {}
    for s in saved.aliases:
        ident = AliasIdentity(Fqdn(s.domain), Alias(s.alias), SigningKey.from_private(bytes(s.auth_key)),
                              _queue(s.queue), _key_dict(s.connection_keys))
        aliases[ident.alias] = ident
    wallet = TokenWallet()
    for entry in saved.wallet:
        domain = Fqdn(entry.domain)
        if entry.issuer_key is not None:
            wallet.issuer_keys[domain] = bytes(entry.issuer_key)
        if entry.tokens:
            wallet.tokens[domain] = list(entry.tokens)
    q = saved.qs_identity
    qs = QsIdentity(Fqdn(q.domain), SigningKey.from_private(bytes(q.user_key)),
                    SigningKey.from_private(bytes(q.client_key)), _hpke(q.queue_key), bytes(q.friendship_token),
                    q.qs_uid, q.qs_cid, q.ratchet)
    trusted = {Fqdn(t.domain): t.answer for t in saved.trusted}
    return dict(identity=identity, aliases=aliases, wallet=wallet, qs=qs,
                friendship_key=bytes(saved.friendship_key), profile_key=bytes(saved.profile_key), trusted=trusted)


# --- KeyPackages and groups ----------------------------------------------------------------------

def save_key_package(bundle: KeyPackageBundle, leaf: LeafIdentity) -> SavedKeyPackage:
    return SavedKeyPackage(bundle.key_package, bundle.init_priv, bundle.encryption_priv,
                           bundle.signing_key.private, save_leaf(leaf))


def restore_key_package(saved: SavedKeyPackage) -> tuple[KeyPackageBundle, LeafIdentity]:
    bundle = KeyPackageBundle(saved.key_package, bytes(saved.init_priv), bytes(saved.encryption_priv),
                              SigningKey.from_private(bytes(saved.signing_key)))
    return bundle, restore_leaf(saved.leaf)


def save_member(member: GroupMember) -> SavedMember:
    """One group. Its pending commit is kept only while unsure: otherwise
    the DS has answered and the commit was merged or dropped already."""
    infos = [SavedMemberInfo(leaf, info) for leaf, info in sorted(member.members.items())]
    return SavedMember(member.group_id, member.group.to_bytes(), save_leaf(member.leaf), member.ear_key,
                       member.credential_key, infos, _save_unsure(member), list(member.held))


def restore_member(saved: SavedMember, clock: Any) -> GroupMember:
    group = Group.from_bytes(bytes(saved.group), clock=clock)
    member = GroupMember(saved.group_id, group, restore_leaf(saved.leaf), bytes(saved.ear_key),
                         bytes(saved.credential_key), clock)
    member.members = {m.leaf_index: m.info for m in saved.members}
    if saved.unsure is not None:
        _restore_unsure(member, saved.unsure)
    member.held = list(saved.held)
    return member


def _save_unsure(member: GroupMember) -> SavedUnsure | None:
    if member.unsure is None:
        return None
    pending = member.group.pending_to_bytes()
    if pending is None:       # _submit marks only a commit unsure
        raise ValueError("an unsure request without a pending commit")
    request = SavedRequest(member.unsure.name, encode(member.unsure.body))
    return SavedUnsure(request, pending, list(member.pending_adds))


def _restore_unsure(member: GroupMember, saved: SavedUnsure) -> None:
    """The unsure commit back in place, as :meth:`Messenger.settle
    <phoenix_ref.client.messenger.Messenger.settle>` expects it: the request
    to send again and the MLS Commit pending."""
    kind = request_type(saved.request.name)
    member.group.restore_pending(bytes(saved.pending_commit))
    member.unsure = PendingRequest(saved.request.name, decode(kind, bytes(saved.request.body)))
    member.pending_adds = list(saved.pending_adds)
