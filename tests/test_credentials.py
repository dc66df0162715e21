"""Credentials (spec/authentication_service/credentials.md): issuance, chains, expiry, revocation, rotation."""

import dataclasses
import uuid

import pytest
from hypothesis import given, settings, strategies as st

from phoenix_ref import crypto
from phoenix_ref.codec import DecodeError, decode, encode
from phoenix_ref.credentials import (
    DEFAULT_CIPHERSUITE, ED25519, SHA256, AsCredential, AsCredentialPayload, AsCredentialsResponse,
    AsIntermediateCredential, AsIntermediateCredentialCsr, BadSignature, ClientCredential,
    ClientCredentialCsr, CredentialCiphersuite, CredentialError, DomainMismatch, Expired,
    ExpirationData, InvalidCsr, IssuerError, LeafCredential, Revoked, TrustStore, UnknownSigner,
    UnsupportedCiphersuite, ValidityOutOfRange, fingerprint, sign_csr, verify_client_credential,
)
from phoenix_ref.ids import ClientId, Fqdn, UserId
from phoenix_ref.spec_plugin import spec

DAY = 86_400_000
YEAR = 365 * DAY
T0 = 1_767_225_600_000  # 2026-01-01
A = Fqdn("a.example")
B = Fqdn("b.example")


@dataclasses.dataclass
class Issuer:
    """One domain's AS: an AS credential and one intermediate, with keys."""
    domain: Fqdn
    as_key: crypto.SigningKey
    as_cred: AsCredential
    inter_key: crypto.SigningKey
    inter: AsIntermediateCredential

    @classmethod
    def make(cls, domain, as_from=T0 - DAY, as_to=T0 + 10 * YEAR, i_from=T0 - DAY, i_to=T0 + YEAR):
        as_key, inter_key = crypto.SigningKey.generate(), crypto.SigningKey.generate()
        as_cred = AsCredential.create(domain, as_key, as_from, as_to)
        inter = AsIntermediateCredential.create(as_cred, as_key, inter_key, i_from, i_to)
        return cls(domain, as_key, as_cred, inter_key, inter)

    def answer(self, *, revoked=(), extra_as=(), extra_inter=()):
        return AsCredentialsResponse([self.as_cred, *extra_as], [self.inter, *extra_inter], list(revoked))

    def client(self, nb=T0 - DAY, na=T0 + 30 * DAY, domain=None, inter=None, inter_key=None):
        """A client key and its signed credential."""
        inter, inter_key = inter or self.inter, inter_key or self.inter_key
        key = crypto.SigningKey.generate()
        cid = ClientId(UserId(domain or self.domain, uuid.uuid4()), uuid.uuid4())
        csr = ClientCredentialCsr.create(cid, key, inter.fingerprint(), nb, na)
        return key, sign_csr(csr, inter, inter_key, T0, as_domain=domain or self.domain)


def forge_client(inter, inter_key, nb, na, domain=A, key=None):
    """Sign a client credential without sign_csr's checks (to test the verifier)."""
    key = key or crypto.SigningKey.generate()
    cid = ClientId(UserId(domain, uuid.uuid4()), uuid.uuid4())
    csr = ClientCredentialCsr.create(cid, key, inter.fingerprint(), nb, na)
    return ClientCredential(csr, crypto.hs_sign(inter_key, "ClientCredentialCsr", encode(csr)))


@pytest.fixture(scope="module")
def a():
    return Issuer.make(A)


@pytest.fixture(scope="module")
def b():
    return Issuer.make(B)


@pytest.fixture(scope="module")
def trust(a, b):
    return TrustStore.of({A: a.answer(), B: b.answer()})


# --- happy path and wire forms --------------------------------------------------------

@spec("spec/authentication_service/credentials.md#client-credentials", "informative")
def test_chain_verifies(a, trust):
    _, cred = a.client()
    chain = verify_client_credential(cred, trust, T0)
    assert chain.client == cred and chain.intermediate == a.inter and chain.as_credential == a.as_cred


