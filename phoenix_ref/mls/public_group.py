"""The Delivery Service's public view of an MLS group (RFC 9420 §12.4.2;
``spec/delivery_service.md#validation``).

The DS holds no group secret, only the public state: the GroupContext, the
ratchet tree, the interim transcript hash and the current GroupInfo
(``spec/delivery_service.md#ds-state``). :class:`PublicGroup` checks a Commit
sent as a PublicMessage "the same validation steps a receiving MLS client
would perform" (``spec/delivery_service.md#validation``), except those that
need the epoch's secrets:

checked here
    group id and epoch; the sender is a non-blank member (or a
    ``new_member_commit``); the signature over FramedContentTBS; the
    proposal rules of §12.2 with by-reference proposals resolved from the
    DS's proposal store; the path rule; the UpdatePath's LeafNode (§7.3),
    fresh keys, parent hashes (§7.9.2); the resulting tree hash and
    confirmed transcript hash, which enter the new GroupContext.
not checkable
    the membership tag (``membership_key``), the confirmation tag
    (``confirmation_key``), the ExternalInit's kem_output and PSK values.

GroupInfo (``spec/delivery_service.md#groupinfo-updates``): the committer
sends only its signature over the new GroupInfoTBS; the DS assembles the
GroupInfo from the new GroupContext, the Commit's confirmation tag, the
committer's leaf index and the GroupInfo extensions, and keeps it only if the
signature verifies with the committer's leaf key. The extensions are an
input because ``external_pub`` derives from the epoch's ``external_secret``,
which the DS cannot compute (see docs/decisions.md).

The DS also validates KeyPackages (§10.1) and creates Remove proposals as
an ``external`` sender (``spec/delivery_service.md#ds-induced-removals``,
§12.1.8), which requires its key in the group's ``external_senders``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..crypto import SigningKey
from . import MlsError
from .commit import (
    AppliedProposals, ProposalInfo, ProposalStore, RemoveOfBlankLeaf, StagedCommit, apply_proposals,
    check_proposal_sender, sender_signature_key, stage_commit,
)
from .extensions import ExternalSenders, get_extension
from .framing import (
    InvalidSender, authenticate, build_content, decode_mls_message, protect_public, public_content,
    verify_content,
)
from .keypackage import validate_key_package
from .messages import (
    Add, AuthenticatedContent, ContentType, Extension, GroupContext, GroupInfo, KeyPackage,
    MLSMessage, PublicMessage, Remove, Sender, SenderType, WireFormat,
)
from .transcript import TranscriptHashes
from .tree import RatchetTree
from .welcome import verify_group_info

__all__ = ["PublicGroupError", "CommitNotPublic", "NotExternalSender", "PublicGroup", "PublicCommit"]


class PublicGroupError(MlsError):
    """The DS cannot handle this message in its public view."""


class CommitNotPublic(PublicGroupError):
    """Only a PublicMessage can be validated without the group's secrets."""


class NotExternalSender(PublicGroupError):
    """The DS's key is not in the group's ``external_senders`` (§12.1.8.1)."""


@dataclass
class PublicCommit:
    """A validated Commit, not yet applied (see :meth:`PublicGroup.merge_commit`)."""
    staged: StagedCommit

    @property
    def applied(self) -> AppliedProposals:
        return self.staged.applied

    @property
    def committer(self) -> int:
        return self.staged.committer

    @property
    def group_context(self) -> GroupContext:
        return self.staged.group_context

    @property
    def tree(self) -> RatchetTree:
        return self.staged.tree

    def group_info_tbs(self, extensions: Sequence[Extension]) -> bytes:
        """The GroupInfoTBS the committer signs for the new epoch (§12.4.3)."""
        return _group_info(self.staged, list(extensions), b"").tbs()


def _group_info(staged: StagedCommit, extensions: list[Extension], signature: bytes) -> GroupInfo:
    return GroupInfo(staged.group_context, extensions, staged.content.auth.confirmation_tag,
                     staged.committer, signature)


