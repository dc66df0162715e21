"""RFC 9420 wire structs, declared once with :mod:`phoenix_ref.codec`.

Class and field names follow the RFC's presentation-language definitions so
that a reader can search the RFC for them. Section references:

* §5.3 Credential / Certificate, §5.2 KeyPackageRef and ProposalRef
* §6 Sender, FramedContent, MLSMessage; §6.1 FramedContentTBS,
  FramedContentAuthData, AuthenticatedContent; §6.2 PublicMessage;
  §6.3 PrivateMessage, PrivateMessageContent, PrivateContentAAD,
  SenderData, SenderDataAAD
* §7.1 ParentNode; §7.2 LeafNode, LeafNodeTBS, Capabilities, Lifetime,
  Extension; §7.6 UpdatePathNode, UpdatePath
* §8.1 GroupContext; §8.4 PreSharedKeyID
* §10 KeyPackage, KeyPackageTBS
* §12.1 Proposal and its cases; §12.4 ProposalOrRef, Commit;
  §12.4.3 GroupInfo, GroupSecrets, EncryptedGroupSecrets, Welcome;
  §12.4.3.3 Node and the ratchet tree ``optional<Node> ratchet_tree<V>``

Two ways of writing the RFC's ``select``:

* Where a ``select`` names its fields (``case basic: opaque identity<V>``),
  the struct is a :func:`select_struct`: every case field is a dataclass field
  annotated with :func:`selected`, present (not ``None``) exactly when the
  selector matches. ``Credential(CredentialType.basic, identity=b"alice")``.
* Where a ``select`` embeds whole structs without a field name (``Proposal``
  embeds ``Add``, ``Update``, …), the union is a codec ``variant`` whose
  value *is* the case struct: a decoded Proposal is an :class:`Add`, an
  :class:`Update`, …  Encode such a value with ``encode(p, Proposal)``
  (plain ``encode(p)`` gives the bare case struct, as ``Add`` alone is
  serialized in the RFC's ``messages`` test vectors).

``FramedContentAuthData`` depends on the content type of the surrounding
FramedContent (§6.1) and ``PrivateMessageContent`` on the content type of the
PrivateMessage (§6.3.1); both come with explicit read/write functions.

Decoding is strict: unknown credential, proposal, content, sender, node,
PSK and wire-format types are a :class:`~phoenix_ref.codec.DecodeError`.
Integers that the RFC leaves open for GREASE and extension (cipher suites,
extension types, capability lists) are kept as plain ``uint16``.
"""

from __future__ import annotations

import enum as _enum
from dataclasses import dataclass
from typing import Any, Callable

from .. import crypto
from ..codec import (
    U8, U16, U32, U64, DecodeError, EncodeError, Reader, VarBytes, WireType,
    decode, encode, enum, fixed, optional, struct, variant, vec, wire_type_of,
)
from ..codec import keep_encoding, select_struct, selected

# --- enums and plain integer types (§6, §7.2, §12.1, §17) --------------------


class ProtocolVersion(_enum.IntEnum):
    mls10 = 1


class ContentType(_enum.IntEnum):
    application = 1
    proposal = 2
    commit = 3


class SenderType(_enum.IntEnum):
    member = 1
    external = 2
    new_member_proposal = 3
    new_member_commit = 4


class WireFormat(_enum.IntEnum):
    """§17.2 "MLS Wire Formats"."""
    mls_public_message = 1
    mls_private_message = 2
    mls_welcome = 3
    mls_group_info = 4
    mls_key_package = 5


class CredentialType(_enum.IntEnum):
    """§17.5; other values are refused when decoding a Credential."""
    basic = 1
    x509 = 2


class LeafNodeSource(_enum.IntEnum):
    key_package = 1
    update = 2
    commit = 3


class NodeType(_enum.IntEnum):
    leaf = 1
    parent = 2


