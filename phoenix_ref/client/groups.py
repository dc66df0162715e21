"""A client's view of one Phoenix group, sans IO.

:class:`GroupMember` wraps the MLS member view (:class:`~phoenix_ref.mls.group.Group`)
with what the Delivery Service flows need (``spec/delivery_service.md``,
``spec/clients/group_interactions.md``, ``../shared/ds-inventory.md`` §3):

* the group's keys: the GroupStateEarKey sent with every request and the
  credential encryption key (``spec/delivery_service/group_state_encryption.md``);
* the members' credential information, decrypted and checked against
  their leaf credentials;
* builders for each DS request (with its DsAuthToken, bound to the request),
  whose commit stays pending until the caller reports the DS's answer
  (:meth:`accepted` / :meth:`refused`); a commit whose answer never came is
  kept as :attr:`GroupMember.unsure` until the DS is asked again;
* :meth:`process` for what a client dequeues for this group; a commit whose
  new members' credential information does not check out is refused whole,
  before MLS moves to its epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..auth_tokens import DsAuthToken, DsKeyPackageRef, DsLeafIndex, RequestBinding
from ..codec import decode, encode
from ..credentials import ClientCredential, TrustStore
from ..crypto import HPKECiphertext, SigningKey, decrypt_with_label
from ..delivery import messages as m
from ..delivery.core import EAR_KEY_LABEL
from ..ids import GroupId
from ..mls.extensions import ExternalSender, ExternalSenders, RolesExtension, get_extension, set_extension, \
    to_extension
from ..mls.group import CommitMessage, CommitResult, Group
from ..mls.welcome import decrypt_group_info, decrypt_group_secrets
from ..mls.keypackage import KeyPackageBundle
from ..mls.messages import (
    ContentType, Credential, GroupContextExtensions, MLSMessage, Remove, SenderType, WireFormat, make_key_package_ref,
)
from ..mls.tree import RatchetTree
from ..paths import endpoint_path
from ..queuing.messages import (
    AddPackage, ApplicationContent, ClientInactivityRemoval, ClientQueueConfig, CommitContent, ProposalContent,
    QueueDeletionRemoval, WelcomeBundle,
)
from .phoenix_credentials import (
    CredentialError, CredentialInformation, LeafIdentity, WelcomeAttributionInfoPayload,
    new_symmetric_key, open_credential_information, seal_attribution, seal_credential_information, verify_leaf,
)

__all__ = ["GroupMember", "Received", "PendingRequest", "UnexpectedContent"]


class UnexpectedContent(Exception):
    """A dequeued message whose Phoenix envelope does not match the MLS
    message inside (an ApplicationContent carrying a proposal or a commit).
    Refused before MLS sees it, so the group's state is unchanged."""


@dataclass(frozen=True)
class Received:
    """An application message as the group saw it: sender leaf, epoch, bytes."""
    sender: int
    epoch: int
    data: bytes


@dataclass
class PendingRequest:
    """A DS request built by :class:`GroupMember`: endpoint name and body."""
    name: str
    body: Any


