"""AS, intermediate and client credentials (``spec/authentication_service/credentials.md``).

The chain is AS credential → AS intermediate credential → client credential.
Each AS publishes its current AS and intermediate credentials and the
fingerprints it revoked through *Get AS credentials*
(``spec/authentication_service.md#get-as-credentials``,
:class:`AsCredentialsResponse`); a :class:`TrustStore` holds those answers
for one or more domains and verifies client credentials against them.

Structure and signatures
(``spec/authentication_service/credentials.md#credential-signing-and-self-signatures``).
Every signature is a homeserver signature (``crypto.hs_sign``: SignWithLabel
with the prefix ``"Phoenix Homeserver Protocol 1.0 "``) whose label is the
name of the struct being signed, so a signature made for one credential type
never verifies as another:

==============================================  ===================================  =======================
Signature field                                 Label (the signed struct)            Signing key
==============================================  ===================================  =======================
``AsCredential.self_signature``                 ``AsCredentialPayload``              the AS credential's own
``AsIntermediateCredentialCsr.self_signature``  ``AsIntermediateCredentialPayload``  the intermediate's own
``AsIntermediateCredential.signature``          ``AsIntermediateCredentialCsr``      an AS credential's
``ClientCredentialCsr.self_signature``          ``ClientCredentialPayload``          the client's own
``ClientCredential.signature``                  ``ClientCredentialCsr``              an intermediate's
==============================================  ===================================  =======================

Structs: ``AsCredential {payload, self_signature}``; for the intermediate and
the client ``…Csr {payload, self_signature}`` and ``…Credential
{signed_payload, signature}``.
The ``…Csr`` structs are the spec's ``CredentialSelfSignedPayload`` of each
type (a client sends its ``ClientCredentialCsr`` to register,
``spec/authentication_service/credentials.md#client-credential-signing-requests``).
An AS credential has no higher-level signer, so it is only self-signed.

Choices the spec leaves open (docs/decisions.md):

* ``CredentialCiphersuite`` uses the TLS registries: ``hash`` is a TLS
  HashAlgorithm (sha256 = 4, RFC 5246 §7.4.1.4.1) and ``signature_scheme`` a
  TLS SignatureScheme (ed25519 = 0x0807, RFC 8446 §4.2.3, the registry MLS
  also uses). Only (sha256, ed25519) is supported; other values decode but
  fail verification with :class:`UnsupportedCiphersuite` (and are skipped
  when a *Get AS credentials* answer is loaded into a :class:`TrustStore`).
* A fingerprint is the hash (per the credential's own ciphersuite) of the
  complete encoded credential, signatures included.
* Validity periods are inclusive, ``not_before <= now <= not_after``, in
  milliseconds since the Unix epoch, with no clock-skew allowance; an issuer
  that wants one backdates ``not_before``.
* A client CSR names its signer: ``signer_fingerprint`` is inside the
  self-signed payload, so the client picks the intermediate (from *Get AS
  credentials*, :meth:`AsCredentialsResponse.signing_intermediate`) before
  it signs, and the AS refuses a CSR naming another one.
* Revocations and trust are per domain: only domain D's answer can revoke or
  vouch for credentials of domain D.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import crypto
from .codec import U16, U64, VarBytes, encode, struct, vec
from .errors import Malformed, Unauthorized
from .ids import ClientId, Fqdn

__all__ = [
    "SHA256", "ED25519", "CredentialCiphersuite", "DEFAULT_CIPHERSUITE", "ExpirationData",
    "AsCredentialPayload", "AsCredential",
    "AsIntermediateCredentialPayload", "AsIntermediateCredentialCsr", "AsIntermediateCredential",
    "IntermediateAsCredential",
    "ClientCredentialPayload", "ClientCredentialCsr", "ClientCredentialSelfSignedPayload", "ClientCsr",
    "ClientCredential", "LeafCredential", "AsCredentialsResponse",
    "fingerprint", "sign_csr", "verify_as_credential", "verify_client_credential",
    "TrustStore", "CredentialChain",
    "CredentialError", "Expired", "Revoked", "UnknownSigner", "BadSignature", "DomainMismatch",
    "UnsupportedCiphersuite", "ValidityOutOfRange", "InvalidCsr", "IssuerError",
]

SHA256 = 0x0004   # TLS HashAlgorithm sha256 (RFC 5246 §7.4.1.4.1)
ED25519 = 0x0807  # TLS SignatureScheme ed25519 (RFC 8446 §4.2.3)


# --- errors -------------------------------------------------------------------------

class CredentialError(Unauthorized):
    """A credential does not verify (401: the caller's credentials are not valid)."""
    code = "credential_invalid"


class Expired(CredentialError):
    """A credential in the chain is not valid at the time of the check."""
    code = "credential_expired"


class Revoked(CredentialError):
    """A credential in the chain has a fingerprint its AS revoked."""
    code = "credential_revoked"


class UnknownSigner(CredentialError):
    """The signer's fingerprint (or the whole domain) is not in the trust store.

    ``domain`` names the AS whose credentials to (re)fetch; callers refetch
    once and retry, never in a loop (GUIDE §3).
    """
    code = "credential_unknown_signer"

    def __init__(self, message: str, *, domain: Fqdn | None = None):
        super().__init__(message)
        self.domain = domain


class BadSignature(CredentialError):
    """A signature or self-signature in the chain does not verify."""
    code = "credential_bad_signature"


class DomainMismatch(CredentialError):
    """The credential's domain is not the domain of the AS that signed it."""
    code = "credential_domain_mismatch"


class UnsupportedCiphersuite(CredentialError):
    """The credential uses a CredentialCiphersuite other than (sha256, ed25519)."""
    code = "credential_unsupported_ciphersuite"


class ValidityOutOfRange(CredentialError):
    """A credential's validity period does not lie within its signer's
    (``spec/authentication_service/credentials.md#credential-expiration``)."""
    code = "credential_validity_out_of_range"


class InvalidCsr(Malformed):
    """A signing request that the AS must refuse (400)."""
    code = "invalid_csr"


class IssuerError(ValueError):
    """The issuing side is misconfigured (key does not match its credential,
    signer not valid now); an operator problem, not a client's."""


# --- building blocks -------------------------------------------------------------------

@struct
class CredentialCiphersuite:
    """``spec/authentication_service/credentials.md#credential-fingerprints``."""
    hash: U16
    signature_scheme: U16

    def check_supported(self, what: str) -> None:
        if (self.hash, self.signature_scheme) != (SHA256, ED25519):
            raise UnsupportedCiphersuite(
                f"{what} uses hash {self.hash:#06x} / signature scheme {self.signature_scheme:#06x}; "
                f"only sha256 ({SHA256:#06x}) / ed25519 ({ED25519:#06x}) is supported")


DEFAULT_CIPHERSUITE = CredentialCiphersuite(SHA256, ED25519)


@struct
class ExpirationData:
    """``spec/authentication_service/credentials.md#credential-expiration``:
    inclusive bounds in ms since the Unix epoch."""
    not_before: U64
    not_after: U64

    @classmethod
    def starting(cls, now_ms: int, duration_ms: int) -> "ExpirationData":
        return cls(now_ms, now_ms + duration_ms)

    def is_valid_at(self, now_ms: int) -> bool:
        return self.not_before <= now_ms <= self.not_after

    def contains(self, inner: "ExpirationData") -> bool:
        """True if ``inner`` lies within this period (the signing rule)."""
        return self.not_before <= inner.not_before and inner.not_after <= self.not_after

    def check_valid_at(self, now_ms: int, what: str) -> None:
        if not self.is_valid_at(now_ms):
            state = "not yet valid" if now_ms < self.not_before else "expired"
            raise Expired(f"{what} is {state} (valid {self.not_before}..{self.not_after}, now {now_ms})")

    def check_within(self, outer: "ExpirationData", what: str, signer: str) -> None:
        if not outer.contains(self):
            raise ValidityOutOfRange(
                f"{what} is valid {self.not_before}..{self.not_after}, outside its {signer}'s "
                f"{outer.not_before}..{outer.not_after}")


def _check_ordered(exp: ExpirationData, error: type[Exception], what: str) -> None:
    if exp.not_before > exp.not_after:
        raise error(f"{what}: not_before {exp.not_before} is after not_after {exp.not_after}")


_sign = crypto.hs_sign_struct


def verify_signature(public_key: bytes, tbs: object, signature: bytes, what: str,
                     refusal: type[Exception] = BadSignature) -> None:
    """Check a homeserver-protocol signature over ``tbs``; a failure raises
    ``refusal`` ("<what> does not verify"), never a bare CryptoError."""
    try:
        crypto.hs_verify_struct(public_key, tbs, signature)
    except crypto.CryptoError:
        raise refusal(f"{what} does not verify") from None


def _supported(credential) -> bool:
    return credential.credential_ciphersuite == DEFAULT_CIPHERSUITE


def fingerprint(credential: "AsCredential | AsIntermediateCredential | ClientCredential") -> bytes:
    """``spec/authentication_service/credentials.md#credential-fingerprints``:
    the hash of the encoded credential, under the credential's own ciphersuite."""
    credential.credential_ciphersuite.check_supported(type(credential).__name__)
    return crypto.hash_(encode(credential))


# --- AS credentials ------------------------------------------------------------------

@struct
class AsCredentialPayload:
    """``spec/authentication_service/credentials.md#as-credentials``."""
    as_domain: Fqdn
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: VarBytes


@struct
class AsCredential:
    """An AS credential: the payload with its self-signature (no other signer)."""
    payload: AsCredentialPayload
    self_signature: VarBytes

    @classmethod
    def create(cls, domain: Fqdn | str, signing_key: crypto.SigningKey,
               not_before: int, not_after: int,
               ciphersuite: CredentialCiphersuite = DEFAULT_CIPHERSUITE) -> "AsCredential":
        """Make a self-signed AS credential for ``domain`` valid in [not_before, not_after]."""
        exp = ExpirationData(not_before, not_after)
        _check_ordered(exp, IssuerError, "AS credential")
        payload = AsCredentialPayload(
            domain if isinstance(domain, Fqdn) else Fqdn(domain), exp, ciphersuite, signing_key.public)
        return cls(payload, _sign(signing_key, payload))

    as_domain = property(lambda self: self.payload.as_domain)
    expiration_data = property(lambda self: self.payload.expiration_data)
    credential_ciphersuite = property(lambda self: self.payload.credential_ciphersuite)
    public_key = property(lambda self: self.payload.public_key)

    def fingerprint(self) -> bytes:
        return fingerprint(self)

    def verify_self_signature(self) -> None:
        """Proof of possession; raises UnsupportedCiphersuite or BadSignature."""
        self.credential_ciphersuite.check_supported("AS credential")
        verify_signature(self.public_key, self.payload, self.self_signature, "AS credential self-signature")


# --- AS intermediate credentials ---------------------------------------------------------

@struct
class AsIntermediateCredentialPayload:
    """``spec/authentication_service/credentials.md#as-intermediate-credentials``."""
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: VarBytes
    signer_fingerprint: VarBytes


@struct
class AsIntermediateCredentialCsr:
    """The intermediate's self-signed payload, which an AS credential signs."""
    payload: AsIntermediateCredentialPayload
    self_signature: VarBytes

    @classmethod
    def create(cls, signing_key: crypto.SigningKey, signer: AsCredential,
               not_before: int, not_after: int,
               ciphersuite: CredentialCiphersuite = DEFAULT_CIPHERSUITE) -> "AsIntermediateCredentialCsr":
        payload = AsIntermediateCredentialPayload(
            ExpirationData(not_before, not_after), ciphersuite, signing_key.public, signer.fingerprint())
        return cls(payload, _sign(signing_key, payload))


@struct
class AsIntermediateCredential:
    """An intermediate credential: its CSR signed by an AS credential's key."""
    signed_payload: AsIntermediateCredentialCsr
    signature: VarBytes

    @classmethod
    def create(cls, as_credential: AsCredential, as_signing_key: crypto.SigningKey,
               signing_key: crypto.SigningKey, not_before: int, not_after: int) -> "AsIntermediateCredential":
        """Issue an intermediate with key ``signing_key``, signed by ``as_credential``.

        Raises IssuerError if ``as_signing_key`` is not the AS credential's key
        or the period is not within the AS credential's.
        """
        if as_signing_key.public != as_credential.public_key:
            raise IssuerError("the AS signing key does not match the AS credential")
        csr = AsIntermediateCredentialCsr.create(signing_key, as_credential, not_before, not_after)
        exp = csr.payload.expiration_data
        _check_ordered(exp, IssuerError, "intermediate credential")
        if not as_credential.expiration_data.contains(exp):
            raise IssuerError("an intermediate credential's validity must lie within its AS credential's")
        return cls(csr, _sign(as_signing_key, csr))

    payload = property(lambda self: self.signed_payload.payload)
    expiration_data = property(lambda self: self.payload.expiration_data)
    credential_ciphersuite = property(lambda self: self.payload.credential_ciphersuite)
    public_key = property(lambda self: self.payload.public_key)
    signer_fingerprint = property(lambda self: self.payload.signer_fingerprint)

    def fingerprint(self) -> bytes:
        return fingerprint(self)

    def verify_signatures(self, signer: AsCredential) -> None:
        """The self-signature and ``signer``'s signature; raises BadSignature."""
        self.credential_ciphersuite.check_supported("intermediate credential")
        verify_signature(self.public_key, self.payload, self.signed_payload.self_signature,
                "intermediate credential self-signature")
        verify_signature(signer.public_key, self.signed_payload, self.signature,
                "AS signature on the intermediate credential")


IntermediateAsCredential = AsIntermediateCredential  # the name in credentials.md


# --- client credentials ----------------------------------------------------------------

@struct
class ClientCredentialPayload:
    """``spec/authentication_service/credentials.md#client-credentials``."""
    client_id: ClientId
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: VarBytes
    signer_fingerprint: VarBytes


@struct
class ClientCredentialCsr:
    """A client credential signing request: the self-signed payload
    (``spec/authentication_service/credentials.md#client-credential-signing-requests``)."""
    payload: ClientCredentialPayload
    self_signature: VarBytes

    @classmethod
    def create(cls, client_id: ClientId, signing_key: crypto.SigningKey, signer_fingerprint: bytes,
               not_before: int, not_after: int,
               ciphersuite: CredentialCiphersuite = DEFAULT_CIPHERSUITE) -> "ClientCredentialCsr":
        """Self-sign a request for ``client_id`` to be signed by the intermediate
        with fingerprint ``signer_fingerprint``."""
        payload = ClientCredentialPayload(
            client_id, ExpirationData(not_before, not_after), ciphersuite, signing_key.public,
            signer_fingerprint)
        return cls(payload, _sign(signing_key, payload))

    def verify_self_signature(self) -> None:
        self.payload.credential_ciphersuite.check_supported("client credential")
        verify_signature(self.payload.public_key, self.payload, self.self_signature,
                "client credential self-signature")


ClientCredentialSelfSignedPayload = ClientCredentialCsr  # the spec's generic name
ClientCsr = ClientCredentialCsr  # the name in InitUserRegistrationParams


@struct
class ClientCredential:
    """A client credential: its CSR signed by an AS intermediate credential."""
    signed_payload: ClientCredentialCsr
    signature: VarBytes

    payload = property(lambda self: self.signed_payload.payload)
    client_id = property(lambda self: self.payload.client_id)
    expiration_data = property(lambda self: self.payload.expiration_data)
    credential_ciphersuite = property(lambda self: self.payload.credential_ciphersuite)
    public_key = property(lambda self: self.payload.public_key)
    signer_fingerprint = property(lambda self: self.payload.signer_fingerprint)

    def fingerprint(self) -> bytes:
        return fingerprint(self)

    def verify_signatures(self, signer: AsIntermediateCredential) -> None:
        self.signed_payload.verify_self_signature()
        verify_signature(signer.public_key, self.signed_payload, self.signature,
                "intermediate's signature on the client credential")


def sign_csr(csr: ClientCredentialCsr, intermediate: AsIntermediateCredential,
             intermediate_key: crypto.SigningKey, now: int, *,
             as_domain: Fqdn | None = None, max_validity_ms: int | None = None) -> ClientCredential:
    """Sign a client's CSR with an intermediate credential (the AS side of
    ``spec/authentication_service.md#initialize-user-registration``).

    Refuses (InvalidCsr) a CSR with an unsupported ciphersuite, a bad
    self-signature, a client of another domain than ``as_domain`` (the AS
    core passes its own domain), a signer other than ``intermediate``, an
    unordered or already expired period, a period outside the
    intermediate's, or one longer than ``max_validity_ms``. Raises
    IssuerError if ``intermediate_key`` does not belong to ``intermediate``.
    """
    if intermediate_key.public != intermediate.public_key:
        raise IssuerError("the intermediate signing key does not match the intermediate credential")
    p = csr.payload
    try:
        csr.verify_self_signature()
    except CredentialError as e:
        raise InvalidCsr(e.message) from None
    if as_domain is not None and p.client_id.as_domain != as_domain:
        raise InvalidCsr(f"the CSR is for a client of {p.client_id.as_domain}, this AS is {as_domain}")
    if p.signer_fingerprint != intermediate.fingerprint():
        raise InvalidCsr("the CSR names a signer other than this AS's current intermediate credential")
    exp = p.expiration_data
    _check_ordered(exp, InvalidCsr, "CSR")
    if exp.not_after < now:
        raise InvalidCsr(f"the CSR's validity ended at {exp.not_after}, before now ({now})")
    if not intermediate.expiration_data.contains(exp):
        raise InvalidCsr("the CSR's validity period is not within the intermediate credential's")
    if max_validity_ms is not None and exp.not_after - exp.not_before > max_validity_ms:
        raise InvalidCsr(f"the CSR asks for more than the maximum validity of {max_validity_ms} ms")
    return ClientCredential(csr, _sign(intermediate_key, csr))


# --- leaf credentials ---------------------------------------------------------------------

@struct
class LeafCredential:
    """``spec/authentication_service/credentials.md#leaf-credentials``: the
    per-group pseudonymous credential in an MLS leaf; its signature by the
    client credential travels encrypted."""
    identity: VarBytes
    expiration_data: ExpirationData
    credential_ciphersuite: CredentialCiphersuite
    public_key: VarBytes
    signer_fingerprint: VarBytes
    encrypted_signature: VarBytes


# --- Get AS credentials ---------------------------------------------------------------------

@struct
class AsCredentialsResponse:
    """``spec/authentication_service.md#get-as-credentials``."""
    as_credentials: vec(AsCredential)
    as_intermediate_credentials: vec(AsIntermediateCredential)
    revoked_certs: vec(VarBytes)

    def signing_intermediate(self, now: int) -> AsIntermediateCredential | None:
        """The intermediate a client should name in its CSR: the one valid now
        that expires last (None if there is none)."""
        revoked = set(self.revoked_certs)
        usable = [i for i in self.as_intermediate_credentials
                  if _supported(i) and i.expiration_data.is_valid_at(now)
                  and i.fingerprint() not in revoked]
        return max(usable, key=lambda i: i.expiration_data.not_after, default=None)


@dataclass(frozen=True)
class CredentialChain:
    """A verified chain, leaf first."""
    client: ClientCredential
    intermediate: AsIntermediateCredential
    as_credential: AsCredential


@dataclass
class _DomainTrust:
    as_credentials: dict[bytes, AsCredential] = field(default_factory=dict)
    intermediates: dict[bytes, AsIntermediateCredential] = field(default_factory=dict)
    revoked: frozenset[bytes] = frozenset()


def verify_as_credential(cred: AsCredential, domain: Fqdn, now: int) -> None:
    """An AS credential is a trust anchor for ``domain`` at ``now``: right
    domain, supported ciphersuite, valid self-signature, not expired."""
    if cred.as_domain != domain:
        raise DomainMismatch(f"AS credential for {cred.as_domain} served as a credential of {domain}")
    cred.verify_self_signature()
    _check_ordered(cred.expiration_data, Expired, "AS credential")
    cred.expiration_data.check_valid_at(now, f"the AS credential of {domain}")


class TrustStore:
    """What the caller trusts: per domain, the AS credentials, intermediate
    credentials and revoked fingerprints that domain's AS published.

    ``add`` replaces a domain's entry with a fresh *Get AS credentials*
    answer (rotation: the answer lists every credential still in use, so
    old and new AS / intermediate credentials verify side by side until the
    old ones expire or are revoked).
    """

    def __init__(self) -> None:
        self._domains: dict[Fqdn, _DomainTrust] = {}

    @classmethod
    def of(cls, answers: dict[Fqdn, AsCredentialsResponse]) -> "TrustStore":
        store = cls()
        for domain, answer in answers.items():
            store.add(domain, answer)
        return store

    def add(self, domain: Fqdn, answer: AsCredentialsResponse) -> None:
        """Trust ``answer`` (fetched from ``domain``'s AS over verified TLS)
        for ``domain``. Raises DomainMismatch, UnsupportedCiphersuite or
        BadSignature if an AS credential in it is not a valid self-signed
        credential of ``domain``; nothing is stored then."""
        entry = _DomainTrust(revoked=frozenset(answer.revoked_certs))
        for cred in answer.as_credentials:
            if cred.as_domain != domain:
                raise DomainMismatch(f"{domain}'s AS published an AS credential for {cred.as_domain}")
            if not _supported(cred):
                continue  # a suite this implementation does not know: unusable, not an error
            cred.verify_self_signature()
            entry.as_credentials[cred.fingerprint()] = cred
        for inter in answer.as_intermediate_credentials:
            if _supported(inter):
                entry.intermediates[inter.fingerprint()] = inter
        self._domains[domain] = entry

    def remove(self, domain: Fqdn) -> None:
        self._domains.pop(domain, None)

    def domains(self) -> list[Fqdn]:
        return sorted(self._domains)

    def knows(self, domain: Fqdn) -> bool:
        return domain in self._domains

    def knows_fingerprint(self, domain: Fqdn, fp: bytes) -> bool:
        """Whether ``domain``'s answer holds a usable AS or intermediate
        credential with fingerprint ``fp``."""
        entry = self._domains.get(domain)
        return entry is not None and (fp in entry.as_credentials or fp in entry.intermediates)

    def _entry(self, domain: Fqdn) -> _DomainTrust:
        entry = self._domains.get(domain)
        if entry is None:
            raise UnknownSigner(f"no AS credentials of {domain} are known", domain=domain)
        return entry

    def _find(self, domain: Fqdn, fp: bytes, table: str, what: str):
        """Look ``fp`` up in ``domain``'s table; if another domain has it, the
        credential claims the wrong domain (DomainMismatch)."""
        found = getattr(self._entry(domain), table).get(fp)
        if found is not None:
            return found
        for other, entry in self._domains.items():
            if other != domain and fp in getattr(entry, table):
                raise DomainMismatch(f"{what} of {domain} names a signer that belongs to {other}")
        raise UnknownSigner(f"{what} of {domain} names a signer unknown to this trust store", domain=domain)

    def verify_intermediate(self, inter: AsIntermediateCredential, domain: Fqdn,
                            now: int) -> AsCredential:
        """Verify an intermediate of ``domain`` up to its AS credential, which is returned."""
        entry = self._entry(domain)
        inter.credential_ciphersuite.check_supported("intermediate credential")
        as_cred = self._find(domain, inter.signer_fingerprint, "as_credentials", "an intermediate credential")
        verify_as_credential(as_cred, domain, now)
        if as_cred.fingerprint() in entry.revoked:
            raise Revoked(f"the AS credential of {domain} is revoked")
        if inter.fingerprint() in entry.revoked:
            raise Revoked(f"the intermediate credential of {domain} is revoked")
        inter.verify_signatures(as_cred)
        _check_ordered(inter.expiration_data, Expired, "intermediate credential")
        inter.expiration_data.check_valid_at(now, f"the intermediate credential of {domain}")
        inter.expiration_data.check_within(as_cred.expiration_data, "the intermediate credential",
                                           "AS credential")
        return as_cred

    def verify_client_credential(self, cred: ClientCredential, now: int) -> CredentialChain:
        """Verify the chain client → intermediate → AS credential
        (``spec/authentication_service/credentials.md``): the client's domain
        (``client_id.user_id.as_domain``) is the AS credential's, no link is
        revoked or expired, each period lies within its signer's, every
        signature and self-signature verifies. Raises a CredentialError."""
        domain = cred.client_id.as_domain
        entry = self._entry(domain)
        cred.credential_ciphersuite.check_supported("client credential")
        inter = self._find(domain, cred.signer_fingerprint, "intermediates", "a client credential")
        as_cred = self.verify_intermediate(inter, domain, now)
        if as_cred.as_domain != domain:  # guaranteed by add(); kept as the spec's rule
            raise DomainMismatch(f"client of {domain} certified by the AS of {as_cred.as_domain}")
        if cred.fingerprint() in entry.revoked:
            raise Revoked(f"the client credential of {cred.client_id} is revoked")
        cred.verify_signatures(inter)
        _check_ordered(cred.expiration_data, Expired, "client credential")
        cred.expiration_data.check_valid_at(now, f"the client credential of {cred.client_id}")
        cred.expiration_data.check_within(inter.expiration_data, "the client credential",
                                          "intermediate credential")
        return CredentialChain(cred, inter, as_cred)


def verify_client_credential(cred: ClientCredential, trust: TrustStore, now: int) -> CredentialChain:
    """Module-level form of :meth:`TrustStore.verify_client_credential`."""
    return trust.verify_client_credential(cred, now)
