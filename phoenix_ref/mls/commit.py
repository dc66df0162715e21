"""Proposal lists and the epoch transition of a Commit (RFC 9420 §12.1–§12.4.2).

This module holds what a member (:mod:`phoenix_ref.mls.group`) and the
Delivery Service (:mod:`phoenix_ref.mls.public_group`) do alike with a
Commit, i.e. everything that needs no group secret:

* :class:`ProposalStore` — proposals received during the epoch, by
  ProposalRef (§5.2, §12 "cached ... retrieved by hash");
* :func:`resolve_proposals` — ProposalOrRef to proposals with their senders;
* :func:`check_proposal_sender` — which sender types may send which proposal
  (§12.1.8, §6); :func:`sender_signature_key` — whose key verifies a message
  (§6.1);
* :func:`validate_proposal_list` — §12.2 "Proposal List Validation", for
  regular and external Commits, each broken rule its own error class;
* :func:`path_required` — §12.4 "pathRequiredTypes";
* :func:`apply_proposals` — §12.3 "Applying a Proposal List", on a copy of
  the tree;
* :func:`stage_commit` — §12.4.2 "Processing a Commit" up to, but not
  including, the key schedule: apply proposals, validate and merge the
  UpdatePath (leaf node validation, fresh keys, parent hashes), build the
  provisional and the new GroupContext and the transcript hashes.

What stays with the member view: decrypting the UpdatePath (TreeKEM), the
PSK values, the key schedule and the confirmation tag check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..codec import encode
from . import MlsError
from .extensions import ExtensionError, ExternalSenders, check_unique, get_extension
from .framing import InvalidSender
from .keypackage import KeyPackageError, validate_key_package
from .messages import (
    Add, AuthenticatedContent, Commit, ExternalInit, FramedContent, GroupContext,
    GroupContextExtensions, KeyPackage, LeafNode, LeafNodeSource, PreSharedKey,
    PreSharedKeyID, ProposalOrRef, ProposalType, ReInit, Remove, Sender, SenderType,
    Update, UpdatePath, make_proposal_ref, proposal_type,
)
from .psk import InvalidPskId, validate_psk_ids
from .transcript import TranscriptHashes
from .treekem import check_update_path_shape
from .tree import (
    DEFAULT_PROPOSAL_TYPES, DuplicateEncryptionKeyError, DuplicateSignatureKeyError,
    LeafNodeError, RatchetTree, TreeValidationError, check_group_support, validate_leaf_node,
)

__all__ = [
    "CommitError", "UnknownProposalRef", "ProposalValidationError", "InvalidProposal",
    "ProposalNotAllowed", "CommitterUpdate", "CommitterRemoved", "DuplicateLeafProposals",
    "RemoveOfBlankLeaf", "DuplicateAdd", "AddOfExistingMember", "DuplicatePsk",
    "MultipleGroupContextExtensions", "ReInitNotAlone", "CredentialNotSupported", "UnsupportedProposalType",
    "InvalidExternalCommit", "PathRequired", "InvalidUpdatePath", "ProposalInfo",
    "ProposalStore", "resolve_proposals", "check_proposal_sender", "sender_signature_key",
    "external_sender_key", "validate_proposal_list",
    "path_required", "AppliedProposals", "apply_proposals", "StagedCommit", "stage_commit",
    "new_group_context", "provisional_context", "check_path_keys_fresh", "EXTERNAL_PROPOSAL_TYPES",
    "PATH_REQUIRED_TYPES",
]

# §12.1.8: proposal types an ``external`` sender may send.
EXTERNAL_PROPOSAL_TYPES = frozenset({ProposalType.add, ProposalType.remove, ProposalType.psk,
                                     ProposalType.reinit, ProposalType.group_context_extensions})
# §12.4: "pathRequiredTypes".
PATH_REQUIRED_TYPES = frozenset({ProposalType.update, ProposalType.remove,
                                 ProposalType.external_init, ProposalType.group_context_extensions})


# --- errors -------------------------------------------------------------------------


class CommitError(MlsError):
    """A Commit (or a proposal in it) is invalid."""


class UnknownProposalRef(CommitError):
    """A Commit references a proposal that was not received this epoch (§12.4)."""


class ProposalValidationError(CommitError):
    """The proposal list breaks a rule of §12.2."""


class InvalidProposal(ProposalValidationError):
    """An individual proposal is invalid as its type's section says (§12.1.1–§12.1.7)."""