class ProposalType(_enum.IntEnum):
    """§17.4 "MLS Proposal Types"."""
    add = 1
    update = 2
    remove = 3
    psk = 4
    reinit = 5
    external_init = 6
    group_context_extensions = 7


class PSKType(_enum.IntEnum):
    external = 1
    resumption = 2


class ResumptionPSKUsage(_enum.IntEnum):
    application = 1
    reinit = 2
    branch = 3


class ProposalOrRefType(_enum.IntEnum):
    proposal = 1
    reference = 2


class ExtensionType(_enum.IntEnum):
    """§17.3 "MLS Extension Types" (the RFC's own; Phoenix's are in extensions.py).

    ``Extension.extension_type`` stays a plain uint16 so that GREASE and
    unknown types survive decoding (§13).
    """
    application_id = 1
    ratchet_tree = 2
    required_capabilities = 3
    external_pub = 4
    external_senders = 5


CIPHER_SUITE_1 = 1  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (§17.1)

Version = enum(U16, ProtocolVersion)
CipherSuite = U16
HPKEPublicKey = VarBytes
SignaturePublicKey = VarBytes
MAC = VarBytes
HashReference = VarBytes
KeyPackageRef = VarBytes
ProposalRef = VarBytes

# --- credentials (§5.3) --------------------------------------------------------


@struct
class Certificate:
    cert_data: VarBytes


@select_struct
class Credential:
    credential_type: enum(U16, CredentialType)
    identity: selected("credential_type", {CredentialType.basic: VarBytes}) = None
    certificates: selected("credential_type", {CredentialType.x509: vec(Certificate)}) = None

    @classmethod
    def basic(cls, identity: bytes) -> "Credential":
        return cls(CredentialType.basic, identity=identity)

    @classmethod
    def x509(cls, certificates: list[bytes]) -> "Credential":
        return cls(CredentialType.x509, certificates=[Certificate(c) for c in certificates])


# --- leaf and parent nodes (§7.1, §7.2) ------------------------------------------


@struct
class Extension:
    extension_type: U16
    extension_data: VarBytes


@struct
class Capabilities:
    versions: vec(U16)
    cipher_suites: vec(U16)
    extensions: vec(U16)
    proposals: vec(U16)
    credentials: vec(U16)


@struct
class Lifetime:
    not_before: U64
    not_after: U64


@struct
class ParentNode:
    encryption_key: HPKEPublicKey
    parent_hash: VarBytes
    unmerged_leaves: vec(U32)


@select_struct
class LeafNode:
    encryption_key: HPKEPublicKey
    signature_key: SignaturePublicKey
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: enum(U8, LeafNodeSource)
    lifetime: selected("leaf_node_source", {LeafNodeSource.key_package: Lifetime})
    parent_hash: selected("leaf_node_source", {LeafNodeSource.commit: VarBytes})
    extensions: vec(Extension)
    signature: VarBytes


@select_struct
class LeafNodeTBS:
    encryption_key: HPKEPublicKey
    signature_key: SignaturePublicKey
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: enum(U8, LeafNodeSource)
    lifetime: selected("leaf_node_source", {LeafNodeSource.key_package: Lifetime})
    parent_hash: selected("leaf_node_source", {LeafNodeSource.commit: VarBytes})
    extensions: vec(Extension)
    group_id: selected("leaf_node_source", {LeafNodeSource.update: VarBytes,
                                            LeafNodeSource.commit: VarBytes})
    leaf_index: selected("leaf_node_source", {LeafNodeSource.update: U32,
                                              LeafNodeSource.commit: U32})


