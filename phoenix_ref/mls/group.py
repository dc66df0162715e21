"""The member's view of an MLS group (RFC 9420 §8, §11, §12, §15).

:class:`Group` holds one member's state for the current epoch — the
GroupContext, the public ratchet tree, its private TreeKEM keys, the epoch
secrets, transcript hashes, secret tree and the proposals received this
epoch — and implements the operations of a client:

* create a group (§11), make KeyPackages (§10, :mod:`.keypackage`);
* send proposals (§12.1) as PublicMessage or PrivateMessage;
* create Commits with or without an UpdatePath, with proposals by value and
  by reference, and the Welcome and GroupInfo that go with them (§12.4.1,
  §12.4.3); a created Commit stays *pending* until
  :meth:`Group.merge_pending_commit` (the Delivery Service may refuse it);
* process any incoming PublicMessage or PrivateMessage: application data,
  proposals (also from external senders, §12.1.8) and Commits, including
  external ones (§12.4.2);
* join from a Welcome (§12.4.3.1) or by an external Commit (§12.4.3.2);
* protect application messages (§15), export secrets (§8.5), the epoch
  authenticator (§8.7).

The rules shared with the Delivery Service's public view live in
:mod:`.commit`; framing in :mod:`.framing`; TreeKEM in :mod:`.treekem`.

Time: leaf lifetimes are checked against ``clock`` when one is given
(§7.3 makes the check RECOMMENDED for received leaves); without a clock they
are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..clock import Clock
from ..codec import DecodeError, decode, encode
from ..crypto import CryptoError, HpkeKeyPair, SigningKey, random_bytes
from . import MlsError
from .commit import (
    AppliedProposals, CommitError, PathRequired, ProposalInfo, ProposalStore, apply_proposals,
    check_proposal_sender, new_group_context, path_required,
    proposal_or_refs, provisional_context, resolve_proposals, sender_signature_key, stage_commit,
    validate_proposal_list,
)
from .extensions import ExternalPub, RatchetTreeExtension, get_extension, to_extension
from .framing import (
    InvalidSender, authenticate, build_content, decode_mls_message, protect_private,
    protect_public, unprotect_private, unprotect_public, with_confirmation_tag,
)
from .group_state import GroupStateError, PendingCommitState, group_from_bytes, group_to_bytes
from .key_schedule import EpochSecrets, external_init_receiver, external_init_sender
from .keypackage import KeyPackageBundle, create_key_package, make_leaf_node
from .messages import (
    CIPHER_SUITE_1, Add, AuthenticatedContent, Commit, ContentType, Credential, Extension,
    ExternalInit, GroupContext, GroupContextExtensions, GroupInfo, KeyPackage,
    LeafNodeSource, MLSMessage, PreSharedKey, PreSharedKeyID, ProtocolVersion,
    PSKType, PublicMessage, ReInit, Remove, Sender, Update, Welcome, WireFormat,
)
from .psk import psk_secret, resolve_psks
from .public_group import PublicGroup
from .secret_tree import SecretTree
from .transcript import TranscriptHashes, confirmation_tag, verify_confirmation_tag
from .tree import RatchetTree, validate_leaf_node
from .treekem import PrivateTreeKeys, create_update_path, decrypt_update_path
from .welcome import create_welcome, open_welcome, sign_group_info

__all__ = [
    "GroupError", "GroupInactive", "PendingProposals", "NotInTree", "BadExternalInit",
    "MissingRatchetTree", "ApplicationMessage", "ProposalMessage", "CommitMessage",
    "CommitResult", "Group",
]


class GroupError(MlsError):
    """An operation the member's state does not allow."""


class GroupInactive(GroupError):
    """The member was removed, or the group was reinitialised (§12.4.2)."""


class PendingProposals(GroupError):
    """Application data while valid proposals wait for a Commit (§12.4: "MUST
    send a Commit message before sending application data")."""


class NotInTree(GroupError):
    """The Welcome's tree holds no leaf identical to our KeyPackage's (§12.4.3.1)."""


class BadExternalInit(CommitError):
    """An ExternalInit's kem_output does not decapsulate (§8.3)."""


class MissingRatchetTree(GroupError):
    """No ratchet tree was given and the GroupInfo carries none (§12.4.3.3)."""


# --- results of process() -----------------------------------------------------------


@dataclass(frozen=True)
class ApplicationMessage:
    sender: int
    data: bytes
    authenticated_data: bytes


