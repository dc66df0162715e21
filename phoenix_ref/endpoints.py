"""The one table of HTTP endpoints (GUIDE §2); ``docs/wire.md`` is generated from it.

Every endpoint of every service is one :class:`Endpoint` row: which service
serves it (its host is ``<service>.<domain>``, the spec's discovery rule),
method and path, request and response structs (TLS presentation language,
media type ``application/phoenix``), the spec's authentication mode, whether
the spec requires a Privacy Pass token, and the spec section it implements.
The homeserver registers exactly these rows, the garbage-input tests iterate
over them, and ``python -m phoenix_ref.endpoints > docs/wire.md`` documents
them. A service adds an endpoint by adding a row here and a handler in its
``routes.py`` (the homeserver refuses to start if the two disagree).
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

from .credentials import AsCredentialsResponse
from .authentication.core import OPERATIONS as AS_OPERATIONS
from .authentication.core import AuthMode as _AsAuthMode
from .privacy_pass_gate import IssuerKeysResponse
from .delivery import messages as _dsm
from .delivery.messages import DsVerifyingKeyResponse
from .paths import endpoint_path
from .queuing import messages as _qsm
from .queuing.messages import QsQueueConfigEncryptionKeyResponse, QsVerifyingKeyResponse
WELL_KNOWN_PATH = "/.well-known/phoenix"


class Service(str, enum.Enum):
    AS = "as"
    DS = "ds"
    QS = "qs"

    def __str__(self) -> str:
        return self.value


class Auth(str, enum.Enum):
    """Authentication modes named by the spec (per service chapter)."""
    NONE = "none"
    CLIENT_CREDENTIAL = "client credential"        # spec/authentication_service.md#authentication
    CLIENT_PASSWORD = "client password (OPAQUE)"
    CLIENT_2FA = "client 2FA (client credential + OPAQUE)"
    ALIAS_AUTH_KEY = "alias auth key"
    QS_AUTH_TOKEN = "QsAuthToken"                  # spec/queuing_service.md#authentication
    DS_AUTH_TOKEN = "DsAuthToken"                  # spec/delivery_service.md#authentication
    QS_SIGNATURE = "remote QS signature"           # spec/queuing_service.md#federated-qs-to-qs-communication
    FRIENDSHIP_TOKEN = "friendship token"          # spec/queuing_service.md#get-addpackage

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Endpoint:
    name: str                  # handler name in the service's routes.py
    service: Service
    method: str
    path: str
    request: type | None       # request body struct; None: the body must be empty
    response: type | None
    auth: Auth
    privacy_pass: bool         # spec requires a Privacy Pass token (RFC 9577 Authorization header)
    section: str               # spec section id (<file>#<slug>)
    federated: bool = False    # meant for remote homeservers (spec/general_concepts/federation.md#federated-endpoints)
    websocket: bool = False    # also served as a websocket; ``request`` is its first binary message
    local_only: bool = False   # takes only tokens of the local issuer key (docs/decisions.md, A21)

    def url(self, domain: str, port: int | None = None) -> str:
        host = f"{self.service}.{domain}" + (f":{port}" if port else "")
        return f"https://{host}{self.path}"

    @property
    def idempotent(self) -> bool:
        """Sending the request twice has the effect of sending it once (a
        client may repeat it after a connection closed under it:
        docs/decisions.md, "Connection reuse")."""
        return self.method == "GET" or self.name in IDEMPOTENT_POSTS


#: POST rows that only read, or whose repetition changes nothing more:
#: a dequeue deletes what is older than its sequence number and returns what
#: follows, so asking again returns the same messages.
IDEMPOTENT_POSTS = frozenset({"get_user_record", "dequeue_messages", "as_dequeue_messages",
                              "dequeue_alias_messages", "user_profile"})


def _ep(name: str, service: Service, method: str, request, response, auth: Auth,
        privacy_pass: bool, section: str, federated: bool = False, websocket: bool = False,
        local_only: bool = False) -> Endpoint:
    if local_only and (not privacy_pass or federated):
        raise AssertionError(f"{name}: a local-only row needs a token and is not federated")
    return Endpoint(name, service, method, endpoint_path(name), request, response, auth,
                    privacy_pass, section, federated, websocket, local_only)


#: The AS core's authentication modes as rows of this table.
_AS_AUTH = {_AsAuthMode.NONE: Auth.NONE, _AsAuthMode.CLIENT_CREDENTIAL: Auth.CLIENT_CREDENTIAL,
            _AsAuthMode.CLIENT_PASSWORD: Auth.CLIENT_PASSWORD, _AsAuthMode.CLIENT_2FA: Auth.CLIENT_2FA,
            _AsAuthMode.ALIAS_AUTH_KEY: Auth.ALIAS_AUTH_KEY}
#: AS endpoints that clients of other homeservers call (discovery, connection
#: establishment, token issuance: spec/federation/federation_protocol.md).
_AS_FEDERATED = {"user_profile", "user_connection_package", "as_enqueue_message", "alias_connection_package",
                 "enqueue_alias_message", "request_tokens"}

_QS = "spec/queuing_service.md#"


def _qs_client_rows():
    """(name, request, response, auth, Privacy Pass, section slug) of the QS
    client endpoints. Privacy Pass on all but dequeue (and the websocket):
    spec/queuing_service.md#authentication."""
    m, tok = _qsm, Auth.QS_AUTH_TOKEN
    return [
        ("create_user_record", m.CreateUserRecordParams, m.CreateUserRecordResponse, Auth.NONE, True,
         "create-new-qs-user-record"),
        ("update_user_record", m.UpdateUserRecordRequest, m.Empty, tok, True, "update-qs-user-record"),
        ("get_user_record", m.UserRecordRequest, m.UserRecordResponse, tok, True, "get-own-qs-user-record"),
        ("delete_user_record", m.DeleteUserRecordRequest, m.Empty, tok, True, "delete-qs-user-record"),
        ("create_client_record", m.CreateClientRecordRequest, m.CreateClientRecordResponse, tok, True,
         "user-record-management-endpoints"),
        ("update_client_record", m.UpdateClientRecordRequest, m.Empty, tok, True, "qs-state"),
        ("delete_client_record", m.DeleteClientRecordRequest, m.Empty, tok, True,
         "user-record-management-endpoints"),
        ("block_group", m.BlockGroupRequest, m.Empty, tok, True, "qs-state"),
        ("publish_key_packages", m.PublishKeyPackagesRequest, m.Empty, tok, True, "publish-keypackages"),
        ("get_add_package", m.AddPackageParams, m.AddPackageResponse, Auth.FRIENDSHIP_TOKEN, True,
         "get-addpackage"),
        ("dequeue_messages", m.DequeueMessagesRequest, m.DequeueMessagesResponse, tok, False,
         "dequeue-messages"),
    ]