def leaf_node_tbs(leaf: LeafNode, group_id: bytes | None, leaf_index: int | None) -> bytes:
    """The serialized LeafNodeTBS that ``leaf.signature`` covers (§7.2).

    ``group_id`` and ``leaf_index`` are part of it only for the ``update`` and
    ``commit`` sources; for ``key_package`` they are ignored.
    """
    in_group = leaf.leaf_node_source != LeafNodeSource.key_package
    if in_group and (group_id is None or leaf_index is None):
        raise ValueError("a LeafNode from an update or commit is signed with group_id and leaf_index")
    return encode(LeafNodeTBS(
        leaf.encryption_key, leaf.signature_key, leaf.credential, leaf.capabilities,
        leaf.leaf_node_source, leaf.lifetime, leaf.parent_hash, leaf.extensions,
        group_id if in_group else None, leaf_index if in_group else None,
    ))


@select_struct
class Node:
    """§12.4.3.3; the ratchet tree is ``optional<Node> ratchet_tree<V>``."""
    node_type: enum(U8, NodeType)
    leaf_node: selected("node_type", {NodeType.leaf: LeafNode}) = None
    parent_node: selected("node_type", {NodeType.parent: ParentNode}) = None

    @classmethod
    def of(cls, node: "LeafNode | ParentNode") -> "Node":
        if isinstance(node, LeafNode):
            return cls(NodeType.leaf, leaf_node=node)
        return cls(NodeType.parent, parent_node=node)

    @property
    def value(self) -> "LeafNode | ParentNode":
        return self.leaf_node if self.node_type == NodeType.leaf else self.parent_node


RatchetTree = vec(optional(Node))  # optional<Node> ratchet_tree<V>


def encode_ratchet_tree(nodes: list[Node | None]) -> bytes:
    return encode(nodes, RatchetTree)


def decode_ratchet_tree(data: bytes) -> list[Node | None]:
    return decode(RatchetTree, data)


# --- update paths (§7.6) ------------------------------------------------------------

HPKECiphertext = crypto.HPKECiphertext


@struct
class UpdatePathNode:
    encryption_key: HPKEPublicKey
    encrypted_path_secret: vec(HPKECiphertext)


@struct
class UpdatePath:
    leaf_node: LeafNode
    nodes: vec(UpdatePathNode)


# --- group context and PSKs (§8.1, §8.4) -------------------------------------------


@struct
class GroupContext:
    version: Version
    cipher_suite: CipherSuite
    group_id: VarBytes
    epoch: U64
    tree_hash: VarBytes
    confirmed_transcript_hash: VarBytes
    extensions: vec(Extension)


@select_struct
class PreSharedKeyID:
    psktype: enum(U8, PSKType)
    psk_id: selected("psktype", {PSKType.external: VarBytes})
    usage: selected("psktype", {PSKType.resumption: enum(U8, ResumptionPSKUsage)})
    psk_group_id: selected("psktype", {PSKType.resumption: VarBytes})
    psk_epoch: selected("psktype", {PSKType.resumption: U64})
    psk_nonce: VarBytes

    @classmethod
    def external(cls, psk_id: bytes, psk_nonce: bytes) -> "PreSharedKeyID":
        return cls(PSKType.external, psk_id, None, None, None, psk_nonce)

    @classmethod
    def resumption(cls, usage: ResumptionPSKUsage, psk_group_id: bytes, psk_epoch: int,
                   psk_nonce: bytes) -> "PreSharedKeyID":
        return cls(PSKType.resumption, None, usage, psk_group_id, psk_epoch, psk_nonce)


# --- key packages (§10) -------------------------------------------------------------


@struct
class KeyPackageTBS:
    version: Version
    cipher_suite: CipherSuite
    init_key: HPKEPublicKey
    leaf_node: LeafNode
    extensions: vec(Extension)


@struct
class KeyPackage:
    version: Version
    cipher_suite: CipherSuite
    init_key: HPKEPublicKey
    leaf_node: LeafNode
    extensions: vec(Extension)
    signature: VarBytes

    def tbs(self) -> bytes:
        """Serialized KeyPackageTBS, the content of the "KeyPackageTBS" signature."""
        return encode(KeyPackageTBS(self.version, self.cipher_suite, self.init_key,
                                    self.leaf_node, self.extensions))