@dataclass(frozen=True)
class ProposalMessage:
    proposal: ProposalInfo


@dataclass(frozen=True)
class CommitMessage:
    """A Commit was applied; ``removed_me`` when it removed this member.
    ``committer`` is the committer's leaf in the new tree (for an external
    Commit, the leaf the joiner took)."""
    sender: Sender
    epoch: int
    applied: AppliedProposals
    removed_me: bool = False
    committer: int | None = None


#: Called by :meth:`Group.process` with a Commit's outcome and the new
#: epoch's tree once MLS has accepted it, before the member moves to that
#: epoch; raising refuses the Commit and leaves the state unchanged.
BeforeMerge = Callable[[CommitMessage, RatchetTree], None]


@dataclass
class CommitResult:
    """What :meth:`Group.commit` produces.

    ``message`` goes to the group (through the DS); ``welcome`` to the new
    members (None without Adds); ``group_info`` is the signed GroupInfo of
    the new epoch with ``external_pub`` (what the DS serves for external
    Commits); its ``signature`` is the GroupInfoUpdate of
    ``spec/delivery_service.md#groupinfo-updates``.
    """
    message: MLSMessage
    welcome: Welcome | None
    group_info: GroupInfo


@dataclass
class _EpochState:
    """Everything that changes together at an epoch boundary."""
    group_context: GroupContext
    tree: RatchetTree
    keys: PrivateTreeKeys
    secrets: EpochSecrets
    transcript: TranscriptHashes
    confirmation_tag: bytes


