"""Wire structs of the Delivery Service (``spec/delivery_service.md``).

Names follow the spec; where it is silent or inconsistent the choice is in
``docs/decisions.md`` (entries A1–A42, "Delivery Service"):

* Requests authenticated by a DsAuthToken are ``…Request {auth, params}``
  envelopes, as at the QS (A34); *request group id* has no body,
  *join connection group* and *get external commit information* carry no
  token (A4, ``#authentication-9``).
* Endpoints the spec gives no answer answer :class:`Empty` (A3).
* ``GroupInfoUpdate`` carries the committer's signature and the GroupInfo
  extensions it signed (decision "GroupInfo updates carry the signed
  extensions").
* ``welcome_attribution_info`` holds the encrypted WAIs (A10);
  ``credential_chains`` is a list of :class:`LeafCredentialInformation` (A25);
  external joiners name their queue config (A5).
* ``public_tree`` is the RFC 9420 ``ratchet_tree`` node list (§12.4.3.3).
* ``DsVerifyingKeyResponse`` — the DS's verifying keys
  (``spec/federation/use_cases.md#authentication-key-distribution``): the
  spec defines no answer, so it is a list of Ed25519 public keys, current
  first, then older keys still accepted.
"""

from __future__ import annotations

from ..auth_tokens import DsAuthToken
from ..codec import U32, U64, VarBytes, optional, struct, vec
from ..ids import GroupId
from ..mls.messages import Extension, GroupInfo, KeyPackage, MLSMessage, Welcome
from ..mls.tree import RatchetTreeWire
from ..queuing.messages import ClientQueueConfig, Empty

__all__ = [
    "DsVerifyingKeyResponse", "Empty", "GroupInfoUpdate", "RequestGroupIdResponse", "CreateGroupParams",
    "CreateGroupRequest", "UpdateQueueInfoParams", "UpdateQueueInfoRequest", "WelcomeInfoParams",
    "WelcomeInfoRequest", "WelcomeInfoResponse", "ExternalCommitInfoParams", "ExternalCommitInfoResponse",
    "AddUsersParams", "AddUsersRequest", "AddUsersParamsAad", "RemoveUsersParams", "RemoveUsersRequest",
    "UpdateClientParams", "UpdateClientRequest", "UpdateClientParamsAad", "JoinConnectionGroupParams",
    "JoinConnectionGroupParamsAad", "ResyncClientParams", "ResyncClientRequest", "SelfRemoveUserParams",
    "SelfRemoveUserRequest", "SendMessageParams", "SendMessageRequest", "DeleteGroupParams",
    "DeleteGroupRequest", "LeafCredentialInformation", "GroupStateEarKey", "EAR_KEY_LEN",
]

#: Length of a GroupStateEarKey: an AES-128-GCM key (the ciphersuite's AEAD).
EAR_KEY_LEN = 16
GroupStateEarKey = VarBytes


@struct
class DsVerifyingKeyResponse:
    """The DS verifying keys, current first."""
    verifying_keys: vec(VarBytes)


@struct
class GroupInfoUpdate:
    """``#groupinfo-updates``: the committer's signature over the new
    GroupInfoTBS, and the extensions that TBS holds."""
    signature: VarBytes
    extensions: vec(Extension)


@struct
class LeafCredentialInformation:
    """One entry of ``credential_chains``: a leaf and the credential
    information stored for it (encrypted under the group's credential
    encryption key, opaque to the DS)."""
    leaf_index: U32
    encrypted_credential_information: VarBytes


# --- request group id / create group (local clients only) ---------------------------

@struct
class RequestGroupIdResponse:
    group_id: GroupId


@struct
class CreateGroupParams:
    group_id: GroupId
    key_package: KeyPackage
    encrypted_credential_chain: VarBytes
    creator_queue_config: ClientQueueConfig
    group_info: GroupInfo
    initial_ear_key: GroupStateEarKey


@struct
class CreateGroupRequest:
    auth: DsAuthToken
    params: CreateGroupParams


# --- queue information ------------------------------------------------------------------

@struct
class UpdateQueueInfoParams:
    group_id: GroupId
    group_state_ear_key: GroupStateEarKey
    new_queue_config: ClientQueueConfig


@struct
class UpdateQueueInfoRequest:
    auth: DsAuthToken
    params: UpdateQueueInfoParams


# --- information for joiners --------------------------------------------------------------

@struct
class WelcomeInfoParams:
    group_id: GroupId
    group_state_ear_key: GroupStateEarKey
    epoch: U64


@struct
class WelcomeInfoRequest:
    auth: DsAuthToken
    params: WelcomeInfoParams


@struct
class WelcomeInfoResponse:
    public_tree: RatchetTreeWire
    credential_chains: vec(LeafCredentialInformation)


@struct
class ExternalCommitInfoParams:
    group_id: GroupId
    group_state_ear_key: GroupStateEarKey


@struct
class ExternalCommitInfoResponse:
    group_info: GroupInfo
    public_tree: RatchetTreeWire
    credential_chains: vec(LeafCredentialInformation)


# --- commits ---------------------------------------------------------------------------------

@struct
class AddUsersParams:
    commit: MLSMessage
    group_state_ear_key: GroupStateEarKey
    group_info_update: GroupInfoUpdate
    welcome: Welcome
    welcome_attribution_info: vec(VarBytes)
    key_package: vec(KeyPackage)


@struct
class AddUsersRequest:
    auth: DsAuthToken
    params: AddUsersParams


@struct
class AddUsersParamsAad:
    """The commit's ``authenticated_data`` at *add users* (A12)."""
    encrypted_credential_information: vec(VarBytes)


@struct
class RemoveUsersParams:
    commit: MLSMessage
    group_state_ear_key: GroupStateEarKey
    group_info_update: GroupInfoUpdate


@struct
class RemoveUsersRequest:
    auth: DsAuthToken
    params: RemoveUsersParams


@struct
class UpdateClientParams:
    commit: MLSMessage
    group_state_ear_key: GroupStateEarKey
    group_info_update: GroupInfoUpdate


@struct
class UpdateClientRequest:
    auth: DsAuthToken
    params: UpdateClientParams


@struct
class UpdateClientParamsAad:
    option_encrypted_credential_information: optional(VarBytes)


@struct
class JoinConnectionGroupParams:
    external_commit: MLSMessage
    group_state_ear_key: GroupStateEarKey
    group_info_update: GroupInfoUpdate
    sender_queue_config: ClientQueueConfig


@struct
class JoinConnectionGroupParamsAad:
    encrypted_credential_information: VarBytes


@struct
class ResyncClientParams:
    external_commit: MLSMessage
    group_state_ear_key: GroupStateEarKey
    group_info_update: GroupInfoUpdate
    sender_queue_config: ClientQueueConfig


@struct
class ResyncClientRequest:
    auth: DsAuthToken
    params: ResyncClientParams


@struct
class SelfRemoveUserParams:
    remove_proposal: MLSMessage
    group_state_ear_key: GroupStateEarKey


@struct
class SelfRemoveUserRequest:
    auth: DsAuthToken
    params: SelfRemoveUserParams


@struct
class SendMessageParams:
    application_message: MLSMessage
    group_state_ear_key: GroupStateEarKey


@struct
class SendMessageRequest:
    auth: DsAuthToken
    params: SendMessageParams


@struct
class DeleteGroupParams:
    commit: MLSMessage
    group_state_ear_key: GroupStateEarKey


@struct
class DeleteGroupRequest:
    auth: DsAuthToken
    params: DeleteGroupParams