class ProposalNotAllowed(ProposalValidationError):
    """The sender type may not send this proposal (§12.1.8), or an external
    sender is not listed in ``external_senders``."""


class CommitterUpdate(ProposalValidationError):
    """The list contains an Update from the committer (§12.2)."""


class CommitterRemoved(ProposalValidationError):
    """The list contains a Remove of the committer (§12.2)."""


class DuplicateLeafProposals(ProposalValidationError):
    """Several Update and/or Remove proposals apply to the same leaf (§12.2)."""


class RemoveOfBlankLeaf(InvalidProposal):
    """A Remove names a blank leaf or one outside the tree (§12.1.3)."""


class DuplicateAdd(ProposalValidationError):
    """Two Adds for the same client (identical signature keys) (§12.2)."""


class AddOfExistingMember(ProposalValidationError):
    """An Add for a client already in the group, not removed by the same list (§12.2)."""


class DuplicatePsk(ProposalValidationError):
    """Two PreSharedKey proposals name the same PreSharedKeyID (§12.2)."""


class MultipleGroupContextExtensions(ProposalValidationError):
    """More than one GroupContextExtensions proposal (§12.2)."""


class ReInitNotAlone(ProposalValidationError):
    """A ReInit together with another proposal (§12.2)."""


class CredentialNotSupported(ProposalValidationError):
    """A new or changed leaf uses a credential type some member does not
    support, or does not support a type in use after the Commit (§7.3)."""


class UnsupportedProposalType(ProposalValidationError):
    """A non-default proposal type not supported by every member (§12.2)."""


class InvalidExternalCommit(ProposalValidationError):
    """An external Commit breaks the rules of §12.2 / §12.4.3.2."""


class PathRequired(CommitError):
    """The Commit has no UpdatePath although its proposals require one (§12.4)."""


class InvalidUpdatePath(CommitError):
    """The UpdatePath or its LeafNode is invalid (§12.4.2)."""


# --- proposals and their senders ---------------------------------------------------------


@dataclass(frozen=True)
class ProposalInfo:
    """A proposal to commit, with its sender and (when it came by reference)
    its ProposalRef."""
    proposal: Any
    sender: Sender
    ref: bytes | None = None

    @property
    def type(self) -> ProposalType:
        return proposal_type(self.proposal)


class ProposalStore:
    """The proposals received in the current epoch, by ProposalRef (§5.2, §12).

    Emptied at every epoch change (§12: proposals are specific to an epoch).
    """

    def __init__(self) -> None:
        self._by_ref: dict[bytes, ProposalInfo] = {}
        self._contents: dict[bytes, AuthenticatedContent] = {}

    def add(self, content: AuthenticatedContent) -> ProposalInfo:
        """Cache the proposal carried by ``content``; returns it with its ref."""
        fc = content.content
        if fc.proposal is None:
            raise ValueError("not a proposal")
        info = ProposalInfo(fc.proposal, fc.sender, make_proposal_ref(content))
        self._by_ref[info.ref] = info
        self._contents[info.ref] = content
        return info

    def contents(self) -> list[AuthenticatedContent]:
        """The stored proposals as received, in arrival order (what a store
        saves to rebuild itself with :meth:`add`)."""
        return list(self._contents.values())

    def get(self, ref: bytes) -> ProposalInfo | None:
        return self._by_ref.get(ref)

    def clear(self) -> None:
        self._by_ref.clear()
        self._contents.clear()

    def __iter__(self) -> Iterator[ProposalInfo]:
        return iter(list(self._by_ref.values()))

    def __len__(self) -> int:
        return len(self._by_ref)