_DS = "spec/delivery_service.md#"


def _ds_client_rows():
    """(name, request, response, auth, section slug, federated) of the DS
    client endpoints. Privacy Pass on all (``#authentication``); request
    group id and create group are for local clients only
    (spec/federation/use_cases.md#message-distribution) and take only
    tokens of the local issuer key (``local_only`` = not ``federated``,
    docs/decisions.md A21), every other one is for clients of any homeserver."""
    m, tok = _dsm, Auth.DS_AUTH_TOKEN
    return [
        ("ds_request_group_id", None, m.RequestGroupIdResponse, Auth.NONE, "request-group-id", False),
        ("ds_create_group", m.CreateGroupRequest, m.Empty, tok, "create-group", False),
        ("ds_update_queue_info", m.UpdateQueueInfoRequest, m.Empty, tok, "update-queue-information", True),
        ("ds_welcome_info", m.WelcomeInfoRequest, m.WelcomeInfoResponse, tok, "get-welcome-information", True),
        ("ds_external_commit_info", m.ExternalCommitInfoParams, m.ExternalCommitInfoResponse, Auth.NONE,
         "get-external-commit-information", True),
        ("ds_join_connection_group", m.JoinConnectionGroupParams, m.Empty, Auth.NONE, "join-connection-group",
         True),
        ("ds_resync_client", m.ResyncClientRequest, m.Empty, tok, "resync", True),
        ("ds_add_users", m.AddUsersRequest, m.Empty, tok, "adding-new-users-to-the-group", True),
        ("ds_remove_users", m.RemoveUsersRequest, m.Empty, tok, "remove-users", True),
        ("ds_update_client", m.UpdateClientRequest, m.Empty, tok,
         "updating-the-sending-clients-own-key-material", True),
        ("ds_self_remove_user", m.SelfRemoveUserRequest, m.Empty, tok, "user-self-remove", True),
        ("ds_send_message", m.SendMessageRequest, m.Empty, tok, "send-application-message", True),
        ("ds_delete_group", m.DeleteGroupRequest, m.Empty, tok, "delete-group", True),
    ]