def test_ciphersuite_values():
    assert DEFAULT_CIPHERSUITE == CredentialCiphersuite(hash=SHA256, signature_scheme=ED25519)
    assert encode(DEFAULT_CIPHERSUITE) == bytes.fromhex("00040807")


@spec("spec/authentication_service/credentials.md#credential-fingerprints", "informative")
def test_fingerprint_is_hash_of_encoded_credential(a):
    _, cred = a.client()
    assert fingerprint(cred) == crypto.hash_(encode(cred)) == cred.fingerprint()
    assert a.inter.signer_fingerprint == crypto.hash_(encode(a.as_cred))
    assert cred.signer_fingerprint == crypto.hash_(encode(a.inter))


@spec("spec/authentication_service/credentials.md#credential-signing-and-self-signatures", "MUST")
def test_signature_labels_are_struct_names(a):
    key, cred = a.client()
    hs = crypto.hs_verify
    hs(a.as_cred.public_key, "AsCredentialPayload", encode(a.as_cred.payload), a.as_cred.self_signature)
    hs(a.inter.public_key, "AsIntermediateCredentialPayload", encode(a.inter.payload),
       a.inter.signed_payload.self_signature)
    hs(a.as_cred.public_key, "AsIntermediateCredentialCsr", encode(a.inter.signed_payload), a.inter.signature)
    hs(key.public, "ClientCredentialPayload", encode(cred.payload), cred.signed_payload.self_signature)
    hs(a.inter.public_key, "ClientCredentialCsr", encode(cred.signed_payload), cred.signature)
    # a signature is bound to its label: the same bytes under another type's label fail
    with pytest.raises(crypto.CryptoError):
        hs(key.public, "AsCredentialPayload", encode(cred.payload), cred.signed_payload.self_signature)


def test_wire_round_trips(a):
    _, cred = a.client()
    leaf = LeafCredential(b"pseudonym", ExpirationData(1, 2), DEFAULT_CIPHERSUITE, b"k" * 32, b"f" * 32, b"ct")
    answer = a.answer(revoked=[b"x" * 32])
    for v in (cred, cred.signed_payload, a.inter, a.inter.signed_payload, a.as_cred, leaf, answer):
        assert decode(type(v), encode(v)) == v


@pytest.mark.parametrize("cls", [
    AsCredential, AsIntermediateCredential, ClientCredential, ClientCredentialCsr, LeafCredential,
    AsCredentialsResponse, ExpirationData, CredentialCiphersuite,
])
@settings(max_examples=150)
@given(data=st.binary(max_size=300))
def test_garbage_raises_only_decode_error(cls, data):
    try:
        v = decode(cls, data)
    except DecodeError:
        return
    assert encode(v) == data


@given(st.integers(0, 400), st.data())
@settings(max_examples=100)
def test_mutated_credential_never_verifies_or_crashes(pos, data):
    iss = _MUTATION_ISSUER
    raw = bytearray(encode(_MUTATION_CRED))
    pos %= len(raw)
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        cred = decode(ClientCredential, bytes(raw))
    except DecodeError:
        return
    with pytest.raises(CredentialError):
        verify_client_credential(cred, TrustStore.of({A: iss.answer()}), T0)


_MUTATION_ISSUER = Issuer.make(A)
_MUTATION_CRED = _MUTATION_ISSUER.client()[1]


# --- expiration ------------------------------------------------------------------------

@spec("spec/authentication_service/credentials.md#credential-expiration", "MUST")
@pytest.mark.parametrize("now, ok", [
    (T0 - DAY, True), (T0 + 30 * DAY, True), (T0 - DAY - 1, False), (T0 + 30 * DAY + 1, False),
])
def test_client_validity_bounds_inclusive(a, trust, now, ok):
    _, cred = a.client()
    if ok:
        verify_client_credential(cred, trust, now)
    else:
        with pytest.raises(Expired):
            verify_client_credential(cred, trust, now)


