"""The Delivery Service core, sans IO (``spec/delivery_service.md``).

A request, the group's stored row, the DS's signing keys and the time go
in; an :class:`Outcome` comes out: the answer (or the refusal), the sealed
state to write (or the group to delete) and the FanOutMessages for the
local QS. The service shell (:mod:`.service`) reads the row, calls the
core, writes the outcome in one transaction together with the fan-outs
(an outbox, decision A40) and hands them to the QS.

Every request that changes a group follows ``#validation``: the state is
opened with the request's EAR key; the DsAuthToken is checked against the
sender's leaf; the DS proposes the removals it owes
(``#ds-induced-removals``: deleted queues, inactive clients other than the
sender, decision A29); the MLS message is checked by the public view
(:class:`~phoenix_ref.mls.public_group.PublicGroup`) and by the endpoint's
rules; only then does the state change. A commit for another epoch than the
current one gets ``409 wrong_epoch``, which — with the per-group lock of
the shell — decides between two commits of the same epoch; the one exception
is a byte-identical repetition, by its sender, of one of the last commits the
DS applied: a client that lost the answer asks again and is told the commit
went through, with nothing written or sent a second time
(docs/decisions.md, "A commit whose answer was lost"). A refusal leaves
the state as it was, except for removal proposals the DS made for an
authenticated member, which are kept and sent (they do not depend on the
refused request).

The choices where the spec is silent are the entries A1–A42 of
``docs/decisions.md``; the code names them where it applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..auth_tokens import DsAuthToken, DsKeyPackageRef, DsLeafIndex, RequestBinding
from ..codec import DecodeError, decode, encode
from ..credentials import LeafCredential
from ..crypto import CryptoError, HPKECiphertext, HpkeKeyPair, SigningKey, decrypt_with_label, encrypt_with_label, \
    hash_
from ..errors import Conflict, Forbidden, Malformed, NotFound, ProtocolError
from ..ids import Fqdn, GroupId
from ..mls import MlsError
from ..mls.commit import ProposalInfo
from ..mls.extensions import (
    ExternalSenders, QueueConfigExtension, RolesExtension, extension_type_of, get_extension,
)
from ..mls.framing import BadSignature
from ..mls.keypackage import validate_key_package
from ..mls.messages import (
    Add, ContentType, CredentialType, Extension, GroupContextExtensions, GroupInfo, KeyPackage, LeafNode,
    MLSMessage, Remove, SenderType, WireFormat, make_key_package_ref,
)
from ..mls.public_group import NotExternalSender, PublicCommit, PublicGroup
from ..mls.tree import RatchetTree
from ..paths import endpoint_path
from ..queuing.messages import (
    ApplicationContent, ClientInactivityRemoval, ClientQueueConfig, CommitContent, FanOutMessage,
    ProposalContent, QueueDeletionRemoval, WelcomeBundle,
)
from . import messages as m
from .group_state import (
    SEAL_OVERHEAD, ClientProfile, GroupState, Joiner, PastGroupState, WrongEarKey, open_state, seal_state,
)

__all__ = ["DsConfig", "DsCore", "GroupRow", "Outcome", "group_id_of_request", "DAY_MS",
           "EAR_KEY_LABEL", "DELETED_QUEUE_LABEL", "ProposalStoreNotEmpty", "WrongEpoch", "commit_digest"]

DAY_MS = 24 * 3600 * 1000
#: EncryptWithLabel labels (decisions A11 and A2).
EAR_KEY_LABEL = "phoenix GroupStateEarKey"
DELETED_QUEUE_LABEL = "phoenix DeletedQueue"


class WrongEpoch(Conflict):
    code = "wrong_epoch"


def commit_digest(message: MLSMessage) -> bytes:
    """What the group state remembers of an applied commit."""
    return hash_(encode(message))


class ProposalStoreNotEmpty(Conflict):
    """``#proposal-store``: only *update client* may commit now."""
    code = "proposal_store_not_empty"


class NotAdmin(Forbidden):
    code = "not_admin"


@dataclass(frozen=True)
class DsConfig:
    domain: Fqdn
    max_token_age_ms: int = 3600 * 1000                 # #ds-configuration-options
    max_inactivity_days: int = 90                       # #ds-configuration-options
    max_key_package_age_days: int = 90                  # decision A9
    min_bucket_bytes: int = 4096                        # decision A19
    padding_percentile: int = 8                         # #ds-configuration-options ("1..10", a decile)