def resolve_proposals(commit: Commit, committer: Sender, store: ProposalStore | None
                      ) -> list[ProposalInfo]:
    """The committed proposals in order (§12.4): by-value ones are the
    committer's, by-reference ones come from ``store``.

    Raises :class:`UnknownProposalRef`.
    """
    out = []
    for por in commit.proposals:
        if por.proposal is not None:
            out.append(ProposalInfo(por.proposal, committer))
            continue
        info = store.get(por.reference) if store is not None else None
        if info is None:
            raise UnknownProposalRef("the Commit references a proposal not received this epoch")
        out.append(info)
    return out


def proposal_or_refs(proposals: Iterable[ProposalInfo]) -> list[ProposalOrRef]:
    """ProposalOrRef list for a Commit: by reference when a ref is known."""
    return [ProposalOrRef.by_reference(p.ref) if p.ref is not None else ProposalOrRef.by_value(p.proposal)
            for p in proposals]


def check_proposal_sender(proposal: Any, sender: Sender, group_context: GroupContext,
                          tree: RatchetTree) -> bytes | None:
    """Who may send which proposal (§12.1.8, §6), returning the signature key
    of an ``external`` sender (None for other sender types).

    * ``member``: any type but ExternalInit (used only inside an external
      Commit), from a non-blank leaf;
    * ``external``: add, remove, psk, reinit, group_context_extensions, from an
      index of the GroupContext's ``external_senders`` extension;
    * ``new_member_proposal``: an Add only (of the sender itself);
    * ``new_member_commit``: never a standalone proposal.

    Raises :class:`ProposalNotAllowed`, or :class:`InvalidSender`.
    """
    t = proposal_type(proposal)
    st = sender.sender_type
    if st == SenderType.member:
        if tree.leaf(sender.leaf_index) is None:
            raise InvalidSender(f"leaf {sender.leaf_index} is blank")
        if t == ProposalType.external_init:
            raise ProposalNotAllowed("ExternalInit only appears in an external Commit")
        return None
    if st == SenderType.external:
        if t not in EXTERNAL_PROPOSAL_TYPES:
            raise ProposalNotAllowed(f"an external sender cannot send {t.name}")
        return external_sender_key(group_context, sender.sender_index)
    if st == SenderType.new_member_proposal:
        if t != ProposalType.add:
            raise ProposalNotAllowed("a new_member_proposal sender only sends Add")
        return None
    raise ProposalNotAllowed(f"{st.name} senders do not send standalone proposals")


def sender_signature_key(sender: Sender, tree: RatchetTree, group_context: GroupContext,
                         content: FramedContent | None = None) -> bytes:
    """The key that verifies a message from ``sender`` (§6.1):

    * ``member``: the signature key of its (non-blank) leaf;
    * ``external``: ``external_senders[sender_index]`` of the GroupContext;
    * ``new_member_commit``: the key in the leaf of the Commit's path;
    * ``new_member_proposal``: the key in the leaf of the Add's KeyPackage.

    The last two need ``content`` and fit only a Commit with a path or an Add;
    anything else raises :class:`InvalidSender` (or
    :class:`ProposalNotAllowed` for an unknown external sender).
    """
    t = sender.sender_type
    if t == SenderType.member:
        leaf = tree.leaf(sender.leaf_index)
        if leaf is None:
            raise InvalidSender(f"leaf {sender.leaf_index} is blank")
        return leaf.signature_key
    if t == SenderType.external:
        return external_sender_key(group_context, sender.sender_index)
    if t == SenderType.new_member_commit and content is not None and content.commit is not None \
            and content.commit.path is not None:
        return content.commit.path.leaf_node.signature_key
    if t == SenderType.new_member_proposal and content is not None and isinstance(content.proposal, Add):
        return content.proposal.key_package.leaf_node.signature_key
    raise InvalidSender(f"no signature key for this {t.name} message")