def make_key_package_ref(key_package: KeyPackage) -> bytes:
    """KeyPackageRef = RefHash("MLS 1.0 KeyPackage Reference", KeyPackage) — §5.2."""
    return crypto.ref_hash("MLS 1.0 KeyPackage Reference", encode(key_package))


# --- proposals (§12.1) -------------------------------------------------------------


@struct
class Add:
    key_package: KeyPackage


@struct
class Update:
    leaf_node: LeafNode


@struct
class Remove:
    removed: U32


@struct
class PreSharedKey:
    psk: PreSharedKeyID


@struct
class ReInit:
    group_id: VarBytes
    version: Version
    cipher_suite: CipherSuite
    extensions: vec(Extension)


@struct
class ExternalInit:
    kem_output: VarBytes


@struct
class GroupContextExtensions:
    extensions: vec(Extension)


PROPOSAL_CASES: dict[int, type] = {
    ProposalType.add: Add,
    ProposalType.update: Update,
    ProposalType.remove: Remove,
    ProposalType.psk: PreSharedKey,
    ProposalType.reinit: ReInit,
    ProposalType.external_init: ExternalInit,
    ProposalType.group_context_extensions: GroupContextExtensions,
}
Proposal = variant(U16, PROPOSAL_CASES, "Proposal")
_PROPOSAL_TYPE_OF = {cls: ProposalType(t) for t, cls in PROPOSAL_CASES.items()}


def proposal_type(proposal: Any) -> ProposalType:
    """The ProposalType of a proposal value (an Add, Update, … instance)."""
    try:
        return _PROPOSAL_TYPE_OF[type(proposal)]
    except KeyError:
        raise TypeError(f"{type(proposal).__name__} is not a proposal") from None


def encode_proposal(proposal: Any) -> bytes:
    return encode(proposal, Proposal)


def decode_proposal(data: bytes) -> Any:
    return decode(Proposal, data)


# --- commit (§12.4) ------------------------------------------------------------------


@select_struct
class ProposalOrRef:
    type: enum(U8, ProposalOrRefType)
    proposal: selected("type", {ProposalOrRefType.proposal: Proposal}) = None
    reference: selected("type", {ProposalOrRefType.reference: ProposalRef}) = None

    @classmethod
    def by_value(cls, proposal: Any) -> "ProposalOrRef":
        return cls(ProposalOrRefType.proposal, proposal=proposal)

    @classmethod
    def by_reference(cls, ref: bytes) -> "ProposalOrRef":
        return cls(ProposalOrRefType.reference, reference=ref)


@keep_encoding   # encoded several times by a receiver (signed content, transcript, ...)
@struct
class Commit:
    proposals: vec(ProposalOrRef)
    path: optional(UpdatePath)


# --- framing (§6) ---------------------------------------------------------------------


@select_struct
class Sender:
    sender_type: enum(U8, SenderType)
    leaf_index: selected("sender_type", {SenderType.member: U32}) = None
    sender_index: selected("sender_type", {SenderType.external: U32}) = None

    @classmethod
    def member(cls, leaf_index: int) -> "Sender":
        return cls(SenderType.member, leaf_index=leaf_index)

    @classmethod
    def external(cls, sender_index: int) -> "Sender":
        return cls(SenderType.external, sender_index=sender_index)

    @classmethod
    def new_member_proposal(cls) -> "Sender":
        return cls(SenderType.new_member_proposal)

    @classmethod
    def new_member_commit(cls) -> "Sender":
        return cls(SenderType.new_member_commit)


@select_struct
class FramedContent:
    group_id: VarBytes
    epoch: U64
    sender: Sender
    authenticated_data: VarBytes
    content_type: enum(U8, ContentType)
    application_data: selected("content_type", {ContentType.application: VarBytes}) = None
    proposal: selected("content_type", {ContentType.proposal: Proposal}) = None
    commit: selected("content_type", {ContentType.commit: Commit}) = None