@dataclass
class GroupMember:
    group_id: GroupId
    group: Group
    leaf: LeafIdentity
    ear_key: bytes
    credential_key: bytes
    clock: Any
    #: credential information per leaf (our own included)
    members: dict[int, CredentialInformation] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    #: True once a commit removed us or the group was deleted
    gone: bool = False
    #: a commit request sent without an answer (the DS may or may not have
    #: applied it); its commit stays pending (docs/decisions.md, "A commit
    #: whose answer was lost")
    unsure: PendingRequest | None = None
    #: messages dequeued for this group while ``unsure`` is set, processed in
    #: order once its outcome is known
    held: list[Any] = field(default_factory=list)
    #: the credential information of the members our pending commit adds
    pending_adds: list[CredentialInformation] = field(default_factory=list)

    # --- creation ---------------------------------------------------------------------------

    @classmethod
    def create(cls, group_id: GroupId, leaf: LeafIdentity, client_credential: ClientCredential,
               ds_verifying_key: bytes, clock: Any) -> "GroupMember":
        """A new group with its RolesExtension (creator admin, A7) and the DS
        as external sender (A20); keys sampled fresh."""
        exts = [to_extension(RolesExtension([0], [])),
                to_extension(ExternalSenders([ExternalSender(ds_verifying_key,
                                                             Credential.basic(f"ds.{group_id.ds_domain}".encode()))]))]
        group = Group.create(leaf.signing_key, leaf.mls_credential, group_id=group_id.to_mls(), extensions=exts,
                             clock=clock)
        me = cls(group_id, group, leaf, new_symmetric_key(), new_symmetric_key(), clock)
        me.members[0] = CredentialInformation(client_credential, leaf.signature_encryption_key)
        return me

    def create_group_request(self, queue_config: ClientQueueConfig) -> PendingRequest:
        p = m.CreateGroupParams(self.group_id, self.group.creator_key_package, self._own_info(), queue_config,
                                self.group.group_info(), self.ear_key)
        return self._request("ds_create_group", p)

    # --- requests ------------------------------------------------------------------------------

    def now(self) -> int:
        return self.clock.now_ms()

    def _own_info(self) -> bytes:
        return seal_credential_information(self.credential_key, self.members[self.group.leaf_index])

    def _request(self, name: str, params: Any) -> PendingRequest:
        return signed_request(name, params, self.group_id, self.leaf.signing_key,
                              DsLeafIndex(self.group.leaf_index), self.now())

    @staticmethod
    def _update(result: CommitResult) -> m.GroupInfoUpdate:
        return m.GroupInfoUpdate(result.group_info.signature, result.group_info.extensions)

    def roles(self) -> RolesExtension:
        return get_extension(self.group.group_context.extensions, RolesExtension)

    def is_admin(self, leaf: int | None = None) -> bool:
        return (self.group.leaf_index if leaf is None else leaf) in self.roles().admins

    def _roles_without(self, leaves: set[int]) -> list:
        """A GroupContextExtensions proposal dropping ``leaves`` from the roles, if listed (A7)."""
        roles = self.roles()
        pruned = RolesExtension([a for a in roles.admins if a not in leaves],
                                [x for x in roles.members if x not in leaves])
        if pruned == roles:
            return []
        return [GroupContextExtensions(set_extension(self.group.group_context.extensions, pruned))]

    def add_request(self, packages: list[tuple[AddPackage, CredentialInformation, bytes]],
                    sender_key: SigningKey, sender_client_id: Any) -> PendingRequest:
        """*Add users*: ``packages`` are (AddPackage, its opened credential
        information, the owner's friendship encryption key)."""
        infos = [seal_credential_information(self.credential_key, info) for _, info, _ in packages]
        kps = [pkg.key_package for pkg, _, _ in packages]
        result = self.group.commit(adds=kps, authenticated_data=encode(m.AddUsersParamsAad(infos)),
                                   ratchet_tree_in_welcome=False)
        welcome_bytes = encode(result.welcome)
        wais = [seal_attribution(sender_key, WelcomeAttributionInfoPayload(sender_client_id, self.credential_key),
                                 self.group_id, welcome_bytes, fkey) for _, _, fkey in packages]
        self.pending_adds = [info for _, info, _ in packages]
        p = m.AddUsersParams(result.message, self.ear_key, self._update(result), result.welcome, wais, kps)
        return self._request("ds_add_users", p)

    def remove_request(self, leaves: list[int]) -> PendingRequest:
        result = self.group.commit(removes=leaves, proposals=self._roles_without(set(leaves)), by_reference=[])
        return self._request("ds_remove_users", m.RemoveUsersParams(result.message, self.ear_key,
                                                                    self._update(result)))

    def update_request(self) -> PendingRequest:
        """*Update client*: a path and every stored proposal (dropping removed
        leaves from the roles, A7)."""
        removed = {p.proposal.removed for p in self.group.proposals if isinstance(p.proposal, Remove)}
        result = self.group.commit(proposals=self._roles_without(removed))
        return self._request("ds_update_client", m.UpdateClientParams(result.message, self.ear_key,
                                                                      self._update(result)))

    def roles_request(self, admins: list[int]) -> PendingRequest:
        """*Update client* that also sets the group's admins (admins only, A7)."""
        roles = RolesExtension(sorted(admins), [])
        gce = GroupContextExtensions(set_extension(self.group.group_context.extensions, roles))
        result = self.group.commit(proposals=[gce])
        return self._request("ds_update_client", m.UpdateClientParams(result.message, self.ear_key,
                                                                      self._update(result)))

    def self_remove_request(self) -> PendingRequest:
        proposal = self.group.propose_remove(self.group.leaf_index)
        return self._request("ds_self_remove_user", m.SelfRemoveUserParams(proposal, self.ear_key))

    def send_request(self, data: bytes) -> PendingRequest:
        return self._request("ds_send_message", m.SendMessageParams(self.group.encrypt(data), self.ear_key))

    def delete_request(self) -> PendingRequest:
        others = [i for i, _ in self.group.tree.leaves() if i != self.group.leaf_index]
        result = self.group.commit(removes=others, by_reference=[])
        return self._request("ds_delete_group", m.DeleteGroupParams(result.message, self.ear_key))

    def queue_info_request(self, config: ClientQueueConfig) -> PendingRequest:
        return self._request("ds_update_queue_info", m.UpdateQueueInfoParams(self.group_id, self.ear_key, config))

    # --- the DS's answer ------------------------------------------------------------------------

    def accepted(self, request: PendingRequest) -> None:
        """The DS took ``request``: a pending commit becomes the new epoch."""
        commit_msg = self.group.pending_commit
        if commit_msg is None:
            return
        self.group.merge_pending_commit()
        for leaf in commit_msg.removed:
            self.members.pop(leaf, None)
        for (leaf, _), info in zip(commit_msg.added, self.pending_adds):
            self.members[leaf] = info
        self.pending_adds = []
        if request.name == "ds_delete_group":
            self.gone = True

    def resigned(self, request: PendingRequest) -> PendingRequest:
        """``request`` with the same params under a fresh DsAuthToken (to ask
        again about a commit whose answer was lost)."""
        return self._request(request.name, request.body.params)

    def refused(self, request: PendingRequest) -> None:
        """The DS refused ``request``: a pending commit is dropped."""
        if self.group.pending_commit is not None:
            self.group.clear_pending_commit()
        self.pending_adds = []

    # --- incoming (F10) ----------------------------------------------------------------------------

    def process(self, content: Any, trust: TrustStore | None = None) -> Any:
        """Apply one dequeued message for this group; returns what MLS made of it."""
        if isinstance(content, (CommitContent, ProposalContent)):
            return self._process_mls(content.message, trust)
        if isinstance(content, ApplicationContent):
            if not _is_application_data(content.message):    # checked first: a commit must not slip in here
                raise UnexpectedContent("an ApplicationContent that does not carry application data")
            out = self.group.process(content.message)
            self.received.append(Received(out.sender, self.group.epoch, out.data))
            return out
        if isinstance(content, (ClientInactivityRemoval, QueueDeletionRemoval)):
            return [self.group.process(p) for p in content.proposals]
        raise ValueError(f"{type(content).__name__} is not for an existing group")

    def _process_mls(self, message: MLSMessage, trust: TrustStore | None) -> Any:
        """A proposal or a commit. A commit is taken whole or not at all: the
        members' credential information of the new epoch is worked out and
        checked before MLS moves to it, so a commit refused here (a false
        claim, information that does not open) leaves the group exactly as
        it was. The DS took that commit, so the group has moved on without
        us; the group's next message then shows a later epoch and
        :meth:`Messenger.receive <phoenix_ref.client.messenger.Messenger.receive>`
        resyncs (docs/decisions.md, "A refused commit is not applied")."""
        content = message.public_message.content if message.public_message else None
        aad = bytes(content.authenticated_data) if content is not None else b""
        after: dict[int, CredentialInformation] = {}

        def check(out: CommitMessage, tree: RatchetTree) -> None:
            if not out.removed_me:
                after.update(self._members_after(out, tree, aad, trust))

        out = self.group.process(message, before_merge=check)
        if isinstance(out, CommitMessage):
            if out.removed_me:
                self.gone = True
            else:
                self.members = after
        return out

    def _members_after(self, out: CommitMessage, tree: RatchetTree, aad: bytes,
                       trust: TrustStore | None) -> dict[int, CredentialInformation]:
        """The credential information per leaf once ``out`` is applied
        (``tree`` is the new tree); raises if a new member's does not check
        out. ``self.members`` is not touched."""
        members = dict(self.members)
        left = {leaf: members.pop(leaf) for leaf in out.applied.removed if leaf in members}
        if out.applied.added:
            infos = decode(m.AddUsersParamsAad, aad).encrypted_credential_information
            if len(infos) != len(out.applied.added):
                raise CredentialError("the commit does not carry one credential information per added member")
            for (leaf, _), sealed in zip(out.applied.added, infos):
                members[leaf] = self._opened(leaf, bytes(sealed), trust, tree)
        elif out.sender.sender_type == SenderType.new_member_commit:
            members[out.committer] = self._joiner_info(out.committer, tree, aad, left, trust)
        elif aad:
            info = decode(m.UpdateClientParamsAad, aad).option_encrypted_credential_information
            if info is not None:
                members[out.sender.leaf_index] = self._opened(out.sender.leaf_index, bytes(info), trust, tree)
        return members

    def _joiner_info(self, joiner: int, tree: RatchetTree, aad: bytes, left: dict[int, CredentialInformation],
                     trust: TrustStore | None) -> CredentialInformation:
        """Who the client that joined by an external commit (in leaf
        ``joiner``, the commit's committer) is: a connection group's new
        member brings its credential information in the AAD; a resync brings
        none, since it is the same client with the same credential as in the
        one leaf it removed. Any other external commit leaves a member we
        could not authenticate, so it is refused."""
        if aad:
            sealed = decode(m.JoinConnectionGroupParamsAad, aad).encrypted_credential_information
            return self._opened(joiner, bytes(sealed), trust, tree)
        if len(left) == 1:
            return next(iter(left.values()))
        raise CredentialError("an external commit with neither credential information nor a resync's removal")

    def is_behind(self, content: Any) -> bool:
        """Whether ``content`` belongs to a later epoch than ours: a commit
        that moved the group on never reached us (the DS takes application
        messages and commits only for the group's current epoch, A16), so
        only a resync brings this member back."""
        return any(epoch > self.group.epoch for epoch in map(_epoch_of, _mls_messages(content))
                   if epoch is not None)

    def credential_domains(self, content: Any) -> set:
        """The domains of the clients whose credential information a commit
        for this group carries (decrypted ahead, so that their AS credentials
        can be fetched before the commit is applied); empty if there is none
        or it does not open (processing reports that)."""
        if not isinstance(content, CommitContent) or content.message.public_message is None:
            return set()
        aad = bytes(content.message.public_message.content.authenticated_data)
        if not aad:
            return set()
        sealed: list[bytes] = []      # whichever reading of the AAD opens (the AEAD decides)
        for wire in (m.AddUsersParamsAad, m.JoinConnectionGroupParamsAad, m.UpdateClientParamsAad):
            try:
                value = decode(wire, aad)
            except Exception:   # noqa: BLE001 - not this kind of commit
                continue
            if isinstance(value, m.AddUsersParamsAad):
                sealed += [bytes(x) for x in value.encrypted_credential_information]
            elif isinstance(value, m.JoinConnectionGroupParamsAad):
                sealed.append(bytes(value.encrypted_credential_information))
            elif value.option_encrypted_credential_information is not None:
                sealed.append(bytes(value.option_encrypted_credential_information))
        domains = set()
        for item in sealed:
            try:
                domains.add(open_credential_information(self.credential_key, item).client_credential.client_id.as_domain)
            except Exception:   # noqa: BLE001 - processing the commit reports it
                pass
        return domains

    def _learn(self, leaf: int, sealed: bytes, trust: TrustStore | None, tree: Any = None) -> None:
        """Decrypt a member's credential information and check it against its
        leaf (in ``tree``, a ratchet-tree node list, else our current tree)."""
        tree = RatchetTree.from_nodes(tree) if tree is not None else self.group.tree
        self.members[leaf] = self._opened(leaf, sealed, trust, tree)

    def _opened(self, leaf: int, sealed: bytes, trust: TrustStore | None, tree: RatchetTree
                ) -> CredentialInformation:
        """A member's credential information, decrypted and checked against
        its leaf in ``tree``. The leaf index comes from a message or the DS,
        so a blank one is refused like any other mismatch."""
        info = open_credential_information(self.credential_key, sealed)
        node = tree.leaf(leaf)
        if node is None:
            raise CredentialError(f"credential information for leaf {leaf}, which is blank")
        verify_leaf(node, info.client_credential, info.signature_encryption_key, trust, self.now())
        return info

    # --- joining (F8) --------------------------------------------------------------------------------

    @staticmethod
    def ear_key_of(bundle: WelcomeBundle, kp_bundle: KeyPackageBundle) -> bytes:
        """The EAR key the DS encrypted to our KeyPackage's init key (A11)."""
        ct = decode(HPKECiphertext, bytes(bundle.encrypted_group_state_ear_key))
        return decrypt_with_label(kp_bundle.init_priv, EAR_KEY_LABEL, encode(bundle.group_id), ct.kem_output,
                                  ct.ciphertext)

    @staticmethod
    def welcome_info_request(bundle: WelcomeBundle, kp_bundle: KeyPackageBundle, ear_key: bytes, now_ms: int
                             ) -> PendingRequest:
        """*Get Welcome information* for the epoch the Welcome joins,
        authenticated by our KeyPackageRef (signed with its leaf key)."""
        secrets = decrypt_group_secrets(bundle.welcome, kp_bundle.key_package, kp_bundle.init_priv)
        gi = decrypt_group_info(bundle.welcome.encrypted_group_info, secrets.joiner_secret, None)
        params = m.WelcomeInfoParams(bundle.group_id, ear_key, gi.group_context.epoch)
        return signed_request("ds_welcome_info", params, bundle.group_id, kp_bundle.signing_key,
                              DsKeyPackageRef(make_key_package_ref(kp_bundle.key_package)), now_ms)

    @classmethod
    def join_external(cls, group_id: GroupId, info: m.ExternalCommitInfoResponse, leaf: LeafIdentity,
                      own: CredentialInformation, ear_key: bytes, credential_key: bytes,
                      queue_config: ClientQueueConfig, trust: TrustStore | None, clock: Any
                      ) -> tuple["GroupMember", PendingRequest]:
        """*Join connection group* (``#join-connection-group``): an external
        commit with our credential information in its AAD. The member is
        kept only if the DS takes the request."""
        sealed = seal_credential_information(credential_key, own)
        group, commit = Group.join_by_external_commit(
            info.group_info, leaf.signing_key, leaf.mls_credential, ratchet_tree=RatchetTree.from_nodes(info.public_tree),
            authenticated_data=encode(m.JoinConnectionGroupParamsAad(sealed)), clock=clock)
        me = cls(group_id, group, leaf, ear_key, credential_key, clock)
        for entry in info.credential_chains:
            me._learn(entry.leaf_index, bytes(entry.encrypted_credential_information), trust, tree=info.public_tree)
        me.members[group.leaf_index] = own
        gi = group.group_info()
        params = m.JoinConnectionGroupParams(commit, ear_key, m.GroupInfoUpdate(gi.signature, gi.extensions),
                                             queue_config)
        return me, PendingRequest("ds_join_connection_group", params)

    def resync(self, info: m.ExternalCommitInfoResponse, queue_config: ClientQueueConfig,
               trust: TrustStore | None) -> tuple["GroupMember", PendingRequest]:
        """*Resync* (``#resync``, decision A8): rejoin by an external commit
        that removes our old leaf, with the same leaf credential and key.
        Needs only the group's keys and our leaf identity, not the MLS state."""
        old = self.group.leaf_index
        group, commit = Group.join_by_external_commit(
            info.group_info, self.leaf.signing_key, self.leaf.mls_credential,
            ratchet_tree=RatchetTree.from_nodes(info.public_tree), resync_leaf=old, clock=self.clock)
        me = GroupMember(self.group_id, group, self.leaf, self.ear_key, self.credential_key, self.clock)
        own = self.members.get(old)
        for entry in info.credential_chains:
            if entry.leaf_index != old:
                me._learn(entry.leaf_index, bytes(entry.encrypted_credential_information), trust,
                          tree=info.public_tree)
        if own is not None:
            me.members[group.leaf_index] = own
        gi = group.group_info()
        params = m.ResyncClientParams(commit, self.ear_key, m.GroupInfoUpdate(gi.signature, gi.extensions),
                                      queue_config)
        return me, signed_request("ds_resync_client", params, self.group_id, self.leaf.signing_key,
                                  DsLeafIndex(old), self.now())

    @classmethod
    def join(cls, bundle: WelcomeBundle, kp_bundle: KeyPackageBundle, leaf: LeafIdentity, ear_key: bytes,
             credential_key: bytes, info: m.WelcomeInfoResponse, trust: TrustStore | None, clock: Any
             ) -> "GroupMember":
        """Join from a Welcome with the tree the DS kept for us, and check
        every member's credential information."""
        group = Group.join_from_welcome(bundle.welcome, kp_bundle, ratchet_tree=RatchetTree.from_nodes(info.public_tree),
                                        clock=clock)
        me = cls(bundle.group_id, group, leaf, ear_key, credential_key, clock)
        for entry in info.credential_chains:
            me._learn(entry.leaf_index, bytes(entry.encrypted_credential_information), trust)
        return me