ENDPOINTS: tuple[Endpoint, ...] = (
    # --- key distribution: spec/federation/use_cases.md#authentication-key-distribution
    _ep("as_credentials", Service.AS, "GET", None, AsCredentialsResponse, Auth.NONE, False,
        "spec/authentication_service.md#get-as-credentials", federated=True),
    # --- the Privacy Pass issuer directory of the AS (docs/decisions.md: the spec names none)
    _ep("privacy_pass_issuer_keys", Service.AS, "GET", None, IssuerKeysResponse, Auth.NONE, False,
        "spec/authentication_service.md#token-issuance", federated=True),
    # --- AS: spec/authentication_service.md, one row per operation of authentication/core.py
    *(_ep(op.name, Service.AS, "POST", op.request, op.response, _AS_AUTH[op.auth], op.privacy_pass,
          op.section, federated=op.name in _AS_FEDERATED) for op in AS_OPERATIONS),
    _ep("qs_verifying_key", Service.QS, "GET", None, QsVerifyingKeyResponse, Auth.NONE, False,
        "spec/queuing_service.md#fetch-qs-verifying-key", federated=True),
    _ep("queue_config_encryption_key", Service.QS, "GET", None, QsQueueConfigEncryptionKeyResponse,
        Auth.NONE, True, "spec/queuing_service.md#fetch-queue-config-encryption-key"),
    # --- QS client endpoints: spec/queuing_service.md#client-endpoints (client-record rows: docs/decisions.md)
    *(_ep(name, Service.QS, "POST", req, resp, auth, pp, _QS + slug)
      for name, req, resp, auth, pp, slug in _qs_client_rows()),
    _ep("websocket", Service.QS, "GET", _qsm.WsRequest, None, Auth.QS_AUTH_TOKEN, False,
        _QS + "negotiate-websocket-connection", websocket=True),
    # --- QS federation: the QS endpoints for remote QSs (spec/federation/use_cases.md#message-distribution)
    _ep("federated_enqueue", Service.QS, "POST", _qsm.QsToQsMessage, _qsm.FederatedEnqueueResponse,
        Auth.QS_SIGNATURE, False, _QS + "federated-qs-to-qs-communication", federated=True),
    # several QsToQsMessages of one source in one request (docs/decisions.md, "QS-to-QS batches")
    _ep("federated_enqueue_batch", Service.QS, "POST", _qsm.QsToQsBatch, _qsm.FederatedEnqueueBatchResponse,
        Auth.QS_SIGNATURE, False, _QS + "federated-qs-to-qs-communication", federated=True),
    _ep("ds_verifying_key", Service.DS, "GET", None, DsVerifyingKeyResponse, Auth.NONE, False,
        "spec/federation/use_cases.md#authentication-key-distribution", federated=True),
    # --- DS client endpoints: spec/delivery_service.md#client-endpoints (names: docs/decisions.md, A34)
    *(_ep(name, Service.DS, "POST", req, resp, auth, True, _DS + slug, federated=federated,
          local_only=not federated)
      for name, req, resp, auth, slug, federated in _ds_client_rows()),
)


def by_name(service: Service | str, name: str) -> Endpoint:
    for ep in ENDPOINTS:
        if ep.service == service and ep.name == name:
            return ep
    raise KeyError(f"{service}/{name}")


def _check_table() -> None:
    seen = set()
    for ep in ENDPOINTS:
        key = (ep.service, ep.method, ep.path)
        if key in seen:
            raise AssertionError(f"duplicate endpoint {key}")
        seen.add(key)


_check_table()


# --- docs/wire.md ------------------------------------------------------------------

def _struct_name(cls: type | None) -> str:
    return "—" if cls is None else f"`{cls.__name__}`"


#: Every homeserver signature label (GUIDE §2): (label = name of the signed
#: struct, module declaring it, spec section). A module that signs a new
#: struct adds its row here so docs/wire.md lists it.
SIGNATURE_LABELS: tuple[tuple[str, str, str], ...] = (
    ("AsCredentialPayload", "credentials", "spec/authentication_service/credentials.md#as-credentials"),
    ("AsIntermediateCredentialPayload", "credentials",
     "spec/authentication_service/credentials.md#as-intermediate-credentials"),
    ("AsIntermediateCredentialCsr", "credentials",
     "spec/authentication_service/credentials.md#as-intermediate-credentials"),
    ("ClientCredentialPayload", "credentials", "spec/authentication_service/credentials.md#client-credentials"),
    ("ClientCredentialCsr", "credentials", "spec/authentication_service/credentials.md#client-credentials"),
    ("QsToQsMessage", "queuing.messages", "spec/queuing_service.md#federated-qs-to-qs-communication"),
    ("QsToQsBatch", "queuing.messages", "spec/queuing_service.md#federated-qs-to-qs-communication"),
    ("AddPackageResponse", "queuing.messages", "spec/queuing_service.md#get-addpackage"),
    ("SealedQueueConfig", "queuing.messages", "spec/glossary.md#sealed-queue-config"),
    ("QsAuthTokenTbs", "auth_tokens", "spec/queuing_service.md#authentication"),
    ("DsAuthTokenTbs", "auth_tokens", "spec/delivery_service.md#authentication"),
    ("ClientCredentialAuthTbs", "auth_tokens", "spec/authentication_service.md#authentication"),
    ("AliasAuthTbs", "auth_tokens", "spec/authentication_service.md#authentication"),
    ("RegistrationAuthTbs", "auth_tokens", "spec/authentication_service.md#finish-user-registration"),
)