def test_expired_intermediate():
    iss = Issuer.make(A, i_from=T0 - DAY, i_to=T0 + DAY)
    cred = forge_client(iss.inter, iss.inter_key, T0 - DAY, T0 + DAY)
    trust = TrustStore.of({A: iss.answer()})
    verify_client_credential(cred, trust, T0)
    with pytest.raises(Expired, match="intermediate"):
        verify_client_credential(cred, trust, T0 + DAY + 1)


def test_expired_as_credential():
    iss = Issuer.make(A, as_from=T0 - 2 * DAY, as_to=T0 + DAY, i_from=T0 - DAY, i_to=T0 + DAY)
    cred = forge_client(iss.inter, iss.inter_key, T0 - DAY, T0 + DAY)
    trust = TrustStore.of({A: iss.answer()})
    with pytest.raises(Expired, match="AS credential"):
        verify_client_credential(cred, trust, T0 + DAY + 1)


@spec("spec/authentication_service/credentials.md#credential-expiration", "MUST")
def test_client_validity_must_lie_within_intermediate(a, trust):
    cred = forge_client(a.inter, a.inter_key, T0 - DAY, T0 + 2 * YEAR)
    with pytest.raises(ValidityOutOfRange):
        verify_client_credential(cred, trust, T0)
    cred = forge_client(a.inter, a.inter_key, T0 - 2 * DAY, T0 + DAY)
    with pytest.raises(ValidityOutOfRange):
        verify_client_credential(cred, trust, T0)


@spec("spec/authentication_service/credentials.md#credential-expiration", "MUST")
def test_intermediate_validity_must_lie_within_as_credential(a):
    csr = AsIntermediateCredentialCsr.create(a.inter_key, a.as_cred, T0 - DAY, T0 + 20 * YEAR)
    inter = AsIntermediateCredential(csr, crypto.hs_sign(a.as_key, "AsIntermediateCredentialCsr", encode(csr)))
    trust = TrustStore.of({A: a.answer(extra_inter=[inter])})
    cred = forge_client(inter, a.inter_key, T0 - DAY, T0 + DAY)
    with pytest.raises(ValidityOutOfRange):
        verify_client_credential(cred, trust, T0)


@given(st.integers(T0 - 3 * DAY, T0 + 3 * DAY), st.integers(0, 5 * DAY), st.integers(0, 5 * DAY))
@settings(max_examples=60, deadline=None)
def test_verification_matches_validity_windows(now, c_from, c_len):
    iss = _WINDOW_ISSUER
    nb, na = T0 - 2 * DAY + c_from, T0 - 2 * DAY + c_from + c_len
    cred = forge_client(iss.inter, iss.inter_key, nb, na)
    inter_exp = iss.inter.expiration_data
    trust = TrustStore.of({A: iss.answer()})
    expect_ok = nb <= now <= na and inter_exp.is_valid_at(now) and inter_exp.contains(cred.expiration_data)
    if expect_ok:
        verify_client_credential(cred, trust, now)
    else:
        with pytest.raises((Expired, ValidityOutOfRange)):
            verify_client_credential(cred, trust, now)


_WINDOW_ISSUER = Issuer.make(A, i_from=T0 - DAY, i_to=T0 + DAY)


# --- revocation, unknown signers, signatures, domains ---------------------------------------

@pytest.mark.parametrize("level", ["client", "intermediate", "as"])
def test_revoked_at_any_level(a, level):
    _, cred = a.client()
    fp = {"client": cred.fingerprint(), "intermediate": a.inter.fingerprint(),
          "as": a.as_cred.fingerprint()}[level]
    with pytest.raises(Revoked):
        verify_client_credential(cred, TrustStore.of({A: a.answer(revoked=[fp])}), T0)