@dataclass
class GroupRow:
    """A group's plaintext row: the sealed state, the Queue ID encryption
    key and the deleted-queue rows (id, ciphertext)."""
    sealed_state: bytes
    queue_id_key: bytes
    deleted_queues: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class Outcome:
    """What a request did. ``sealed_state`` is None when nothing is to be
    written; ``delete_group`` removes the group's rows; ``error`` is raised
    after the outcome is stored."""
    response: Any = None
    error: ProtocolError | None = None
    sealed_state: bytes | None = None
    queue_id_key: bytes | None = None
    delete_group: bool = False
    consumed_deleted: list[int] = field(default_factory=list)
    fan_outs: list[FanOutMessage] = field(default_factory=list)

    def send(self, configs: Sequence[ClientQueueConfig], content: Any) -> None:
        if configs:
            self.fan_outs.append(FanOutMessage(list(configs), content))


def _mls_group_id(message: MLSMessage) -> bytes:
    if message.wire_format == WireFormat.mls_public_message:
        return bytes(message.public_message.content.group_id)
    if message.wire_format == WireFormat.mls_private_message:
        return bytes(message.private_message.group_id)
    raise Malformed("expected a PublicMessage or PrivateMessage", code="bad_mls_message")


def group_id_of_request(request: Any) -> GroupId:
    """The group a DS request acts on: its params' ``group_id``, else the
    group id of the MLS message it carries (a Phoenix GroupId, A31)."""
    params = getattr(request, "params", request)
    gid = getattr(params, "group_id", None)
    if gid is not None:
        return gid
    message = next(v for v in (getattr(params, k, None) for k in
                               ("commit", "application_message", "remove_proposal", "external_commit"))
                   if v is not None)
    try:
        return GroupId.from_mls(_mls_group_id(message))
    except DecodeError as e:
        raise Malformed(f"the MLS group id is not a Phoenix GroupId: {e}", code="bad_group_id") from None


def _roles(extensions: Sequence[Extension]) -> RolesExtension:
    roles = get_extension(extensions, RolesExtension)
    if roles is None:
        raise Malformed("the group has no RolesExtension (decision A7)", code="missing_roles")
    return roles