def external_sender_key(group_context: GroupContext, index: int) -> bytes:
    """The signature key of ``external_senders[index]`` (§12.1.8.1)."""
    try:
        senders = get_extension(group_context.extensions, ExternalSenders)
    except ExtensionError as e:
        raise ProposalNotAllowed(str(e)) from None
    if senders is None or not 0 <= index < len(senders.external_senders):
        raise ProposalNotAllowed(f"no external sender {index} in the GroupContext")
    return senders.external_senders[index].signature_key


# --- §12.2 Proposal List Validation ----------------------------------------------------------


def _committer_leaf(committer: Sender) -> int | None:
    return committer.leaf_index if committer.sender_type == SenderType.member else None


def validate_proposal_list(proposals: Sequence[ProposalInfo], *, committer: Sender,
                           tree: RatchetTree, group_context: GroupContext,
                           now: int | None = None) -> None:
    """Check a committed proposal list against §12.2 (both procedures).

    ``tree`` and ``group_context`` are the *old* ones. A Commit from a
    ``new_member_commit`` sender is checked with the external procedure,
    otherwise the regular one. Each broken rule raises its own subclass of
    :class:`ProposalValidationError`; an individual invalid proposal raises
    :class:`InvalidProposal` (or :class:`RemoveOfBlankLeaf`).
    """
    types = [p.type for p in proposals]
    if committer.sender_type == SenderType.new_member_commit:
        _validate_external_list(proposals, types)
    elif committer.sender_type != SenderType.member:
        raise InvalidSender("only members and new members commit")
    elif ProposalType.external_init in types:
        raise InvalidExternalCommit("ExternalInit in a regular Commit")

    if ProposalType.reinit in types and len(types) > 1:
        raise ReInitNotAlone("a ReInit must be the only proposal of a Commit")
    if types.count(ProposalType.group_context_extensions) > 1:
        raise MultipleGroupContextExtensions("more than one GroupContextExtensions proposal")
    for t in types:
        if int(t) not in DEFAULT_PROPOSAL_TYPES:
            raise UnsupportedProposalType(f"proposal type {t} is not supported")

    gce = next((p.proposal for p in proposals if isinstance(p.proposal, GroupContextExtensions)), None)
    extensions = gce.extensions if gce is not None else group_context.extensions
    # Credential types the Commit brings in: every added or updated leaf must
    # support them too, not only the types already in use (§7.3).
    new_types = {p.proposal.leaf_node.credential.credential_type for p in proposals
                 if isinstance(p.proposal, Update)}
    new_types |= {p.proposal.key_package.leaf_node.credential.credential_type for p in proposals
                  if isinstance(p.proposal, Add)}
    me = _committer_leaf(committer)
    removed: set[int] = set()
    touched: set[int] = set()
    for p in proposals:
        if isinstance(p.proposal, Remove):
            r = p.proposal.removed
            if tree.leaf(r) is None:
                raise RemoveOfBlankLeaf(f"Remove of blank or absent leaf {r}")
            if r == me:
                raise CommitterRemoved("the committer cannot remove itself")
            if r in touched:
                raise DuplicateLeafProposals(f"several Update/Remove proposals for leaf {r}")
            touched.add(r)
            removed.add(r)
        elif isinstance(p.proposal, Update):
            if p.sender.sender_type != SenderType.member:
                raise ProposalNotAllowed("only members send Update proposals")
            u = p.sender.leaf_index
            if u == me:
                raise CommitterUpdate("the Commit contains an Update from the committer")
            if u in touched:
                raise DuplicateLeafProposals(f"several Update/Remove proposals for leaf {u}")
            touched.add(u)
            _validate_update(p.proposal, u, tree, group_context, extensions, new_types, now)

    added_keys: set[bytes] = set()
    added_enc: set[bytes] = set()
    cred_types = tree.credential_types_in_use()
    for p in proposals:
        if isinstance(p.proposal, Add):
            kp = p.proposal.key_package
            _validate_add(kp, tree, extensions, cred_types, new_types, now)
            key = kp.leaf_node.signature_key
            if key in added_keys:
                raise DuplicateAdd("two Adds for the same signature key")
            # "the same client" is decided by the signature key (§12.2's example)
            if tree.signature_key_count(key) and \
                    any(leaf.signature_key == key and i not in removed for i, leaf in tree.leaves()):
                raise AddOfExistingMember("an Add for a client already in the group")
            if tree.encryption_key_in_use(kp.leaf_node.encryption_key) or \
                    kp.leaf_node.encryption_key in added_enc:
                raise DuplicateEncryptionKeyError("an added leaf repeats an encryption key (§7.3)")
            added_enc.add(kp.leaf_node.encryption_key)
            added_keys.add(key)

    psk_ids = [p.proposal.psk for p in proposals if isinstance(p.proposal, PreSharedKey)]
    if len({encode(x) for x in psk_ids}) != len(psk_ids):
        raise DuplicatePsk("two PreSharedKey proposals name the same PSK")
    try:
        validate_psk_ids(psk_ids, allow_reinit=False, allow_branch=False)
    except InvalidPskId as e:
        raise InvalidProposal(f"PreSharedKey: {e}") from None

    for p in proposals:
        if isinstance(p.proposal, ReInit):
            _validate_reinit(p.proposal, group_context)
        if isinstance(p.proposal, GroupContextExtensions):
            _validate_gce(p.proposal, tree, removed, proposals)