def test_revocation_is_per_domain(a, b):
    _, cred = a.client()
    trust = TrustStore.of({A: a.answer(), B: b.answer(revoked=[cred.fingerprint()])})
    verify_client_credential(cred, trust, T0)  # b cannot revoke a's credentials


def test_unknown_intermediate(a, trust):
    other = Issuer.make(A)
    _, cred = other.client()
    with pytest.raises(UnknownSigner) as e:
        verify_client_credential(cred, trust, T0)
    assert e.value.domain == A


def test_unknown_domain(a):
    c = Issuer.make(Fqdn("c.example"))
    _, cred = c.client()
    with pytest.raises(UnknownSigner, match="no AS credentials") as e:
        verify_client_credential(cred, TrustStore.of({A: a.answer()}), T0)
    assert e.value.domain == Fqdn("c.example")


def test_intermediate_with_unknown_as_credential(a):
    rogue_key = crypto.SigningKey.generate()
    rogue = AsCredential.create(A, rogue_key, T0 - DAY, T0 + YEAR)
    inter = AsIntermediateCredential.create(rogue, rogue_key, a.inter_key, T0 - DAY, T0 + DAY)
    trust = TrustStore.of({A: a.answer(extra_inter=[inter])})
    cred = forge_client(inter, a.inter_key, T0 - DAY, T0 + DAY)
    with pytest.raises(UnknownSigner):
        verify_client_credential(cred, trust, T0)


@spec("spec/authentication_service/credentials.md#credential-signing-and-self-signatures", "MUST")
@pytest.mark.parametrize("tamper", ["outer", "self", "payload", "wrong_signer_key"])
def test_bad_signatures(a, trust, tamper):
    key, cred = a.client()
    if tamper == "outer":
        cred = dataclasses.replace(cred, signature=bytes(64))
    elif tamper == "self":
        csr = dataclasses.replace(cred.signed_payload, self_signature=bytes(64))
        cred = dataclasses.replace(cred, signed_payload=csr)
    elif tamper == "payload":  # the AS signed another client id
        payload = dataclasses.replace(cred.payload, client_id=ClientId(UserId(A, uuid.uuid4()), uuid.uuid4()))
        cred = dataclasses.replace(cred, signed_payload=dataclasses.replace(cred.signed_payload, payload=payload))
    else:  # signed by a key that is not the named intermediate's
        cred = forge_client(a.inter, crypto.SigningKey.generate(), T0 - DAY, T0 + DAY)
    with pytest.raises(BadSignature):
        verify_client_credential(cred, trust, T0)


def test_forged_intermediate_signature(a):
    csr = AsIntermediateCredentialCsr.create(a.inter_key, a.as_cred, T0 - DAY, T0 + DAY)
    forged = crypto.hs_sign(crypto.SigningKey.generate(), "AsIntermediateCredentialCsr", encode(csr))
    inter = AsIntermediateCredential(csr, forged)
    trust = TrustStore.of({A: a.answer(extra_inter=[inter])})
    with pytest.raises(BadSignature, match="AS signature"):
        verify_client_credential(forge_client(inter, a.inter_key, T0 - DAY, T0 + DAY), trust, T0)


def test_self_signature_is_proof_of_possession(a):
    """A CSR carrying someone else's public key cannot be self-signed."""
    victim = crypto.SigningKey.generate()
    csr = ClientCredentialCsr.create(ClientId(UserId(A, uuid.uuid4()), uuid.uuid4()), crypto.SigningKey.generate(),
                                     a.inter.fingerprint(), T0, T0 + DAY)
    csr = dataclasses.replace(csr, payload=dataclasses.replace(csr.payload, public_key=victim.public))
    with pytest.raises(InvalidCsr, match="self-signature"):
        sign_csr(csr, a.inter, a.inter_key, T0)