@dataclass(frozen=True)
class FramedContentAuthData:
    """§6.1: the signature, and the confirmation tag for a commit only.

    Its encoding depends on the content type of the FramedContent it
    authenticates; use :func:`auth_data_wire` or a struct that carries it.
    """
    signature: bytes
    confirmation_tag: bytes | None = None


class _AuthDataWire(WireType):
    """FramedContentAuthData for a known content type."""

    def __init__(self, with_tag: bool):
        self.with_tag = with_tag
        self.name = "FramedContentAuthData"

    def write(self, value: FramedContentAuthData, out: bytearray) -> None:
        if not isinstance(value, FramedContentAuthData):
            raise EncodeError(f"{type(value).__name__} is not FramedContentAuthData")
        if self.with_tag != (value.confirmation_tag is not None):
            raise EncodeError("confirmation_tag must be present exactly for a commit")
        wire_type_of(VarBytes).write(value.signature, out)
        if self.with_tag:
            wire_type_of(MAC).write(value.confirmation_tag, out)

    def read(self, r: Reader) -> FramedContentAuthData:
        vb = wire_type_of(VarBytes)
        try:
            signature = vb.read(r)
        except DecodeError as e:
            raise e.within("FramedContentAuthData", "signature") from None
        if not self.with_tag:
            return FramedContentAuthData(signature)
        try:
            return FramedContentAuthData(signature, vb.read(r))
        except DecodeError as e:
            raise e.within("FramedContentAuthData", "confirmation_tag") from None


_AUTH_PLAIN = _AuthDataWire(False)
_AUTH_COMMIT = _AuthDataWire(True)


def auth_data_wire(content_type: ContentType) -> WireType:
    """The wire type of FramedContentAuthData for ``content_type`` (§6.1)."""
    return _AUTH_COMMIT if content_type == ContentType.commit else _AUTH_PLAIN


_AUTH_BY_CONTENT = {ContentType.application: _AUTH_PLAIN,
                    ContentType.proposal: _AUTH_PLAIN,
                    ContentType.commit: _AUTH_COMMIT}


def _content_type_of(field: str) -> Callable[[dict], Any]:
    return lambda earlier: earlier[field].content_type


def _sender_type_of(field: str) -> Callable[[dict], Any]:
    return lambda earlier: earlier[field].sender.sender_type


@select_struct
class AuthenticatedContent:
    wire_format: enum(U16, WireFormat)
    content: FramedContent
    auth: selected(_content_type_of("content"), _AUTH_BY_CONTENT)


@select_struct
class FramedContentTBS:
    version: Version
    wire_format: enum(U16, WireFormat)
    content: FramedContent
    context: selected(_sender_type_of("content"), {SenderType.member: GroupContext,
                                                   SenderType.new_member_commit: GroupContext})


@select_struct
class AuthenticatedContentTBM:
    """§6.2: the input of the membership tag MAC."""
    content_tbs: FramedContentTBS
    auth: selected(lambda e: e["content_tbs"].content.content_type, _AUTH_BY_CONTENT)


@select_struct
class PublicMessage:
    content: FramedContent
    auth: selected(_content_type_of("content"), _AUTH_BY_CONTENT)
    membership_tag: selected(_sender_type_of("content"), {SenderType.member: MAC}) = None


@struct
class PrivateMessage:
    group_id: VarBytes
    epoch: U64
    content_type: enum(U8, ContentType)
    authenticated_data: VarBytes
    encrypted_sender_data: VarBytes
    ciphertext: VarBytes


@dataclass(frozen=True)
class PrivateMessageContent:
    """§6.3.1: the plaintext of a PrivateMessage.

    Exactly one of ``application_data``, ``proposal``, ``commit`` is set; the
    content type travels outside, in the PrivateMessage. ``padding`` is the
    number of zero octets that follow the auth data.
    """
    application_data: bytes | None
    proposal: Any
    commit: Commit | None
    auth: FramedContentAuthData
    padding: int = 0

    @property
    def content_type(self) -> ContentType:
        if self.application_data is not None:
            return ContentType.application
        if self.proposal is not None:
            return ContentType.proposal
        return ContentType.commit