def _validate_external_list(proposals: Sequence[ProposalInfo], types: list[ProposalType]) -> None:
    """§12.2 for an external Commit: exactly one ExternalInit, at most one
    Remove, any PreSharedKeys, nothing else, nothing by reference (§12.4.3.2)."""
    if any(p.ref is not None for p in proposals):
        raise InvalidExternalCommit("an external Commit includes no proposal by reference")
    if types.count(ProposalType.external_init) != 1:
        raise InvalidExternalCommit("an external Commit has exactly one ExternalInit")
    if types.count(ProposalType.remove) > 1:
        raise InvalidExternalCommit("an external Commit has at most one Remove")
    allowed = {ProposalType.external_init, ProposalType.remove, ProposalType.psk}
    bad = [t.name for t in types if t not in allowed]
    if bad:
        raise InvalidExternalCommit(f"proposals not allowed in an external Commit: {bad}")


def _validate_update(update: Update, leaf_index: int, tree: RatchetTree, ctx: GroupContext,
                     extensions, new_types: set[int], now: int | None) -> None:
    """§12.1.2 / §7.3: a valid LeafNode with source ``update``, signed for this
    group and leaf, with a new encryption key, supporting the credential
    types in use (``new_types``: those the Commit brings in), and of a
    credential type every other member supports."""
    old = tree.leaf(leaf_index)
    if old is None:
        raise InvalidProposal(f"Update from blank leaf {leaf_index}")
    try:
        validate_leaf_node(update.leaf_node, group_id=ctx.group_id, leaf_index=leaf_index,
                           expected_source=LeafNodeSource.update, extensions=extensions,
                           credential_types_in_use=tree.credential_types_in_use(leaf_index), now=now)
    except LeafNodeError as e:
        raise InvalidProposal(f"Update: {e}") from None
    _check_supports_types(update.leaf_node, new_types)
    if update.leaf_node.encryption_key == old.encryption_key:
        raise InvalidProposal("Update keeps the old encryption key")
    if tree.encryption_key_in_use(update.leaf_node.encryption_key):
        raise DuplicateEncryptionKeyError("an Update repeats an encryption key of the tree (§7.3)")
    _check_signature_key_unique(tree, update.leaf_node, leaf_index)
    if update.leaf_node.credential.credential_type != old.credential.credential_type:
        _check_credential_supported(update.leaf_node, tree, skip=leaf_index)