@spec("spec/authentication_service.md#get-as-credentials", "informative")
def test_domain_mismatch_client_claims_other_domain(a, trust):
    """a's intermediate signing a client of b is rejected even though a and b are both trusted."""
    cred = forge_client(a.inter, a.inter_key, T0 - DAY, T0 + DAY, domain=B)
    with pytest.raises(DomainMismatch):
        verify_client_credential(cred, trust, T0)


def test_domain_mismatch_in_answer(a, b):
    store = TrustStore()
    with pytest.raises(DomainMismatch):
        store.add(B, a.answer())
    assert not store.knows(B)


def test_add_rejects_bad_as_self_signature(a):
    bad = dataclasses.replace(a.as_cred, self_signature=bytes(64))
    with pytest.raises(BadSignature):
        TrustStore().add(A, AsCredentialsResponse([bad], [], []))


def test_unsupported_ciphersuite(a):
    odd = CredentialCiphersuite(hash=0x0006, signature_scheme=ED25519)
    key = crypto.SigningKey.generate()
    csr = ClientCredentialCsr.create(ClientId(UserId(A, uuid.uuid4()), uuid.uuid4()), key,
                                     a.inter.fingerprint(), T0 - DAY, T0 + DAY, odd)
    cred = ClientCredential(csr, crypto.hs_sign(a.inter_key, "ClientCredentialCsr", encode(csr)))
    with pytest.raises(UnsupportedCiphersuite):
        verify_client_credential(cred, TrustStore.of({A: a.answer()}), T0)
    with pytest.raises(UnsupportedCiphersuite):
        fingerprint(cred)
    # an AS credential with an unknown suite is skipped when loading an answer
    odd_as = AsCredential.create(A, key, T0, T0 + DAY, odd)
    store = TrustStore.of({A: AsCredentialsResponse([odd_as, a.as_cred], [a.inter], [])})
    verify_client_credential(a.client()[1], store, T0)


# --- rotation ------------------------------------------------------------------------------

@spec("spec/authentication_service/credentials.md#as-credentials", "MUST")
def test_rotation_with_overlap(a):
    """A new AS credential and a new intermediate are published next to the old
    ones; clients certified under either verify until the old ones go."""
    new_as_key, new_inter_key = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    new_as = AsCredential.create(A, new_as_key, T0, T0 + 20 * YEAR)
    new_inter = AsIntermediateCredential.create(new_as, new_as_key, new_inter_key, T0, T0 + 2 * YEAR)
    _, old_client = a.client()
    _, new_client = a.client(nb=T0, na=T0 + DAY, inter=new_inter, inter_key=new_inter_key)
    both = TrustStore.of({A: a.answer(extra_as=[new_as], extra_inter=[new_inter])})
    for cred in (old_client, new_client):
        verify_client_credential(cred, both, T0)
    # after the old intermediate expires only the new chain works
    later = T0 + YEAR + 1
    _, late_client = a.client(nb=T0, na=later + DAY, inter=new_inter, inter_key=new_inter_key)
    verify_client_credential(late_client, both, later)
    with pytest.raises(Expired):
        verify_client_credential(forge_client(a.inter, a.inter_key, T0, later + DAY), both, later)
    # revoking the old AS credential cuts the old chain at once
    revoked = TrustStore.of({A: a.answer(extra_as=[new_as], extra_inter=[new_inter],
                                        revoked=[a.as_cred.fingerprint()])})
    with pytest.raises(Revoked):
        verify_client_credential(old_client, revoked, T0)
    verify_client_credential(new_client, revoked, T0)


def test_answer_replacement_drops_withdrawn_credentials(a):
    _, cred = a.client()
    store = TrustStore.of({A: a.answer()})
    store.add(A, AsCredentialsResponse([a.as_cred], [], []))
    with pytest.raises(UnknownSigner):
        verify_client_credential(cred, store, T0)