_CONTENT_WIRE = {ContentType.application: VarBytes,
                 ContentType.proposal: Proposal,
                 ContentType.commit: Commit}


def encode_private_message_content(pmc: PrivateMessageContent) -> bytes:
    """Serialize a PrivateMessageContent with its zero padding (§6.3.1)."""
    ct = pmc.content_type
    body = {ContentType.application: pmc.application_data,
            ContentType.proposal: pmc.proposal,
            ContentType.commit: pmc.commit}[ct]
    out = bytearray()
    wire_type_of(_CONTENT_WIRE[ct]).write(body, out)
    auth_data_wire(ct).write(pmc.auth, out)
    out += bytes(pmc.padding)
    return bytes(out)


def decode_private_message_content(data: bytes, content_type: ContentType) -> PrivateMessageContent:
    """Parse a decrypted PrivateMessageContent of the given content type.

    The padding must be all zeros (§6.3.1: "MUST ... be ... set to zero");
    anything else is a :class:`DecodeError`.
    """
    ct = ContentType(content_type)
    r = Reader(bytes(data))
    try:
        body = wire_type_of(_CONTENT_WIRE[ct]).read(r)
        auth = auth_data_wire(ct).read(r)
    except DecodeError as e:
        raise e.within("PrivateMessageContent") from None
    padding = r.take(r.end - r.pos)
    if padding.count(0) != len(padding):
        raise DecodeError("non-zero padding", ("PrivateMessageContent", "padding"))
    return PrivateMessageContent(
        body if ct == ContentType.application else None,
        body if ct == ContentType.proposal else None,
        body if ct == ContentType.commit else None,
        auth, len(padding))


@struct
class PrivateContentAAD:
    group_id: VarBytes
    epoch: U64
    content_type: enum(U8, ContentType)
    authenticated_data: VarBytes


@struct
class SenderData:
    leaf_index: U32
    generation: U32
    reuse_guard: fixed(4)


@struct
class SenderDataAAD:
    group_id: VarBytes
    epoch: U64
    content_type: enum(U8, ContentType)


def make_proposal_ref(authenticated_content: AuthenticatedContent | bytes) -> bytes:
    """ProposalRef = RefHash("MLS 1.0 Proposal Reference", AuthenticatedContent) — §5.2."""
    data = authenticated_content if isinstance(authenticated_content, (bytes, bytearray)) \
        else encode(authenticated_content)
    return crypto.ref_hash("MLS 1.0 Proposal Reference", bytes(data))


# --- transcript hash inputs (§8.2) ----------------------------------------------------


@struct
class ConfirmedTranscriptHashInput:
    wire_format: enum(U16, WireFormat)
    content: FramedContent  # content_type == commit
    signature: VarBytes


@struct
class InterimTranscriptHashInput:
    confirmation_tag: MAC


# --- group info and welcome (§12.4.3) -------------------------------------------------


@struct
class GroupInfoTBS:
    group_context: GroupContext
    extensions: vec(Extension)
    confirmation_tag: MAC
    signer: U32


@struct
class GroupInfo:
    group_context: GroupContext
    extensions: vec(Extension)
    confirmation_tag: MAC
    signer: U32
    signature: VarBytes

    def tbs(self) -> bytes:
        """Serialized GroupInfoTBS, the content of the "GroupInfoTBS" signature."""
        return encode(GroupInfoTBS(self.group_context, self.extensions,
                                   self.confirmation_tag, self.signer))


@struct
class PathSecret:
    path_secret: VarBytes


@struct
class GroupSecrets:
    joiner_secret: VarBytes
    path_secret: optional(PathSecret)
    psks: vec(PreSharedKeyID)