def _validate_add(kp: KeyPackage, tree: RatchetTree, extensions, cred_types, new_types: set[int],
                  now: int | None) -> None:
    """§12.1.1: the KeyPackage is valid (§10.1), every member supports its
    credential type, and it supports those the Commit brings in (§7.3)."""
    try:
        validate_key_package(kp, group_extensions=extensions, credential_types_in_use=cred_types, now=now)
    except KeyPackageError as e:
        raise InvalidProposal(f"Add: {e}") from None
    _check_supports_types(kp.leaf_node, new_types)
    _check_credential_supported(kp.leaf_node, tree)


def _check_supports_types(leaf: LeafNode, credential_types: Iterable[int]) -> None:
    """``leaf`` lists every one of ``credential_types`` (§7.3); raises
    :class:`CredentialNotSupported`."""
    missing = set(credential_types) - set(leaf.capabilities.credentials)
    if missing:
        raise CredentialNotSupported(f"a new leaf does not support credential types {sorted(missing)} "
                                     "of other new leaves")


def _check_credential_supported(leaf: LeafNode, tree: RatchetTree, skip: int | None = None) -> None:
    """Every member but ``skip`` lists ``leaf``'s credential type (§7.3);
    raises :class:`CredentialNotSupported`."""
    ct = leaf.credential.credential_type
    for i, other in tree.leaves():
        if i != skip and ct not in other.capabilities.credentials:
            raise CredentialNotSupported(f"member {i} does not support credential type {ct}")


def _check_signature_key_unique(tree: RatchetTree, leaf: LeafNode, leaf_index: int) -> None:
    """§7.3: ``leaf``, replacing the one at ``leaf_index``, has a signature key
    no other member has; raises :class:`DuplicateSignatureKeyError`."""
    old = tree.leaf(leaf_index)
    sig = leaf.signature_key
    if tree.signature_key_count(sig) - (1 if old is not None and old.signature_key == sig else 0):
        raise DuplicateSignatureKeyError(f"leaf {leaf_index}'s new LeafNode repeats another member's signature key")


def _validate_reinit(reinit: ReInit, ctx: GroupContext) -> None:
    """§12.1.5: not to a lower version; its extensions name each type once (§13)."""
    if reinit.version < ctx.version:
        raise InvalidProposal("ReInit to a lower protocol version")
    try:
        check_unique(reinit.extensions)
    except ExtensionError as e:
        raise InvalidProposal(f"ReInit: {e}") from None


def _validate_gce(gce: GroupContextExtensions, tree: RatchetTree, removed: set[int],
                  proposals: Sequence[ProposalInfo]) -> None:
    """§12.1.7: every remaining or added member supports the new extensions."""
    try:
        check_unique(gce.extensions)
    except ExtensionError as e:
        raise InvalidProposal(f"GroupContextExtensions: {e}") from None
    leaves = [leaf for i, leaf in tree.leaves() if i not in removed]
    leaves += [p.proposal.key_package.leaf_node for p in proposals if isinstance(p.proposal, Add)]
    for leaf in leaves:
        try:
            check_group_support(leaf, gce.extensions)
        except TreeValidationError as e:
            raise InvalidProposal(f"GroupContextExtensions: {e}") from None


def path_required(proposals: Sequence[ProposalInfo]) -> bool:
    """§12.4: a path is needed for an empty list or any path-required type."""
    return not proposals or any(p.type in PATH_REQUIRED_TYPES for p in proposals)


# --- §12.3 Applying a Proposal List ------------------------------------------------------------


@dataclass
class AppliedProposals:
    """What applying a proposal list produced besides the tree changes."""
    extensions: list = field(default_factory=list)
    added: list[tuple[int, KeyPackage]] = field(default_factory=list)   # (leaf index, KeyPackage)
    removed: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    psk_ids: list[PreSharedKeyID] = field(default_factory=list)
    external_init: ExternalInit | None = None
    reinit: ReInit | None = None

    @property
    def added_leaves(self) -> list[int]:
        return [i for i, _ in self.added]