class Group:
    """One member's state of one group (see the module docstring)."""

    def __init__(self, state: _EpochState, signing_key: SigningKey, *,
                 external_psks: dict[bytes, bytes] | None = None, clock: Clock | None = None):
        self._state = state
        self.signing_key = signing_key
        self.external_psks: dict[bytes, bytes] = dict(external_psks or {})
        self.clock = clock
        self.proposals = ProposalStore()
        self.resumption_psks: dict[tuple[bytes, int], bytes] = {}
        self._pending_updates: dict[bytes, HpkeKeyPair] = {}
        self._pending: tuple[AuthenticatedContent, _EpochState, AppliedProposals] | None = None
        self.active = True
        self.creator_key_package: KeyPackage | None = None   # set by create()
        self._enter_epoch(state)

    # --- state accessors -----------------------------------------------------------

    @property
    def group_context(self) -> GroupContext:
        return self._state.group_context

    @property
    def group_id(self) -> bytes:
        return self._state.group_context.group_id

    @property
    def epoch(self) -> int:
        return self._state.group_context.epoch

    @property
    def tree(self) -> RatchetTree:
        return self._state.tree

    @property
    def leaf_index(self) -> int:
        return self._state.keys.leaf_index

    @property
    def epoch_authenticator(self) -> bytes:
        """§8.7: a value all members of the epoch share, for out-of-band checks."""
        return self._state.secrets.epoch_authenticator

    @property
    def confirmation_tag(self) -> bytes:
        return self._state.confirmation_tag

    def export_secret(self, label: str | bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter(label, context, length) of the current epoch (§8.5)."""
        return self._state.secrets.exporter(label, context, length)

    def _now(self) -> int | None:
        return None if self.clock is None else self.clock.now_ms() // 1000

    # --- saving and restoring (:mod:`.group_state`) --------------------------------------

    def to_bytes(self) -> bytes:
        """Everything this member needs to continue, as bytes (private keys
        included; a pending Commit is not saved: :meth:`pending_to_bytes`)."""
        return group_to_bytes(self)

    def pending_to_bytes(self) -> bytes | None:
        """Our pending Commit as bytes (None without one), for a caller that
        must keep it across a restart because the DS's answer was lost."""
        if self._pending is None:
            return None
        content, new_state, _applied = self._pending
        next_epoch = Group(new_state, self.signing_key)   # only a carrier for the state's encoding
        return encode(PendingCommitState(content, group_to_bytes(next_epoch)))

    def restore_pending(self, data: bytes) -> None:
        """Make what :meth:`pending_to_bytes` saved our pending Commit again.
        What it applies is worked out anew from the Commit and this epoch's
        proposals, so only the Commit and the next epoch's state are stored.
        Raises :class:`~phoenix_ref.mls.group_state.GroupStateError` if it does
        not belong to this member's current epoch."""
        try:
            saved = decode(PendingCommitState, data)
        except DecodeError as e:
            raise GroupStateError(f"saved pending Commit does not decode: {e}") from None
        r = group_from_bytes(bytes(saved.next_epoch))
        fc = saved.content.content
        if (fc.commit is None or fc.sender != Sender.member(self.leaf_index) or fc.epoch != self.epoch
                or fc.group_id != self.group_id or r.group_context.epoch != self.epoch + 1):
            raise GroupStateError("the saved pending Commit is not ours for this epoch")
        infos = resolve_proposals(fc.commit, fc.sender, self.proposals)
        applied = apply_proposals(self.tree.copy(), self.group_context.extensions, infos)
        new_state = _EpochState(r.group_context, r.tree, r.keys, r.secrets, r.transcript, r.confirmation_tag)
        self._pending = (saved.content, new_state, applied)

    @classmethod
    def from_bytes(cls, data: bytes, *, clock: Clock | None = None) -> "Group":
        """The member :meth:`to_bytes` saved; raises
        :class:`~phoenix_ref.mls.group_state.GroupStateError`."""
        r = group_from_bytes(data)
        state = _EpochState(r.group_context, r.tree, r.keys, r.secrets, r.transcript, r.confirmation_tag)
        group = cls(state, r.signing_key, external_psks=r.external_psks, clock=clock)
        group.secret_tree = r.secret_tree           # ratchets where they stood, not fresh
        for content in r.proposals:
            group.proposals.add(content)
        group._pending_updates = r.pending_updates
        group.resumption_psks = r.resumption_psks
        group.active = r.active
        group.creator_key_package = r.creator_key_package
        return group

    def _enter_epoch(self, state: _EpochState) -> None:
        self._state = state
        self.secret_tree = SecretTree(state.secrets.encryption_secret, state.tree.n_leaves)
        self.proposals.clear()
        self._pending = None
        self.resumption_psks[(self.group_id, self.epoch)] = state.secrets.resumption_psk

    def _psk_lookup(self, pid: PreSharedKeyID) -> bytes | None:
        if pid.psktype == PSKType.external:
            return self.external_psks.get(pid.psk_id)
        return self.resumption_psks.get((pid.psk_group_id, pid.psk_epoch))

    # --- creation (§11) ---------------------------------------------------------------

    @classmethod
    def create(cls, signing_key: SigningKey, credential: Credential, *, group_id: bytes | None = None,
               extensions: Sequence[Extension] = (), leaf_extensions: Sequence[Extension] = (),
               clock: Clock | None = None, external_psks: dict[bytes, bytes] | None = None) -> "Group":
        """A new one-member group at epoch 0 (§11): random epoch secret,
        empty confirmed transcript hash."""
        now = (clock or Clock()).now_ms() // 1000
        bundle = create_key_package(signing_key, credential, now=now, leaf_extensions=leaf_extensions)
        leaf = bundle.key_package.leaf_node
        tree = RatchetTree.single(leaf)
        gid = group_id if group_id is not None else random_bytes(16)
        ctx = GroupContext(ProtocolVersion.mls10, CIPHER_SUITE_1, gid, 0, tree.tree_hash(), b"",
                           list(extensions))
        validate_leaf_node(leaf, group_id=gid, leaf_index=0, extensions=extensions)
        secrets = EpochSecrets.for_new_group()
        tag = confirmation_tag(secrets.confirmation_key, b"")
        state = _EpochState(ctx, tree, PrivateTreeKeys.for_leaf(0, bundle.encryption_priv), secrets,
                            TranscriptHashes.for_new_group(secrets.confirmation_key), tag)
        group = cls(state, signing_key, external_psks=external_psks, clock=clock)
        #: the KeyPackage whose LeafNode is leaf 0 (a Phoenix DS builds the
        #: one-leaf tree from it: docs/decisions.md, A23)
        group.creator_key_package = bundle.key_package
        return group

    @staticmethod
    def make_key_package(signing_key: SigningKey, credential: Credential, *, clock: Clock | None = None,
                         extensions: Sequence[Extension] = (),
                         leaf_extensions: Sequence[Extension] = ()) -> KeyPackageBundle:
        """A fresh KeyPackage (§10) for being added to groups."""
        now = (clock or Clock()).now_ms() // 1000
        return create_key_package(signing_key, credential, now=now, extensions=extensions,
                                  leaf_extensions=leaf_extensions)

    # --- GroupInfo (§12.4.3) ---------------------------------------------------------------

    def group_info(self, *, with_ratchet_tree: bool = False) -> GroupInfo:
        """A signed GroupInfo of the current epoch with ``external_pub``
        (§12.4.3.2), optionally with the ``ratchet_tree`` extension (§12.4.3.3)."""
        return _sign_group_info(self._state, self.signing_key, with_ratchet_tree)

    # --- proposals (§12.1) --------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self.active:
            raise GroupInactive("this member is no longer in the group")

    def _send(self, body: Any, *, private: bool = False, authenticated_data: bytes = b"",
              state: _EpochState | None = None) -> tuple[MLSMessage, AuthenticatedContent]:
        st = state or self._state
        ctx = st.group_context
        fc = build_content(ctx.group_id, ctx.epoch, Sender.member(self.leaf_index), body, authenticated_data)
        wf = WireFormat.mls_private_message if private else WireFormat.mls_public_message
        content = authenticate(self.signing_key, wf, fc, ctx)
        return self._protect(content), content

    def _protect(self, content: AuthenticatedContent) -> MLSMessage:
        st = self._state
        if content.wire_format == WireFormat.mls_private_message:
            return MLSMessage.wrap(protect_private(content, self.secret_tree, st.secrets.sender_data_secret))
        return MLSMessage.wrap(protect_public(content, st.group_context, st.secrets.membership_key))

    def propose(self, proposal: Any, *, private: bool = False, authenticated_data: bytes = b"") -> MLSMessage:
        """Send ``proposal`` (an Add, Remove, PreSharedKey, ReInit,
        GroupContextExtensions instance) and cache it for our own Commit."""
        self._require_active()
        check_proposal_sender(proposal, Sender.member(self.leaf_index), self.group_context, self.tree)
        msg, content = self._send(proposal, private=private, authenticated_data=authenticated_data)
        self.proposals.add(content)
        return msg

    def propose_add(self, key_package: KeyPackage, **kw) -> MLSMessage:
        return self.propose(Add(key_package), **kw)

    def propose_remove(self, leaf_index: int, **kw) -> MLSMessage:
        return self.propose(Remove(leaf_index), **kw)

    def propose_psk(self, psk_id: PreSharedKeyID, **kw) -> MLSMessage:
        return self.propose(PreSharedKey(psk_id), **kw)

    def propose_group_context_extensions(self, extensions: Sequence[Extension], **kw) -> MLSMessage:
        return self.propose(GroupContextExtensions(list(extensions)), **kw)

    def propose_reinit(self, group_id: bytes, extensions: Sequence[Extension] = (), **kw) -> MLSMessage:
        return self.propose(ReInit(group_id, ProtocolVersion.mls10, CIPHER_SUITE_1, list(extensions)), **kw)

    def propose_update(self, **kw) -> MLSMessage:
        """An Update (§12.1.2) with a fresh leaf encryption key; its private key
        is kept until the Update is committed by someone else."""
        self._require_active()
        old = self.tree.leaf(self.leaf_index)
        key = HpkeKeyPair.generate()
        leaf = make_leaf_node(self.signing_key, old.credential, key.public, LeafNodeSource.update,
                              capabilities=old.capabilities, extensions=old.extensions,
                              group_id=self.group_id, leaf_index=self.leaf_index)
        self._pending_updates[key.public] = key
        msg, content = self._send(Update(leaf), **kw)
        self.proposals.add(content)
        return msg

    # --- commits (§12.4.1) -------------------------------------------------------------------

    def commit(self, *, adds: Iterable[KeyPackage] = (), removes: Iterable[int] = (),
               proposals: Iterable[Any] = (), by_reference: Iterable[bytes] | None = None,
               path: bool = True, private: bool = False, authenticated_data: bytes = b"",
               ratchet_tree_in_welcome: bool = True) -> CommitResult:
        """Create a Commit (§12.4.1).

        ``adds`` / ``removes`` / ``proposals`` go by value; ``by_reference``
        lists ProposalRefs from this epoch's store (default: all of them).
        The UpdatePath is included unless ``path=False`` (§12.4: "By default,
        the path field of a Commit MUST be populated"); omitting it is refused
        with :class:`PathRequired` when the proposals require one.
        The Commit is pending until :meth:`merge_pending_commit`.
        Raises the :mod:`.commit` errors for an invalid list.
        """
        self._require_active()
        st = self._state
        me = self.leaf_index
        refs = self._default_refs() if by_reference is None else list(by_reference)
        infos: list[ProposalInfo] = []
        for ref in refs:
            info = self.proposals.get(ref)
            if info is None:
                raise CommitError("unknown ProposalRef")
            infos.append(info)
        by_value = [Add(kp) for kp in adds] + [Remove(r) for r in removes] + list(proposals)
        infos += [ProposalInfo(p, Sender.member(me)) for p in by_value]
        committer = Sender.member(me)
        validate_proposal_list(infos, committer=committer, tree=st.tree, group_context=st.group_context,
                               now=self._now())
        needs_path = path_required(infos)
        if path is False and needs_path:
            raise PathRequired("these proposals require an UpdatePath (§12.4)")
        use_path = needs_path or path

        tree = st.tree.copy()
        applied = apply_proposals(tree, st.group_context.extensions, infos)
        keys = st.keys.copy()
        keys.prune(tree)
        own = None
        update_path = None
        if use_path:
            template = tree.leaf(me)
            own = create_update_path(tree, me, template, self.signing_key, self.group_id, keys=keys)
            prov = provisional_context(st.group_context, tree, applied.extensions)
            update_path = own.encrypt(tree, encode(prov), exclude=applied.added_leaves)
            keys = own.keys
        commit = Commit(proposal_or_refs(infos), update_path)
        wf = WireFormat.mls_private_message if private else WireFormat.mls_public_message
        fc = build_content(self.group_id, self.epoch, committer, commit, authenticated_data)
        content = authenticate(self.signing_key, wf, fc, st.group_context)
        psks = resolve_psks(applied.psk_ids, self._psk_lookup)
        new_state, content = _finish_epoch(st, tree, keys, applied, content, st.secrets.init_secret,
                                           own.commit_secret if own else None, psks)
        message = self._protect(content)
        gi = _sign_group_info(new_state, self.signing_key, False)
        welcome = None
        if applied.added:
            wgi = _sign_group_info(new_state, self.signing_key, ratchet_tree_in_welcome)
            members = [(kp, own.path_secret_for(tree, leaf) if own else None) for leaf, kp in applied.added]
            welcome = create_welcome(wgi, new_state.secrets.joiner_secret, psks, members)
        self._pending = (content, new_state, applied)
        return CommitResult(message, welcome, gi)

    @property
    def pending_commit(self) -> AppliedProposals | None:
        """What the pending Commit applies (None when there is none)."""
        return None if self._pending is None else self._pending[2]

    def _default_refs(self) -> list[bytes]:
        """The stored proposals a Commit includes by default (§12.2, §12.4):
        all of them, except our own Updates (the UpdatePath replaces them),
        Removes of ourselves (we cannot commit those), and — per leaf — Updates
        superseded by a Remove or by a more recent Update of the same leaf."""
        me = self.leaf_index
        infos = list(self.proposals)
        removed = {p.proposal.removed for p in infos if isinstance(p.proposal, Remove)}
        latest_update: dict[int, bytes] = {}
        for p in infos:
            if isinstance(p.proposal, Update):
                latest_update[p.sender.leaf_index] = p.ref
        refs, seen_removed = [], set()
        for p in infos:
            if isinstance(p.proposal, Update):
                leaf = p.sender.leaf_index
                if leaf == me or leaf in removed or latest_update[leaf] != p.ref:
                    continue
            elif isinstance(p.proposal, Remove):
                if p.proposal.removed == me or p.proposal.removed in seen_removed:
                    continue
                seen_removed.add(p.proposal.removed)
            refs.append(p.ref)
        return refs

    def merge_pending_commit(self) -> None:
        """Move to the epoch of our pending Commit (once the DS accepted it)."""
        if self._pending is None:
            raise GroupError("no pending Commit")
        _content, new_state, applied = self._pending
        self._pending_updates.clear()
        self._enter_epoch(new_state)
        if applied.reinit is not None:
            self.active = False  # §12.4.1: the group is replaced by the ReInit's new group

    def clear_pending_commit(self) -> None:
        """Forget our pending Commit (the DS refused it)."""
        self._pending = None

    # --- application messages (§15) -------------------------------------------------------

    def encrypt(self, data: bytes, *, authenticated_data: bytes = b"") -> MLSMessage:
        """An application message as a PrivateMessage (§6, §15)."""
        self._require_active()
        if len(self.proposals):
            raise PendingProposals("commit the pending proposals before sending application data")
        msg, _ = self._send(bytes(data), private=True, authenticated_data=authenticated_data)
        return msg

    # --- processing ---------------------------------------------------------------------------

    def _signer(self, content_hint: PublicMessage | None = None) -> Callable[[Sender], bytes]:
        st = self._state
        fc = content_hint.content if content_hint is not None else None
        return lambda sender: sender_signature_key(sender, st.tree, st.group_context, fc)

    def process(self, message: MLSMessage | bytes, *, before_merge: BeforeMerge | None = None
                ) -> ApplicationMessage | ProposalMessage | CommitMessage:
        """Process a PublicMessage or PrivateMessage of the current epoch.

        For a Commit, ``before_merge`` (if given) sees the outcome and the new
        tree after every MLS check and before the epoch changes, so that a
        caller's own checks of the new epoch (e.g. of new members'
        credentials) can refuse it as a whole.

        Raises :class:`~phoenix_ref.mls.framing.FramingError` subclasses
        (wrong group / epoch, bad signature or membership tag, decryption),
        :class:`~phoenix_ref.mls.commit.CommitError` subclasses, tree and
        TreeKEM errors, :class:`~phoenix_ref.mls.transcript.BadConfirmationTag`.
        On any error the state is unchanged.
        """
        self._require_active()
        if isinstance(message, (bytes, bytearray)):
            message = decode_mls_message(bytes(message))
        st = self._state
        if message.wire_format == WireFormat.mls_public_message:
            pm = message.public_message
            content = unprotect_public(pm, st.group_context, st.secrets.membership_key, self._signer(pm))
        elif message.wire_format == WireFormat.mls_private_message:
            content = unprotect_private(message.private_message, st.group_context, self.secret_tree,
                                        st.secrets.sender_data_secret, self._signer())
        else:
            raise GroupError(f"{message.wire_format.name} is not a group message")
        fc = content.content
        if fc.content_type == ContentType.application:
            return ApplicationMessage(fc.sender.leaf_index, fc.application_data, fc.authenticated_data)
        if fc.content_type == ContentType.proposal:
            check_proposal_sender(fc.proposal, fc.sender, st.group_context, st.tree)
            return ProposalMessage(self.proposals.add(content))
        return self._process_commit(content, before_merge or _accept)

    def _process_commit(self, content: AuthenticatedContent, before_merge: BeforeMerge) -> CommitMessage:
        st = self._state
        sender = content.content.sender
        if self._pending is not None and sender == Sender.member(self.leaf_index):
            pending_content, new_state, applied = self._pending
            if pending_content == content:
                out = CommitMessage(sender, new_state.group_context.epoch, applied, committer=self.leaf_index)
                before_merge(out, new_state.tree)
                self.merge_pending_commit()
                return out
        if sender == Sender.member(self.leaf_index):
            raise InvalidSender("a Commit from our own leaf that we did not create")
        staged = stage_commit(content, st.tree, st.group_context, st.transcript, self.proposals,
                              now=self._now())
        me = self.leaf_index
        if me in staged.applied.removed:
            out = CommitMessage(sender, staged.group_context.epoch, staged.applied, removed_me=True,
                                committer=staged.committer)
            before_merge(out, staged.tree)
            self.active = False
            return out

        keys = st.keys.copy()
        if me in staged.applied.updated:
            new_leaf = staged.tree.leaf(me)
            pair = self._pending_updates.get(new_leaf.encryption_key)
            if pair is None:
                raise CommitError("an Update of our leaf that we did not propose")
            keys.keys[2 * me] = pair
        keys.prune(staged.tree)
        commit_secret = None
        if staged.path is not None:
            received = decrypt_update_path(staged.tree, keys, staged.committer, staged.path,
                                           encode(staged.provisional_context),
                                           exclude=staged.applied.added_leaves)
            commit_secret = received.commit_secret
            keys.prune(staged.tree)
        init_secret = st.secrets.init_secret
        if staged.applied.external_init is not None:
            try:
                init_secret = external_init_receiver(st.secrets.external_key_pair().private,
                                                     staged.applied.external_init.kem_output)
            except CryptoError:
                raise BadExternalInit("the ExternalInit kem_output does not decapsulate") from None
        psks = resolve_psks(staged.applied.psk_ids, self._psk_lookup)
        secrets = EpochSecrets.from_epoch(init_secret, commit_secret, psk_secret(psks), staged.group_context)
        tag = content.auth.confirmation_tag
        verify_confirmation_tag(secrets.confirmation_key, staged.group_context.confirmed_transcript_hash, tag)
        out = CommitMessage(sender, staged.group_context.epoch, staged.applied, committer=staged.committer)
        before_merge(out, staged.tree)
        self._pending_updates.clear()
        self._enter_epoch(_EpochState(staged.group_context, staged.tree, keys, secrets,
                                      staged.transcript, tag))
        if staged.applied.reinit is not None:
            self.active = False  # §12.4.2: wait for the Welcome of the new group
        return out

    # --- joining (§12.4.3.1, §12.4.3.2) ------------------------------------------------------------

    @classmethod
    def join_from_welcome(cls, welcome: Welcome, bundle: KeyPackageBundle, *,
                          ratchet_tree: RatchetTree | bytes | None = None,
                          external_psks: dict[bytes, bytes] | None = None,
                          resumption_psks: dict[tuple[bytes, int], bytes] | None = None,
                          clock: Clock | None = None) -> "Group":
        """Join with a Welcome for ``bundle``'s KeyPackage (§12.4.3.1).

        The tree comes from ``ratchet_tree`` or the GroupInfo's
        ``ratchet_tree`` extension. Raises the :mod:`.welcome` errors,
        :class:`MissingRatchetTree`, tree validation errors,
        :class:`NotInTree`, :class:`~phoenix_ref.mls.treekem.PrivateStateError`.
        """
        psks = dict(external_psks or {})
        res = dict(resumption_psks or {})
        trees: list[RatchetTree] = []

        def lookup(pid: PreSharedKeyID) -> bytes | None:
            if pid.psktype == PSKType.external:
                return psks.get(pid.psk_id)
            return res.get((pid.psk_group_id, pid.psk_epoch))

        def signer(gi: GroupInfo) -> bytes:
            tree = _tree_for(gi, ratchet_tree)
            trees.append(tree)
            leaf = tree.leaf(gi.signer)
            if leaf is None:
                raise InvalidSender("the GroupInfo signer's leaf is blank")
            return leaf.signature_key

        opened = open_welcome(welcome, bundle.key_package, bundle.init_priv, signer, lookup)
        tree = trees[-1]
        gi = opened.group_info
        ctx = gi.group_context
        now = None if clock is None else clock.now_ms() // 1000
        tree.validate(ctx.group_id, extensions=ctx.extensions, tree_hash=ctx.tree_hash, now=now)
        me = next((i for i, leaf in tree.leaves() if leaf == bundle.key_package.leaf_node), None)
        if me is None:
            raise NotInTree("no leaf of the tree is our KeyPackage's leaf node")
        keys = PrivateTreeKeys.for_leaf(me, bundle.encryption_priv)
        gs = opened.group_secrets
        if gs.path_secret is not None:
            keys.join_with_path_secret(tree, gi.signer, gs.path_secret.path_secret)
        keys.check_consistent(tree)
        state = _EpochState(ctx, tree, keys, opened.epoch_secrets, opened.transcript, gi.confirmation_tag)
        group = cls(state, bundle.signing_key, external_psks=psks, clock=clock)
        group.resumption_psks.update(res)
        return group

    @classmethod
    def join_by_external_commit(cls, group_info: GroupInfo, signing_key: SigningKey,
                                credential: Credential, *,
                                ratchet_tree: RatchetTree | bytes | None = None,
                                resync_leaf: int | None = None,
                                psk_ids: Sequence[PreSharedKeyID] = (),
                                external_psks: dict[bytes, bytes] | None = None,
                                authenticated_data: bytes = b"",
                                leaf_extensions: Sequence[Extension] = (),
                                clock: Clock | None = None) -> tuple["Group", MLSMessage]:
        """Join by an external Commit (§12.4.3.2).

        Verifies the GroupInfo and the tree, and that our new leaf is valid
        in the group (it supports every GroupContext extension, §13, else a
        :class:`~phoenix_ref.mls.tree.LeafNodeError`); derives the init secret from
        ``external_pub`` (§8.3), commits ExternalInit (plus a Remove of
        ``resync_leaf`` for a resync, plus PSKs) with an UpdatePath from the
        leftmost free leaf, and returns the new member's group, already in the
        new epoch, with the Commit to send.
        """
        now = None if clock is None else clock.now_ms() // 1000
        public = PublicGroup.from_group_info(group_info, _tree_for(group_info, ratchet_tree), now=now)
        tree, ctx = public.tree, public.group_context
        ext_pub = get_extension(group_info.extensions, ExternalPub)
        if ext_pub is None:
            raise GroupError("the GroupInfo has no external_pub (§12.4.3.2)")
        kem_output, init_secret = external_init_sender(ext_pub.external_pub)
        sender = Sender.new_member_commit()
        infos = [ProposalInfo(ExternalInit(kem_output), sender)]
        if resync_leaf is not None:
            infos.append(ProposalInfo(Remove(resync_leaf), sender))
        infos += [ProposalInfo(PreSharedKey(pid), sender) for pid in psk_ids]
        validate_proposal_list(infos, committer=sender, tree=tree, group_context=ctx, now=now)
        new_tree = tree.copy()
        applied = apply_proposals(new_tree, ctx.extensions, infos)
        placeholder = HpkeKeyPair.generate()
        template = make_leaf_node(signing_key, credential, placeholder.public, LeafNodeSource.commit,
                                  extensions=leaf_extensions, group_id=ctx.group_id,
                                  leaf_index=new_tree.free_leaf_index())
        me = new_tree.add_leaf(template)
        own = create_update_path(new_tree, me, template, signing_key, ctx.group_id)
        # §13: a joiner supports every GroupContext extension; §7.3 for our new leaf.
        validate_leaf_node(own.leaf_node, group_id=ctx.group_id, leaf_index=me,
                           expected_source=LeafNodeSource.commit, extensions=applied.extensions,
                           credential_types_in_use=new_tree.credential_types_in_use(me), now=now)
        prov = provisional_context(ctx, new_tree, applied.extensions)
        update_path = own.encrypt(new_tree, encode(prov))
        commit = Commit(proposal_or_refs(infos), update_path)
        fc = build_content(ctx.group_id, ctx.epoch, sender, commit, authenticated_data)
        content = authenticate(signing_key, WireFormat.mls_public_message, fc, ctx)
        external = dict(external_psks or {})
        psks = resolve_psks(applied.psk_ids, lambda pid: external.get(pid.psk_id)
                            if pid.psktype == PSKType.external else None)
        old = _EpochState(ctx, tree, own.keys, None, public.transcript, group_info.confirmation_tag)
        new_state, content = _finish_epoch(old, new_tree, own.keys, applied, content, init_secret,
                                           own.commit_secret, psks)
        message = MLSMessage.wrap(protect_public(content, ctx, None))
        return cls(new_state, signing_key, external_psks=external, clock=clock), message


# --- helpers shared by the operations above -------------------------------------------------------


def _accept(_out: CommitMessage, _tree: RatchetTree) -> None:
    """The default :data:`BeforeMerge`: MLS's checks are all there is."""


def _finish_epoch(st: _EpochState, tree: RatchetTree, keys: PrivateTreeKeys, applied: AppliedProposals,
                  content: AuthenticatedContent, init_secret: bytes, commit_secret: bytes | None,
                  psks: list) -> tuple[_EpochState, AuthenticatedContent]:
    """The committer's side of §12.4.1 after signing: confirmed transcript
    hash, new GroupContext, key schedule, confirmation tag, interim hash."""
    confirmed = st.transcript.confirm(content)
    ctx = new_group_context(st.group_context, tree, applied.extensions, confirmed)
    secrets = EpochSecrets.from_epoch(init_secret, commit_secret, psk_secret(psks), ctx)
    tag = confirmation_tag(secrets.confirmation_key, confirmed)
    content = with_confirmation_tag(content, tag)
    return _EpochState(ctx, tree, keys, secrets, st.transcript.update(content), tag), content


def _sign_group_info(st: _EpochState, signing_key: SigningKey, with_tree: bool) -> GroupInfo:
    """GroupInfo of ``st`` (§12.4.3): extensions ``external_pub`` and, when
    asked, ``ratchet_tree``."""
    exts = [to_extension(ExternalPub(st.secrets.external_pub))]
    if with_tree:
        exts.append(to_extension(RatchetTreeExtension(st.tree.to_nodes())))
    return sign_group_info(signing_key, st.group_context, exts, st.confirmation_tag, st.keys.leaf_index)


def _tree_for(gi: GroupInfo, given: RatchetTree | bytes | None) -> RatchetTree:
    """The ratchet tree given, else the GroupInfo's ``ratchet_tree`` extension (§12.4.3.3)."""
    if given is not None:
        return RatchetTree.of(given)
    ext = get_extension(gi.extensions, RatchetTreeExtension)
    if ext is None:
        raise MissingRatchetTree("no ratchet tree given and none in the GroupInfo")
    return RatchetTree.from_nodes(ext.ratchet_tree)