def _token_column(ep: Endpoint) -> str:
    if not ep.privacy_pass:
        return "—"
    return "required (local key)" if ep.local_only else "required"


def wire_doc() -> str:
    """The text of docs/wire.md."""
    from .crypto import HOMESERVER_PREFIX
    lines = [
        "# Wire reference",
        "",
        "Generated by `python -m phoenix_ref.endpoints > docs/wire.md` from the endpoint",
        "table in `phoenix_ref/endpoints.py`; `tests/test_wire_doc.py` fails when it is stale.",
        "",
        "## Conventions",
        "",
        "* Every service of homeserver `D` is served over HTTPS only, at host",
        "  `as.D`, `ds.D` or `qs.D` (`spec/federation/use_cases.md#homeserver-domain-and-discovery`).",
        "  Listeners speak TLS 1.3 only: a plain-HTTP request (or a client offering only",
        "  an older TLS) gets no HTTP answer, its connection ends in the TLS handshake.",
        "  A request that reaches the app without TLS (a proxy forwarding plain HTTP)",
        "  gets `403 tls_required`.",
        "* Authentication before parsing: a row that needs a Privacy Pass token has it",
        "  checked before the body is decoded (`401` without one), and a row whose spec",
        "  authentication travels in the body answers an empty body with",
        "  `401 authentication_required`, not `400`.",
        "* Bodies (requests and answers, errors included) are TLS presentation language",
        "  (RFC 9420 §2.1), media type `application/phoenix`. A request with a body must",
        "  carry `Content-Type: application/phoenix` (else `415 unsupported_media_type`);",
        "  an endpoint without request struct takes an empty body (else `400 unexpected_body`).",
        "* Errors: status 400 (malformed), 401/403 (authentication), 404 (unknown host or",
        "  endpoint), 405, 409 (conflict), 413 (body too large), 415, 429 (with `Retry-After`);",
        "  body `ErrorResponse { code: string<V>, message: string<V> }`.",
        "* Privacy Pass tokens travel in `Authorization: PrivateToken token=…` (RFC 9577).",
        "  The AS of `D` issues under two key sets (`IssuerKeysResponse`): `token_keys` for",
        "  its own clients, `federated_token_keys` for clients of other homeservers. Rows",
        "  marked *local key* take only tokens of the first set: a valid token of the",
        "  second gets `403 local_clients_only` and stays unspent.",
        "* Key ids of QS/DS keys: SHA-256 of the public key (`federation/keys.py`).",
        "",
        "## Delegation",
        "",
        f"`GET https://D{WELL_KNOWN_PATH}` answers `application/json`:",
        "`{\"as\": \"https://as.D:8443\", \"ds\": \"https://ds.D:8443\", \"qs\": \"https://qs.D:8443\"}`",
        "(service base URLs, `https` only). Discovery order: configured override, then this",
        "document, then the subdomain rule `https://as.D` (see `federation/discovery.py`).",
        "",
        "## Endpoints",
        "",
        "| service | method | path | request | response | auth | Privacy Pass | federated | spec |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ep in ENDPOINTS:
        lines.append(
            f"| {ep.service} | {ep.method} | `{ep.path}` | {_struct_name(ep.request)} | "
            f"{_struct_name(ep.response)} | {ep.auth} | {_token_column(ep)} | "
            f"{'yes' if ep.federated else '—'} | `{ep.section}` |")
    lines += ["", "`websocket` (QS): also opened as a websocket (RFC 6455, `wss://`). The request",
              "struct is the client's first binary message; the QS answers with binary `QsWsMessage`s",
              "(`WsConnected`, then `WsQueueUpdate` whenever messages arrive) and refuses by closing",
              "with code 4000 + HTTP status and the error code as reason. A plain GET gets",
              "`426 websocket_required` once its token checks out. The QS's local enqueue",
              "(`spec/queuing_service.md#local-enqueue-message`) is not an endpoint: the DS calls it",
              "in-process."]
    lines += ["", "## Signature labels", "",
              "Homeserver signatures are SignWithLabel (RFC 9420 §5.1.2) with the prefix",
              f"`\"{HOMESERVER_PREFIX.decode()}\"` followed by the label, the name of the signed struct:",
              "", "| label | module | spec |", "|---|---|---|"]
    lines += [f"| `{lbl}` | `phoenix_ref/{mod.replace('.', '/')}.py` | `{sec}` |"
              for lbl, mod, sec in SIGNATURE_LABELS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(wire_doc())