def _mls_messages(content: Any) -> list[MLSMessage]:
    """The MLS messages a group's MessageContent carries."""
    if isinstance(content, (ClientInactivityRemoval, QueueDeletionRemoval)):
        return list(content.proposals)
    if isinstance(content, (CommitContent, ProposalContent, ApplicationContent)):
        return [content.message]
    return []


def _epoch_of(message: MLSMessage) -> int | None:
    """The epoch a PublicMessage or PrivateMessage names in the clear."""
    if message.wire_format == WireFormat.mls_public_message:
        return message.public_message.content.epoch
    if message.wire_format == WireFormat.mls_private_message:
        return message.private_message.epoch
    return None


def _is_application_data(message: MLSMessage) -> bool:
    return (message.wire_format == WireFormat.mls_private_message
            and message.private_message.content_type == ContentType.application)


_REQUESTS = {"ds_create_group": m.CreateGroupRequest, "ds_resync_client": m.ResyncClientRequest, "ds_update_queue_info": m.UpdateQueueInfoRequest,
             "ds_welcome_info": m.WelcomeInfoRequest, "ds_add_users": m.AddUsersRequest,
             "ds_remove_users": m.RemoveUsersRequest, "ds_update_client": m.UpdateClientRequest,
             "ds_self_remove_user": m.SelfRemoveUserRequest, "ds_send_message": m.SendMessageRequest,
             "ds_delete_group": m.DeleteGroupRequest}


def request_type(name: str) -> type:
    """The request struct of endpoint ``name`` (ValueError for one the
    member does not build)."""
    if name not in _REQUESTS:
        raise ValueError(f"{name!r} is not a request a group member builds")
    return _REQUESTS[name]


def signed_request(name: str, params: Any, group_id: GroupId, key: SigningKey, sender: Any,
                   now_ms: int) -> PendingRequest:
    """``…Request {auth, params}`` with a DsAuthToken bound to this request
    (``spec/delivery_service.md#authentication``)."""
    binding = RequestBinding(group_id.ds_domain, endpoint_path(name), encode(params))
    return PendingRequest(name, _REQUESTS[name](DsAuthToken.create(key, group_id, now_ms, sender, binding), params))