class DsCore:
    """The DS of one homeserver: rules of ``spec/delivery_service.md``."""

    def __init__(self, config: DsConfig, signing_keys: Sequence[SigningKey]):
        self.config = config
        self.signing_keys = signing_keys     # the keystore's list: a rotation shows here
        #: the padding bucket (decision A19), recomputed from the stored
        #: sizes by :meth:`set_bucket`
        self.bucket_bytes = config.min_bucket_bytes

    def set_bucket(self, stored_sizes: Sequence[int]) -> int:
        """Decision A19: the bucket is the size of the stored state at the
        configured decile (ordered by size), at least the minimum; every
        state is padded to a multiple of it. ``stored_sizes`` are the
        lengths of the stored ciphertexts, which the database shows anyway."""
        sizes = sorted(stored_sizes)
        bucket = self.config.min_bucket_bytes
        if sizes:
            at = sizes[max(0, -(-len(sizes) * self.config.padding_percentile // 10) - 1)]
            bucket = max(bucket, at - SEAL_OVERHEAD)
        self.bucket_bytes = bucket
        return bucket

    # --- plumbing ------------------------------------------------------------------------------

    def _binding(self, name: str, params: Any) -> RequestBinding:
        return RequestBinding(self.config.domain, endpoint_path(name), encode(params))

    def _check_token(self, auth: DsAuthToken, group_id: GroupId, kind: type, key: bytes, name: str,
                     params: Any, now_ms: int) -> None:
        auth.check_group(group_id)
        auth.check_sender_kind(kind)
        auth.verify(key, now_ms, self._binding(name, params), max_age_ms=self.config.max_token_age_ms)

    def _leaf_token(self, st: GroupState, req: Any, name: str, now_ms: int) -> int:
        """The sender's leaf after checking its DsAuthToken (``#authentication``)."""
        auth = req.auth
        if not isinstance(auth.sender_id, DsLeafIndex):
            auth.check_sender_kind(DsLeafIndex)
        leaf_index = auth.sender_id.leaf_index
        leaf = st.public.tree.leaf(leaf_index)
        if leaf is None:
            raise Forbidden(f"leaf {leaf_index} is not a member of the group", code="not_a_member")
        self._check_token(auth, st.group_id, DsLeafIndex, leaf.signature_key, name, req.params, now_ms)
        return leaf_index

    def _open(self, group_id: GroupId, row: GroupRow | None, ear_key: bytes) -> GroupState:
        if row is None:
            raise NotFound(f"no group {group_id} on this DS", code="unknown_group")
        try:
            return open_state(group_id, row.sealed_state, bytes(ear_key))
        except WrongEarKey as e:
            raise Forbidden(str(e), code="wrong_ear_key") from None

    def _seal(self, st: GroupState, out: Outcome) -> Outcome:
        out.sealed_state = seal_state(st, st.ear_key, self.bucket_bytes)
        return out

    def _today(self, now_ms: int) -> int:
        return now_ms // DAY_MS

    # --- DS-induced removals (#ds-induced-removals, decisions A29, A30) -------------------------

    def _ds_key_for(self, pg: PublicGroup) -> SigningKey | None:
        senders = get_extension(pg.group_context.extensions, ExternalSenders)
        listed = {s.signature_key for s in (senders.external_senders if senders else [])}
        return next((k for k in self.signing_keys if k.public in listed), None)

    def _ds_removals(self, st: GroupState, row: GroupRow, now_ms: int, out: Outcome, sender: int) -> bool:
        """Propose the removals the DS owes; True if the state changed."""
        pg = st.public
        targeted = {p.proposal.removed for p in pg.proposals if isinstance(p.proposal, Remove)}
        deleted: set[bytes] = set()
        for row_id, sealed in row.deleted_queues:
            out.consumed_deleted.append(row_id)
            try:
                ct = decode(HPKECiphertext, sealed)
                deleted.add(decrypt_with_label(st.queue_id_decryption_key, DELETED_QUEUE_LABEL,
                                               encode(st.group_id), ct.kem_output, ct.ciphertext))
            except (DecodeError, CryptoError):
                continue   # not sealed to this group's key: nothing to act on
        # without deleted queues, skip encoding every member's config
        gone = [i for i, p in sorted(st.clients.items())
                if encode(p.client_queue_config) in deleted and i not in targeted] if deleted else []
        today = self._today(now_ms)
        inactive = [i for i, p in sorted(st.clients.items())
                    if today - p.activity_day > self.config.max_inactivity_days
                    and i not in targeted and i not in gone and i != sender]
        if not gone and not inactive:
            return bool(out.consumed_deleted)
        key = self._ds_key_for(pg)
        if key is None:   # a group created before A20 was enforced cannot be helped
            return bool(out.consumed_deleted)
        recipients = st.queue_configs(exclude=set(gone))
        try:
            if gone:
                out.send(recipients, QueueDeletionRemoval([pg.external_remove_proposal(key, i) for i in gone]))
            if inactive:
                out.send(recipients, ClientInactivityRemoval([pg.external_remove_proposal(key, i)
                                                              for i in inactive]))
        except (NotExternalSender, MlsError):
            return bool(out.consumed_deleted)
        return True

    def _begin(self, name: str, req: Any, row: GroupRow | None, now_ms: int
               ) -> tuple[GroupState, int, Outcome, bool]:
        """Open the state, authenticate the sender's leaf, then propose the
        removals the DS owes (never of the sender, who is plainly active).
        A refusal up to here changes nothing."""
        st = self._open(group_id_of_request(req), row, req.params.group_state_ear_key)
        leaf = self._leaf_token(st, req, name, now_ms)
        out = Outcome()
        changed = self._ds_removals(st, row, now_ms, out, sender=leaf)
        return st, leaf, out, changed

    def _refused(self, st: GroupState, out: Outcome, changed: bool, error: ProtocolError) -> Outcome:
        """A refusal: keep what the DS itself did while opening the state."""
        if not changed:
            raise error
        out.error = error
        out.response = None
        return self._seal(st, out)

    # --- the endpoints ------------------------------------------------------------------------

    def request_group_id(self) -> GroupId:
        """``#request-group-id``: a fresh id (the store re-samples on a collision)."""
        return GroupId.random(self.config.domain)

    def create_group(self, req: m.CreateGroupRequest, has_placeholder: bool, now_ms: int) -> Outcome:
        """``#create-group`` (decision A23)."""
        p = req.params
        gid = p.group_id
        if gid.ds_domain != self.config.domain:
            raise Forbidden(f"group {gid} belongs to another DS", code="wrong_ds")
        if not has_placeholder:
            raise NotFound(f"no placeholder for group id {gid}: request a group id first", code="unknown_group_id")
        if len(p.initial_ear_key) != m.EAR_KEY_LEN:
            raise Malformed(f"a GroupStateEarKey has {m.EAR_KEY_LEN} bytes", code="bad_ear_key")
        leaf = p.key_package.leaf_node
        self._check_token(req.auth, gid, DsLeafIndex, leaf.signature_key, "ds_create_group", p, now_ms)
        if req.auth.sender_id.leaf_index != 0:
            raise Forbidden("the creator is leaf 0", code="auth_scope_mismatch")
        gi = p.group_info
        ctx = gi.group_context
        if bytes(ctx.group_id) != gid.to_mls():
            raise Malformed("the GroupInfo is for another group id", code="group_id_mismatch")
        if ctx.epoch != 0 or gi.signer != 0:
            raise Malformed("a new group is at epoch 0, signed by leaf 0", code="invalid_group_info")
        roles = _roles(ctx.extensions)
        if list(roles.admins) != [0] or list(roles.members):
            raise Malformed("a new group's RolesExtension names leaf 0 as its only admin (A7)", code="bad_roles")
        try:
            validate_key_package(p.key_package, now=now_ms // 1000)
            public = PublicGroup.from_group_info(gi, RatchetTree.single(leaf), now=now_ms // 1000)
        except (MlsError, CryptoError) as e:
            raise Malformed(f"invalid group: {e}", code="invalid_group_info") from None
        if self._ds_key_for(public) is None:
            raise Malformed(f"the group must list a key of ds.{self.config.domain} as external sender (A20)",
                            code="missing_external_sender")
        self._check_leaf_credential(leaf, now_ms)
        queue_id = HpkeKeyPair.generate()
        st = GroupState(gid, public, {}, [], [], queue_id.private)
        st.add_client(ClientProfile(0, p.encrypted_credential_chain, p.creator_queue_config,
                                    self._today(now_ms), 0))
        st.ear_key = bytes(p.initial_ear_key)
        out = Outcome(response=m.Empty(), queue_id_key=queue_id.public)
        return self._seal(st, out)

    def update_queue_info(self, req: m.UpdateQueueInfoRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#update-queue-information`` (decision A32)."""
        p = req.params
        st, leaf, out, changed = self._begin("ds_update_queue_info", req, row, now_ms)
        profile = st.clients[leaf]
        st.clients[leaf] = ClientProfile(leaf, profile.encrypted_credential_information, p.new_queue_config,
                                         profile.activity_day, profile.activity_epoch)
        out.response = m.Empty()
        return self._seal(st, out)

    def welcome_info(self, req: m.WelcomeInfoRequest, row: GroupRow | None, now_ms: int) -> m.WelcomeInfoResponse:
        """``#get-welcome-information``: the past state a joiner needs (A24);
        read only, so no removals are proposed (A29)."""
        p = req.params
        st = self._open(p.group_id, row, p.group_state_ear_key)
        auth = req.auth
        auth.check_group(p.group_id)
        auth.check_sender_kind(DsKeyPackageRef)
        ref = bytes(auth.sender_id.key_package_ref)
        for past in st.past_states:
            if past.epoch != p.epoch:
                continue
            joiner = next((j for j in past.joiners if bytes(j.key_package_ref) == ref), None)
            if joiner is None:
                continue
            nodes = past.tree_nodes()
            leaf = RatchetTree.from_nodes(nodes).leaf(joiner.leaf_index)
            self._check_token(auth, p.group_id, DsKeyPackageRef, leaf.signature_key, "ds_welcome_info", p, now_ms)
            return m.WelcomeInfoResponse(nodes, past.chains())
        raise NotFound(f"no group state of epoch {p.epoch} waits for this KeyPackage", code="unknown_welcome")

    def external_commit_info(self, req: m.ExternalCommitInfoParams, row: GroupRow | None, now_ms: int
                             ) -> m.ExternalCommitInfoResponse:
        """``#get-external-commit-information``: what an external committer
        needs; the EAR key is the authentication (A4). Read only (A29)."""
        st = self._open(req.group_id, row, req.group_state_ear_key)
        pg = st.public
        return m.ExternalCommitInfoResponse(pg.group_info, pg.tree.to_nodes(), st.credential_chains())

    def join_connection_group(self, req: m.JoinConnectionGroupParams, row: GroupRow | None, now_ms: int
                              ) -> Outcome:
        """``#join-connection-group``: an external commit into a group of a
        single user (A6), authenticated by the EAR key (``#authentication-9``);
        the joiner names its queue config (A5); the commit goes to the
        members (A41)."""
        st = self._open(group_id_of_request(req), row, req.group_state_ear_key)
        if len(st.users) != 1:
            raise Conflict("only a group of a single user can be joined as a connection group",
                           code="not_a_connection_group")
        self._require_empty_store(st)
        commit = self._validate_commit(st, req.external_commit, None, now_ms)
        if commit.applied.removed:
            raise Malformed("joining a connection group removes no one", code="proposal_not_allowed")
        aad = _decode_aad(m.JoinConnectionGroupParamsAad, commit)
        joiner = commit.committer
        self._check_leaf_credential(commit.tree.leaf(joiner), now_ms)
        self._check_roles(st, commit, joiner)
        before = {i: c.client_queue_config for i, c in st.clients.items()}
        self._merge(st, commit, req.group_info_update)
        today = self._today(now_ms)
        st.add_client(ClientProfile(joiner, aad.encrypted_credential_information, req.sender_queue_config, today,
                                    st.public.epoch))
        out = Outcome(response=m.Empty())
        self._finish_commit(st, req.external_commit, commit, joiner, before, out, now_ms)
        return self._seal(st, out)

    def resync_client(self, req: m.ResyncClientRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#resync`` as RFC 9420 allows it (A8): an external commit that
        removes the client's old leaf — the DsAuthToken's — and brings the
        same leaf credential back."""
        p = req.params
        st, old, out, changed = self._begin("ds_resync_client", req, row, now_ms)
        try:
            self._require_empty_store(st)
            commit = self._validate_commit(st, p.external_commit, None, now_ms)
            if list(commit.applied.removed) != [old]:
                raise Malformed("a resync removes exactly the resyncing client's old leaf (A8)",
                                code="proposal_not_allowed")
            new = commit.committer
            old_leaf, new_leaf = st.public.tree.leaf(old), commit.tree.leaf(new)
            if encode(new_leaf.credential) != encode(old_leaf.credential) \
                    or bytes(new_leaf.signature_key) != bytes(old_leaf.signature_key):
                raise Malformed("the leaf credential of a resynced client must stay the same (A8)",
                                code="credential_changed")
            self._check_roles(st, commit, new)
            before = {i: c.client_queue_config for i, c in st.clients.items()}
            self._merge(st, commit, p.group_info_update)
        except ProtocolError as e:
            return self._refused(st, out, changed, e)
        info = st.clients[old].encrypted_credential_information
        st.remove_client(old)            # the same client, in its new leaf
        st.add_client(ClientProfile(new, info, p.sender_queue_config, self._today(now_ms), st.public.epoch))
        st.drop_expired_joiners(now_ms // 1000)
        out.send([cfg for leaf, cfg in sorted(before.items()) if leaf != old], CommitContent(p.external_commit))
        out.response = m.Empty()
        return self._seal(st, out)

    # --- commits --------------------------------------------------------------------------------

    @staticmethod
    def _is_repeat(st: GroupState, message: MLSMessage, sender: int) -> bool:
        """Whether ``message`` is, byte for byte, one of the last commits the
        DS applied, sent by ``sender`` (the token's leaf). Asked before the
        endpoint's other rules, which judge the group as it is now, not as
        it was then (docs/decisions.md, "A commit whose answer was lost")."""
        if message.wire_format != WireFormat.mls_public_message:
            return False
        fc = message.public_message.content
        return fc.epoch < st.public.epoch and fc.sender.sender_type == SenderType.member \
            and fc.sender.leaf_index == sender and commit_digest(message) in st.recent_commits

    def _repeat(self, st: GroupState, out: Outcome, changed: bool) -> Outcome:
        """The answer to a repeated commit: success, as the first time;
        nothing is written or sent again (only removals the DS proposed
        while opening the state, as for any request)."""
        out.response = m.Empty()
        return self._seal(st, out) if changed else out

    def _validate_commit(self, st: GroupState, message: MLSMessage, sender: int | None, now_ms: int
                         ) -> PublicCommit:
        """A commit of this group and epoch, as a PublicMessage (A15), from
        member leaf ``sender`` (the token's), or external when ``sender`` is
        None; then the public view's checks."""
        if message.wire_format != WireFormat.mls_public_message:
            raise Malformed("commits travel as PublicMessages (A15)", code="commit_not_public")
        fc = message.public_message.content
        if bytes(fc.group_id) != st.group_id.to_mls():
            raise Malformed("the commit is for another group", code="group_id_mismatch")
        if fc.epoch != st.public.epoch:
            raise WrongEpoch(f"the group is at epoch {st.public.epoch}, the commit is for epoch {fc.epoch}: "
                             "catch up (process what you missed, or fetch the group information) and commit again")
        if fc.content_type != ContentType.commit:
            raise Malformed("not a commit", code="not_a_commit")
        if sender is None and fc.sender.sender_type != SenderType.new_member_commit:
            raise Malformed("an external commit is expected", code="not_external_commit")
        if sender is not None and (fc.sender.sender_type != SenderType.member or fc.sender.leaf_index != sender):
            raise Forbidden("the commit's sender is not the token's leaf", code="auth_scope_mismatch")
        try:
            return st.public.validate_commit(message, now=now_ms // 1000)
        except MlsError as e:
            raise Malformed(f"invalid commit: {e}", code="invalid_commit") from None

    def _check_roles(self, st: GroupState, commit: PublicCommit, committer: int) -> None:
        """Decision A7: roles change only by an admin, or by dropping the
        leaves the commit removes; no blank leaf stays listed."""
        old_exts = st.public.group_context.extensions
        new_exts = commit.group_context.extensions
        old, new = _roles(old_exts), _roles(new_exts)
        if _non_role_extensions(old_exts) != _non_role_extensions(new_exts):
            raise Malformed("a commit may change only the RolesExtension of the group context",
                            code="proposal_not_allowed")
        removed = set(commit.applied.removed)
        if new != old and committer not in old.admins:
            pruned = RolesExtension([a for a in old.admins if a not in removed],
                                    [x for x in old.members if x not in removed])
            if new != pruned:
                raise NotAdmin("only admins change roles")
        tree = commit.tree
        for leaf in list(new.admins) + list(new.members):
            if tree.leaf(leaf) is None:
                raise Malformed(f"the RolesExtension lists blank leaf {leaf}: drop removed members from it",
                                code="bad_roles")

    def _require_admin(self, st: GroupState, leaf: int) -> None:
        if leaf not in _roles(st.public.group_context.extensions).admins:
            raise NotAdmin("only clients of admins may do this (#adding-new-users-to-the-group, #remove-users)")

    def _require_empty_store(self, st: GroupState) -> None:
        if len(st.public.proposals):
            raise ProposalStoreNotEmpty("the proposal store is not empty: commit its proposals with "
                                        "update client first (#proposal-store)")

    def _by_value(self, commit: PublicCommit) -> list[ProposalInfo]:
        return [p for p in commit.staged.proposals if p.ref is None]

    def _only(self, proposals: list[ProposalInfo], allowed: tuple[type, ...], what: str) -> None:
        """Decision A39: an endpoint's commit carries only its proposal types
        by value (a roles change is checked by :meth:`_check_roles`)."""
        for p in proposals:
            if not isinstance(p.proposal, allowed):
                raise Malformed(f"{what} may not carry a {type(p.proposal).__name__} proposal (A39)",
                                code="proposal_not_allowed")

    def _merge(self, st: GroupState, commit: PublicCommit, update: m.GroupInfoUpdate) -> GroupInfo:
        try:
            return st.public.merge_commit(commit, update.signature, update.extensions)
        except BadSignature:
            raise Malformed("the GroupInfo signature does not verify with the committer's new leaf key",
                            code="bad_group_info_signature") from None

    def _finish_commit(self, st: GroupState, message: MLSMessage, commit: PublicCommit, committer: int,
                       before: dict, out: Outcome, now_ms: int) -> None:
        """After a merge: removed clients go, the committer's activity moves,
        the commit goes to every member of the old epoch but the committer (A17)."""
        for leaf in commit.applied.removed:
            st.remove_client(leaf)
        st.touch(committer, self._today(now_ms))
        st.remember_commit(commit_digest(message))
        st.drop_joiner(committer)
        st.drop_expired_joiners(now_ms // 1000)
        out.send([cfg for leaf, cfg in sorted(before.items()) if leaf != committer],
                 CommitContent(message))

    def _member_commit(self, name: str, req: Any, row: GroupRow | None, now_ms: int,
                       rules: Callable[[GroupState, PublicCommit, int], Any],
                       apply: Callable[[GroupState, PublicCommit, Any, Outcome], None] | None = None, *,
                       admin: bool, empty_store: bool = True) -> Outcome:
        """What the member commit endpoints share (``#validation``): the
        sender's token, the proposal-store rule (R16), the admin rule, the
        public view's checks, the endpoint's ``rules`` (their result goes to
        ``apply``), the roles rule (A7) and the GroupInfo signature — then
        the merge, the endpoint's ``apply`` to the state, the bookkeeping of
        :meth:`_finish_commit` and the fan-out."""
        p = req.params
        st, leaf, out, changed = self._begin(name, req, row, now_ms)
        if self._is_repeat(st, p.commit, leaf):
            return self._repeat(st, out, changed)
        try:
            if empty_store:
                self._require_empty_store(st)
            if admin:
                self._require_admin(st, leaf)
            commit = self._validate_commit(st, p.commit, leaf, now_ms)
            found = rules(st, commit, leaf)
            self._check_roles(st, commit, leaf)
            before = {i: c.client_queue_config for i, c in st.clients.items()}
            self._merge(st, commit, p.group_info_update)
        except ProtocolError as e:
            return self._refused(st, out, changed, e)
        self._finish_commit(st, p.commit, commit, leaf, before, out, now_ms)
        if apply is not None:
            apply(st, commit, found, out)
        out.response = m.Empty()
        return self._seal(st, out)

    def add_users(self, req: m.AddUsersRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#adding-new-users-to-the-group`` (A10, A12, A9, A24): admins
        only, Adds only, one credential (AAD) and one attribution per Add; the
        joiners get profiles, a past state and a WelcomeBundle each."""
        p = req.params
        gid = group_id_of_request(req)

        def rules(st: GroupState, commit: PublicCommit, leaf: int):
            values = self._by_value(commit)
            self._only(values, (Add,), "an add-users commit")
            adds = [x.proposal.key_package for x in values]
            if not adds:
                raise Malformed("an add-users commit adds someone", code="proposal_not_allowed")
            if [encode(k) for k in p.key_package] != [encode(k) for k in adds]:
                raise Malformed("key_package must list the added KeyPackages in the order of the Adds (A10)",
                                code="key_package_mismatch")
            if len(p.welcome_attribution_info) != len(adds):
                raise Malformed("one WelcomeAttributionInfo per added client (A10)", code="bad_attribution")
            aad = _decode_aad(m.AddUsersParamsAad, commit)
            if len(aad.encrypted_credential_information) != len(adds):
                raise Malformed("one encrypted credential per Add in the commit's AAD (A12)", code="bad_aad")
            return aad.encrypted_credential_information, [self._check_added(kp, now_ms) for kp in adds]

        def apply(st: GroupState, commit: PublicCommit, found, out: Outcome) -> None:
            infos, configs = found
            today = self._today(now_ms)
            joiners = []
            for (index, kp), info, cfg in zip(commit.applied.added, infos, configs):
                st.add_client(ClientProfile(index, info, cfg, today, st.public.epoch))
                joiners.append(Joiner(make_key_package_ref(kp), index, kp.leaf_node.lifetime.not_after))
            st.past_states.append(PastGroupState.of(st.public.epoch, st.public.tree, st.credential_chains(),
                                                    joiners))
            for (index, kp), wai, cfg in zip(commit.applied.added, p.welcome_attribution_info, configs):
                ear = encrypt_with_label(kp.init_key, EAR_KEY_LABEL, encode(gid), st.ear_key)
                out.send([cfg], WelcomeBundle(p.welcome, wai, encode(ear), b"", gid))

        return self._member_commit("ds_add_users", req, row, now_ms, rules, apply, admin=True)

    def _check_added(self, kp: KeyPackage, now_ms: int) -> ClientQueueConfig:
        """E6, E7 and A42 for an added KeyPackage; returns its queue config."""
        try:
            ext = get_extension(kp.extensions, QueueConfigExtension)
        except MlsError:
            ext = None
        if ext is None:
            raise Malformed("every added KeyPackage carries a QueueConfig extension", code="missing_queue_config")
        try:
            cfg = decode(ClientQueueConfig, encode(ext.client_queue_config))
        except (DecodeError, ValueError) as e:
            raise Malformed(f"bad ClientQueueConfig in a KeyPackage: {e}", code="missing_queue_config") from None
        age_s = now_ms // 1000 - kp.leaf_node.lifetime.not_before
        if age_s > self.config.max_key_package_age_days * 86400:
            raise Malformed("a KeyPackage is older than the DS's maximal KeyPackage age (A9)",
                            code="key_package_too_old")
        self._check_leaf_credential(kp.leaf_node, now_ms)
        return cfg

    def _check_leaf_credential(self, leaf: LeafNode, now_ms: int) -> None:
        """Decision A42: a basic credential holding a LeafCredential for the
        leaf's key, not expired."""
        cred = leaf.credential
        if cred.credential_type != CredentialType.basic:
            raise Malformed("leaves carry a LeafCredential in a basic credential (A42)", code="bad_leaf_credential")
        try:
            lc = decode(LeafCredential, bytes(cred.identity))
        except DecodeError as e:
            raise Malformed(f"the leaf's credential is not a LeafCredential: {e}", code="bad_leaf_credential") \
                from None
        if bytes(lc.public_key) != bytes(leaf.signature_key):
            raise Malformed("the LeafCredential names another key than the leaf's", code="bad_leaf_credential")
        if lc.expiration_data.not_after < now_ms:
            raise Malformed("the LeafCredential has expired", code="bad_leaf_credential")

    def remove_users(self, req: m.RemoveUsersRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#remove-users`` (A27, A7): admins only, Removes (and the roles
        change that drops removed admins) only."""
        def rules(st: GroupState, commit: PublicCommit, leaf: int) -> None:
            self._only(self._by_value(commit), (Remove, GroupContextExtensions), "a remove-users commit")
            if not commit.applied.removed:
                raise Malformed("a remove-users commit removes someone", code="proposal_not_allowed")

        return self._member_commit("ds_remove_users", req, row, now_ms, rules, admin=True)

    def update_client(self, req: m.UpdateClientRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#updating-the-sending-clients-own-key-material`` (A26, A14): a
        path, every stored proposal and nothing else but a roles change; a
        new leaf credential comes with new credential information."""
        def rules(st: GroupState, commit: PublicCommit, leaf: int):
            if commit.staged.path is None:
                raise Malformed("an update commit carries an UpdatePath", code="path_required")
            stored = {x.ref for x in st.public.proposals}
            referenced = {x.ref for x in commit.staged.proposals if x.ref is not None}
            if referenced != stored:
                raise ProposalStoreNotEmpty("an update commit must reference every stored proposal, and only them")
            self._only(self._by_value(commit), (GroupContextExtensions,), "an update commit")
            aad = _decode_aad(m.UpdateClientParamsAad, commit, empty_ok=True)
            info = aad.option_encrypted_credential_information if aad is not None else None
            if encode(commit.tree.leaf(leaf).credential) != encode(st.public.tree.leaf(leaf).credential):
                if info is None:
                    raise Malformed("a new credential needs new credential information in the AAD (E15)",
                                    code="bad_aad")
                self._check_leaf_credential(commit.tree.leaf(leaf), now_ms)
            return info

        def apply(st: GroupState, commit: PublicCommit, info, out: Outcome) -> None:
            if info is not None:
                leaf = commit.committer
                old = st.clients[leaf]
                st.clients[leaf] = ClientProfile(leaf, info, old.client_queue_config, old.activity_day,
                                                 old.activity_epoch)

        return self._member_commit("ds_update_client", req, row, now_ms, rules, apply, admin=False,
                                   empty_store=False)

    def delete_group(self, req: m.DeleteGroupRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#delete-group`` (A28)."""
        p = req.params
        st, leaf, out, changed = self._begin("ds_delete_group", req, row, now_ms)
        try:
            self._require_empty_store(st)
            self._require_admin(st, leaf)
            commit = self._validate_commit(st, p.commit, leaf, now_ms)
            values = self._by_value(commit)
            self._only(values, (Remove,), "a delete-group commit")
            others = {i for i, _ in st.public.tree.leaves()} - {leaf}
            if set(commit.applied.removed) != others:
                raise Malformed("a delete-group commit removes every other member", code="proposal_not_allowed")
        except ProtocolError as e:
            return self._refused(st, out, changed, e)
        out.fan_outs = []   # removal proposals are moot: the group goes
        out.send([c.client_queue_config for i, c in sorted(st.clients.items()) if i != leaf],
                 CommitContent(p.commit))
        out.delete_group = True
        out.response = m.Empty()
        return out

    # --- proposals and application messages -------------------------------------------------------

    def self_remove_user(self, req: m.SelfRemoveUserRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#user-self-remove`` (A13): the proposal joins the store and goes
        to the other members."""
        p = req.params
        st, leaf, out, changed = self._begin("ds_self_remove_user", req, row, now_ms)
        try:
            msg = p.remove_proposal
            if msg.wire_format != WireFormat.mls_public_message:
                raise Malformed("proposals travel as PublicMessages (A15)", code="proposal_not_public")
            fc = msg.public_message.content
            if fc.epoch != st.public.epoch:
                raise WrongEpoch(f"the group is at epoch {st.public.epoch}, the proposal is for epoch {fc.epoch}")
            if fc.content_type != ContentType.proposal or not isinstance(fc.proposal, Remove):
                raise Malformed("a self-remove is a Remove proposal", code="proposal_not_allowed")
            if fc.sender.sender_type != SenderType.member or fc.sender.leaf_index != leaf \
                    or fc.proposal.removed != leaf:
                raise Forbidden("a client may only propose its own removal (A13)", code="auth_scope_mismatch")
            try:
                st.public.process_proposal(msg, now=now_ms // 1000)
            except MlsError as e:
                raise Malformed(f"invalid proposal: {e}", code="invalid_proposal") from None
        except ProtocolError as e:
            return self._refused(st, out, changed, e)
        out.send(st.queue_configs(exclude={leaf}), ProposalContent(msg))
        out.response = m.Empty()
        return self._seal(st, out)

    def send_message(self, req: m.SendMessageRequest, row: GroupRow | None, now_ms: int) -> Outcome:
        """``#send-application-message`` (A15, A16, A17). Nothing is written
        unless the DS proposed removals."""
        p = req.params
        st, leaf, out, changed = self._begin("ds_send_message", req, row, now_ms)
        try:
            msg = p.application_message
            if msg.wire_format != WireFormat.mls_private_message:
                raise Malformed("application messages travel as PrivateMessages", code="not_private")
            pm = msg.private_message
            if pm.epoch != st.public.epoch:
                raise WrongEpoch(f"the group is at epoch {st.public.epoch}, the message is for epoch {pm.epoch}: "
                                 "process the commit you missed and send again")
            if pm.content_type != ContentType.application:
                raise Malformed("only application messages go through send message", code="not_application")
        except ProtocolError as e:
            return self._refused(st, out, changed, e)
        out.send(st.queue_configs(exclude={leaf}), ApplicationContent(msg))
        out.response = m.Empty()
        return self._seal(st, out) if changed else out

    # --- deleted queues (A2, A30) ----------------------------------------------------------------

    @staticmethod
    def seal_deleted_queue(group_id: GroupId, queue_id_key: bytes, config: ClientQueueConfig) -> bytes:
        """A deleted queue's config sealed to the group's Queue ID encryption key."""
        return encode(encrypt_with_label(queue_id_key, DELETED_QUEUE_LABEL, encode(group_id), encode(config)))


def _non_role_extensions(extensions: Sequence[Extension]) -> list[bytes]:
    roles_type = extension_type_of(RolesExtension)
    return sorted(encode(e) for e in extensions if e.extension_type != roles_type)


def _decode_aad(cls: type, commit: PublicCommit, empty_ok: bool = False) -> Any:
    data = bytes(commit.staged.content.content.authenticated_data)
    if empty_ok and not data:
        return None
    try:
        return decode(cls, data)
    except DecodeError as e:
        raise Malformed(f"the commit's authenticated data is not a {cls.__name__}: {e}", code="bad_aad") from None