class PublicGroup:
    """A group as the DS sees it: public tree, GroupContext, transcript, GroupInfo."""

    def __init__(self, group_context: GroupContext, tree: RatchetTree, transcript: TranscriptHashes,
                 group_info: GroupInfo | None = None):
        self.group_context = group_context
        self.tree = tree
        self.transcript = transcript
        self.group_info = group_info
        self.proposals = ProposalStore()

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_group_info(cls, group_info: GroupInfo, ratchet_tree: RatchetTree | bytes, *,
                        now: int | None = None) -> "PublicGroup":
        """Build from a GroupInfo and the ratchet tree, checking both as a
        joiner would (§12.4.3.1): the GroupInfo signature with the signer's
        leaf key, and the tree (hash, parent hashes, leaves, unmerged leaves,
        unique keys)."""
        tree = RatchetTree.of(ratchet_tree)
        ctx = group_info.group_context
        signer = tree.leaf(group_info.signer)
        if signer is None:
            raise InvalidSender("the GroupInfo signer's leaf is blank")
        verify_group_info(group_info, signer.signature_key)
        tree.validate(ctx.group_id, extensions=ctx.extensions, tree_hash=ctx.tree_hash, now=now)
        transcript = TranscriptHashes.from_group_info(ctx.confirmed_transcript_hash, group_info.confirmation_tag)
        return cls(ctx, tree, transcript, group_info)

    @classmethod
    def from_tree(cls, tree: RatchetTree | bytes, group_context: GroupContext, *,
                  now: int | None = None) -> "PublicGroup":
        """Build from a tree and a GroupContext alone (no GroupInfo yet), after
        validating the tree against it (§12.4.3.1)."""
        t = RatchetTree.of(tree)
        t.validate(group_context.group_id, extensions=group_context.extensions,
                   tree_hash=group_context.tree_hash, now=now)
        return cls(group_context, t, TranscriptHashes(group_context.confirmed_transcript_hash, b""))

    @property
    def epoch(self) -> int:
        return self.group_context.epoch

    @property
    def group_id(self) -> bytes:
        return self.group_context.group_id

    # --- messages -------------------------------------------------------------------------

    def _public_content(self, message: MLSMessage | PublicMessage | bytes) -> AuthenticatedContent:
        """Group, epoch and signature checks of a PublicMessage (§6.2, §6.1)
        — the membership tag needs the membership key and is left to members."""
        if isinstance(message, (bytes, bytearray)):
            message = decode_mls_message(bytes(message))
        if isinstance(message, MLSMessage):
            if message.wire_format != WireFormat.mls_public_message:
                raise CommitNotPublic("the DS validates only PublicMessages")
            message = message.public_message
        content = public_content(message, self.group_context)
        verify_content(content, self._signature_key(content), self.group_context)
        return content

    def _signature_key(self, content: AuthenticatedContent) -> bytes:
        fc = content.content
        return sender_signature_key(fc.sender, self.tree, self.group_context, fc)

    def process_proposal(self, message: MLSMessage | PublicMessage | bytes, *,
                         now: int | None = None) -> ProposalInfo:
        """Validate a proposal (signature, epoch, sender rules; an Add's
        KeyPackage) and keep it in the proposal store
        (``spec/delivery_service.md#proposal-store``)."""
        content = self._public_content(message)
        fc = content.content
        if fc.content_type != ContentType.proposal:
            raise PublicGroupError("not a proposal")
        check_proposal_sender(fc.proposal, fc.sender, self.group_context, self.tree)
        if isinstance(fc.proposal, Add):
            self.validate_key_package(fc.proposal.key_package, now=now)
        if isinstance(fc.proposal, Remove) and self.tree.leaf(fc.proposal.removed) is None:
            raise RemoveOfBlankLeaf(f"Remove of blank leaf {fc.proposal.removed}")
        return self.proposals.add(content)

    def validate_commit(self, message: MLSMessage | PublicMessage | bytes, *,
                        now: int | None = None) -> PublicCommit:
        """Validate a Commit as a receiving member would, minus the secrets
        (see the module docstring). Nothing changes until :meth:`merge_commit`."""
        content = self._public_content(message)
        if content.content.content_type != ContentType.commit:
            raise PublicGroupError("not a Commit")
        if content.content.sender.sender_type not in (SenderType.member, SenderType.new_member_commit):
            raise InvalidSender("only members and new members commit")
        staged = stage_commit(content, self.tree, self.group_context, self.transcript, self.proposals, now=now)
        return PublicCommit(staged)

    def merge_commit(self, commit: PublicCommit, group_info_signature: bytes,
                     group_info_extensions: Sequence[Extension]) -> GroupInfo:
        """Move to the Commit's epoch with the GroupInfo assembled from the
        committer's signature (``spec/delivery_service.md#groupinfo-updates``).

        Raises :class:`~phoenix_ref.mls.framing.BadSignature` (state unchanged)
        if the signature does not verify with the committer's new leaf key.
        """
        staged = commit.staged
        gi = _group_info(staged, list(group_info_extensions), group_info_signature)
        verify_group_info(gi, staged.tree.leaf(staged.committer).signature_key)
        self.group_context = staged.group_context
        self.tree = staged.tree
        self.transcript = staged.transcript
        self.group_info = gi
        self.proposals.clear()
        return gi

    def process_commit(self, message: MLSMessage | PublicMessage | bytes, group_info_signature: bytes,
                       group_info_extensions: Sequence[Extension], *, now: int | None = None) -> PublicCommit:
        """:meth:`validate_commit` then :meth:`merge_commit`."""
        commit = self.validate_commit(message, now=now)
        self.merge_commit(commit, group_info_signature, group_info_extensions)
        return commit

    def apply_proposals(self, proposals: Sequence[ProposalInfo]) -> AppliedProposals:
        """Apply already validated proposals to the tree in the order of §12.3
        (no epoch change; e.g. to preview a tree)."""
        return apply_proposals(self.tree, self.group_context.extensions, proposals)

    # --- KeyPackages and DS proposals ---------------------------------------------------------

    def validate_key_package(self, key_package: KeyPackage, *, now: int | None = None) -> None:
        """§10.1 against this group's parameters; raises KeyPackageError."""
        validate_key_package(key_package, group_extensions=self.group_context.extensions,
                             credential_types_in_use=self.tree.credential_types_in_use(), now=now)

    def external_remove_proposal(self, signing_key: SigningKey, removed: int) -> MLSMessage:
        """A Remove signed by the DS as an ``external`` sender
        (``spec/delivery_service.md#ds-induced-removals``, §12.1.8); it is
        also put into the proposal store."""
        senders = get_extension(self.group_context.extensions, ExternalSenders)
        index = next((i for i, s in enumerate(senders.external_senders if senders else [])
                      if s.signature_key == signing_key.public), None)
        if index is None:
            raise NotExternalSender("the DS key is not among the group's external senders")
        if self.tree.leaf(removed) is None:
            raise RemoveOfBlankLeaf(f"leaf {removed} is blank")
        fc = build_content(self.group_id, self.epoch, Sender.external(index), Remove(removed))
        content = authenticate(signing_key, WireFormat.mls_public_message, fc, None)
        self.proposals.add(content)
        return MLSMessage.wrap(protect_public(content, self.group_context, None))