def apply_proposals(tree: RatchetTree, extensions: Sequence, proposals: Sequence[ProposalInfo]
                    ) -> AppliedProposals:
    """Apply a (validated) list to ``tree`` in the order of §12.3:
    GroupContextExtensions, Updates, Removes, Adds in list order; then note
    PSKs, ExternalInit and ReInit."""
    out = AppliedProposals(extensions=list(extensions))
    for p in proposals:
        if isinstance(p.proposal, GroupContextExtensions):
            out.extensions = list(p.proposal.extensions)
    for p in proposals:
        if isinstance(p.proposal, Update):
            tree.update_leaf(p.sender.leaf_index, p.proposal.leaf_node)
            out.updated.append(p.sender.leaf_index)
    for p in proposals:
        if isinstance(p.proposal, Remove):
            tree.remove_leaf(p.proposal.removed)
            out.removed.append(p.proposal.removed)
    for p in proposals:
        if isinstance(p.proposal, Add):
            out.added.append((tree.add_leaf(p.proposal.key_package.leaf_node), p.proposal.key_package))
    for p in proposals:
        if isinstance(p.proposal, PreSharedKey):
            out.psk_ids.append(p.proposal.psk)
        elif isinstance(p.proposal, ExternalInit):
            out.external_init = p.proposal
        elif isinstance(p.proposal, ReInit):
            out.reinit = p.proposal
    return out


# --- the epoch transition (§12.4.2) --------------------------------------------------------------


def new_group_context(old: GroupContext, tree: RatchetTree, extensions: Sequence,
                      confirmed_transcript_hash: bytes) -> GroupContext:
    """GroupContext of the next epoch (§8.1, §12.4.2)."""
    return GroupContext(old.version, old.cipher_suite, old.group_id, old.epoch + 1,
                        tree.tree_hash(), confirmed_transcript_hash, list(extensions))


def provisional_context(old: GroupContext, tree: RatchetTree, extensions: Sequence) -> GroupContext:
    """§12.4.1: new epoch, new tree hash and extensions, *old* confirmed transcript hash."""
    return new_group_context(old, tree, extensions, old.confirmed_transcript_hash)


def check_path_keys_fresh(tree: RatchetTree, path: UpdatePath, sender: int) -> None:
    """§12.4.2: the new leaf's encryption key differs from the committer's
    current one, no public key of the UpdatePath appears in the tree, and the
    new leaf's signature key is no other member's (§7.3)."""
    new_keys = [path.leaf_node.encryption_key] + [n.encryption_key for n in path.nodes]
    if len(set(new_keys)) != len(new_keys):
        raise DuplicateEncryptionKeyError("the UpdatePath repeats an encryption key")
    for key in new_keys:
        if tree.encryption_key_in_use(key):
            raise DuplicateEncryptionKeyError("an UpdatePath key is already in the tree")
    _check_signature_key_unique(tree, path.leaf_node, sender)


@dataclass
class StagedCommit:
    """A Commit checked and applied to copies of the public state.

    ``tree`` is the new ratchet tree, ``committer`` the committer's leaf in
    it (for an external Commit, the leaf the joiner got), ``group_context``
    the new GroupContext, ``provisional_context`` the one the UpdatePath was
    encrypted under (None without a path), ``transcript`` the new transcript
    hashes (using the Commit's confirmation tag, not yet checked).
    """
    content: AuthenticatedContent
    proposals: list[ProposalInfo]
    applied: AppliedProposals
    tree: RatchetTree
    committer: int
    path: UpdatePath | None
    provisional_context: GroupContext | None
    group_context: GroupContext
    transcript: TranscriptHashes