@struct
class EncryptedGroupSecrets:
    new_member: KeyPackageRef
    encrypted_group_secrets: HPKECiphertext


@struct
class Welcome:
    cipher_suite: CipherSuite
    secrets: vec(EncryptedGroupSecrets)
    encrypted_group_info: VarBytes


# --- MLSMessage (§6) ----------------------------------------------------------------------

_BODY_FIELD = {
    WireFormat.mls_public_message: "public_message",
    WireFormat.mls_private_message: "private_message",
    WireFormat.mls_welcome: "welcome",
    WireFormat.mls_group_info: "group_info",
    WireFormat.mls_key_package: "key_package",
}
_WIRE_FORMAT_OF = {PublicMessage: WireFormat.mls_public_message,
                   PrivateMessage: WireFormat.mls_private_message,
                   Welcome: WireFormat.mls_welcome,
                   GroupInfo: WireFormat.mls_group_info,
                   KeyPackage: WireFormat.mls_key_package}


@select_struct
class MLSMessage:
    version: Version
    wire_format: enum(U16, WireFormat)
    public_message: selected("wire_format", {WireFormat.mls_public_message: PublicMessage}) = None
    private_message: selected("wire_format", {WireFormat.mls_private_message: PrivateMessage}) = None
    welcome: selected("wire_format", {WireFormat.mls_welcome: Welcome}) = None
    group_info: selected("wire_format", {WireFormat.mls_group_info: GroupInfo}) = None
    key_package: selected("wire_format", {WireFormat.mls_key_package: KeyPackage}) = None

    @classmethod
    def wrap(cls, body: Any) -> "MLSMessage":
        """An mls10 MLSMessage carrying ``body`` (a PublicMessage, Welcome, …)."""
        wf = _WIRE_FORMAT_OF.get(type(body))
        if wf is None:
            raise TypeError(f"{type(body).__name__} is not an MLSMessage body")
        return cls(ProtocolVersion.mls10, wf, **{_BODY_FIELD[wf]: body})

    @property
    def body(self) -> Any:
        return getattr(self, _BODY_FIELD[self.wire_format])


__all__ = [
    "select_struct", "selected",
    "ProtocolVersion", "ContentType", "SenderType", "WireFormat", "CredentialType",
    "LeafNodeSource", "NodeType", "ProposalType", "PSKType", "ResumptionPSKUsage",
    "ProposalOrRefType", "ExtensionType", "CIPHER_SUITE_1",
    "Certificate", "Credential", "Extension", "Capabilities", "Lifetime", "ParentNode",
    "LeafNode", "LeafNodeTBS", "leaf_node_tbs", "Node", "RatchetTree",
    "encode_ratchet_tree", "decode_ratchet_tree", "HPKECiphertext", "UpdatePathNode",
    "UpdatePath", "GroupContext", "PreSharedKeyID", "KeyPackageTBS", "KeyPackage",
    "make_key_package_ref", "Add", "Update", "Remove", "PreSharedKey", "ReInit",
    "ExternalInit", "GroupContextExtensions", "PROPOSAL_CASES", "Proposal", "proposal_type",
    "encode_proposal", "decode_proposal", "ProposalOrRef", "Commit", "Sender",
    "FramedContent", "FramedContentAuthData", "auth_data_wire", "AuthenticatedContent",
    "FramedContentTBS", "AuthenticatedContentTBM", "PublicMessage", "PrivateMessage",
    "PrivateMessageContent", "encode_private_message_content",
    "decode_private_message_content", "PrivateContentAAD", "SenderData", "SenderDataAAD",
    "make_proposal_ref", "ConfirmedTranscriptHashInput", "InterimTranscriptHashInput",
    "GroupInfoTBS", "GroupInfo", "PathSecret", "GroupSecrets", "EncryptedGroupSecrets",
    "Welcome", "MLSMessage",
]