def test_signing_intermediate_picks_latest_valid(a):
    new_key = crypto.SigningKey.generate
    longer = AsIntermediateCredential.create(a.as_cred, a.as_key, new_key(), T0, T0 + 2 * YEAR)
    future = AsIntermediateCredential.create(a.as_cred, a.as_key, new_key(), T0 + DAY, T0 + 3 * YEAR)
    answer = a.answer(extra_inter=[longer, future])
    assert answer.signing_intermediate(T0) == longer
    assert a.answer(extra_inter=[longer, future], revoked=[longer.fingerprint()]).signing_intermediate(T0) == a.inter
    assert AsCredentialsResponse([], [], []).signing_intermediate(T0) is None


# --- issuance ------------------------------------------------------------------------------

def _csr(a, nb=T0, na=T0 + DAY, domain=A, signer=None, key=None):
    return ClientCredentialCsr.create(ClientId(UserId(domain, uuid.uuid4()), uuid.uuid4()),
                                      key or crypto.SigningKey.generate(),
                                      signer if signer is not None else a.inter.fingerprint(), nb, na)


@spec("spec/authentication_service/credentials.md#client-credential-signing-requests", "informative")
def test_sign_csr_keeps_the_request(a):
    csr = _csr(a)
    cred = sign_csr(csr, a.inter, a.inter_key, T0, as_domain=A, max_validity_ms=DAY)
    assert cred.signed_payload == csr
    assert decode(ClientCredentialCsr, encode(csr)) == csr


@pytest.mark.parametrize("make, why", [
    (lambda a: _csr(a, domain=B), "client of b.example"),
    (lambda a: _csr(a, signer=b"\x00" * 32), "names a signer"),
    (lambda a: _csr(a, nb=T0 + DAY, na=T0), "not_before"),
    (lambda a: _csr(a, nb=T0 - 2 * DAY, na=T0 - DAY), "before now"),
    (lambda a: _csr(a, na=T0 + 2 * YEAR), "not within"),
    (lambda a: _csr(a, na=T0 + 2 * DAY), "maximum validity"),
    (lambda a: dataclasses.replace(_csr(a), self_signature=bytes(64)), "self-signature"),
])
def test_sign_csr_refusals(a, make, why):
    with pytest.raises(InvalidCsr, match=why) as e:
        sign_csr(make(a), a.inter, a.inter_key, T0, as_domain=A, max_validity_ms=DAY)
    assert e.value.status == 400


def test_sign_csr_with_wrong_key_is_issuer_error(a):
    with pytest.raises(IssuerError):
        sign_csr(_csr(a), a.inter, crypto.SigningKey.generate(), T0)


def test_issuer_errors():
    key = crypto.SigningKey.generate()
    with pytest.raises(IssuerError):
        AsCredential.create(A, key, T0 + 1, T0)
    as_cred = AsCredential.create(A, key, T0, T0 + DAY)
    with pytest.raises(IssuerError, match="within"):
        AsIntermediateCredential.create(as_cred, key, crypto.SigningKey.generate(), T0, T0 + 2 * DAY)
    with pytest.raises(IssuerError, match="does not match"):
        AsIntermediateCredential.create(as_cred, crypto.SigningKey.generate(), crypto.SigningKey.generate(),
                                        T0, T0 + 1)


def test_errors_map_to_http_statuses():
    for cls in (Expired, Revoked, UnknownSigner, BadSignature, DomainMismatch, UnsupportedCiphersuite,
                ValidityOutOfRange):
        assert issubclass(cls, CredentialError) and cls("x").status == 401
        assert cls.code.startswith("credential_")
    assert InvalidCsr("x").status == 400


def test_as_credential_payload_layout(a):
    p = a.as_cred.payload
    assert encode(p) == encode(A) + encode(p.expiration_data) + bytes.fromhex("00040807") + b"\x20" + p.public_key
    assert isinstance(p, AsCredentialPayload)