def stage_commit(content: AuthenticatedContent, tree: RatchetTree, group_context: GroupContext,
                 transcript: TranscriptHashes, store: ProposalStore | None, *,
                 now: int | None = None) -> StagedCommit:
    """§12.4.2 "Processing a Commit", the public part.

    ``content`` is the Commit's AuthenticatedContent whose framing (epoch,
    membership tag, signature) has been checked by the caller. Resolves and
    validates the proposals, applies them to a copy of ``tree``, checks the
    path rule, validates the UpdatePath's LeafNode (source ``commit``,
    signature, capabilities, fresh keys, for a resync a new encryption key
    against the removed leaf), merges it (which checks its parent hash),
    checks the number of ciphertexts of every UpdatePathNode (§7.6), and
    computes the provisional and new GroupContexts and the new transcript
    hashes. The inputs are not modified.

    Raises :class:`CommitError` subclasses, tree errors
    (:class:`~phoenix_ref.mls.tree.ParentHashError`, duplicate keys, leaf
    node errors), :class:`~phoenix_ref.mls.treekem.UpdatePathError` and
    :class:`InvalidSender`.
    """
    fc = content.content
    commit = fc.commit
    if commit is None or content.auth.confirmation_tag is None:
        raise ValueError("not a Commit with its confirmation tag")
    sender = fc.sender
    external = sender.sender_type == SenderType.new_member_commit
    if sender.sender_type == SenderType.member:
        if tree.leaf(sender.leaf_index) is None:
            raise InvalidSender(f"committer leaf {sender.leaf_index} is blank")
    elif not external:
        raise InvalidSender(f"{sender.sender_type.name} senders cannot commit")

    proposals = resolve_proposals(commit, sender, None if external else store)
    validate_proposal_list(proposals, committer=sender, tree=tree, group_context=group_context, now=now)
    if commit.path is None and (path_required(proposals) or external):
        raise PathRequired("this Commit needs an UpdatePath")

    new_tree = tree.copy()
    applied = apply_proposals(new_tree, group_context.extensions, proposals)
    committer = sender.leaf_index if not external else None
    provisional = None
    if commit.path is not None:
        path = commit.path
        if external:
            committer = new_tree.free_leaf_index()
            # A resync's new leaf meets the rules of an Update of the removed one (§12.2).
            replaced = tree.leaf(applied.removed[0]) if applied.removed else None
        else:
            replaced = new_tree.leaf(committer)
        _validate_path_leaf(path, new_tree, group_context.group_id, committer, replaced,
                            applied.extensions, now)
        if external:
            new_tree.add_leaf(path.leaf_node)
        new_tree.apply_update_path(committer, path)
        check_update_path_shape(new_tree, committer, path, applied.added_leaves)
        provisional = provisional_context(group_context, new_tree, applied.extensions)
    confirmed = transcript.confirm(content)
    ctx = new_group_context(group_context, new_tree, applied.extensions, confirmed)
    return StagedCommit(content, proposals, applied, new_tree, committer, commit.path, provisional, ctx,
                        transcript.update(content))


def _validate_path_leaf(path: UpdatePath, tree: RatchetTree, group_id: bytes, committer: int,
                        replaced: LeafNode | None, extensions, now: int | None) -> None:
    """§12.4.2: validate the UpdatePath's LeafNode (§7.3, source ``commit``)
    and the freshness of its keys, before merging. ``replaced`` is the leaf
    it replaces: the committer's, or for a resync the removed one (§12.2);
    None for a plain external join."""
    try:
        validate_leaf_node(path.leaf_node, group_id=group_id, leaf_index=committer,
                           expected_source=LeafNodeSource.commit, extensions=extensions,
                           credential_types_in_use=tree.credential_types_in_use(committer), now=now)
    except LeafNodeError as e:
        raise InvalidUpdatePath(f"UpdatePath leaf node: {e}") from None
    if replaced is not None and replaced.encryption_key == path.leaf_node.encryption_key:
        raise InvalidUpdatePath("the UpdatePath keeps the encryption key of the leaf it replaces")
    check_path_keys_fresh(tree, path, committer)
    if replaced is None or replaced.credential != path.leaf_node.credential:
        _check_credential_supported(path.leaf_node, tree)
