"""A homeserver's own key material, on disk in its keys directory.

What the spec says each service holds:

* AS: "AS credential key material" — AS credentials (root, self-signed) and
  the intermediate credentials that sign client credentials
  (``spec/authentication_service.md#as-state``,
  ``spec/authentication_service/credentials.md``);
* QS: the QS signing key and the queue-config (queue id) HPKE key pair
  (``spec/queuing_service.md#qs-state``);
* DS: a signing key whose verifying key federated parties fetch
  (``spec/federation/use_cases.md#authentication-key-distribution``);
* QS: the secret that encrypts the QS-to-QS queues at rest
  (``spec/queuing_service.md#qs-state``, :mod:`phoenix_ref.federation.outbound_crypto`),
  kept here so that the database file alone does not open them. A keys
  directory of an earlier version gets one when it is loaded.
* AS: the secret that names the Privacy Pass issuance counters
  (``privacy_pass_counter``; :class:`~phoenix_ref.privacy_pass.IssuancePolicy`
  stores an HMAC of each client id and domain under it, not the names —
  ``docs/storage.md, "Privacy Pass store"``). Created when missing, like the above.

Layout (docs/decisions.md): one file per key, ``<kind>-<n>.key`` holding the
private key in hex (mode 0600), plus ``<kind>-<n>.cred`` with the encoded
credential for the AS kinds. ``n`` counts up; the highest ``n`` of a kind is
its current key, lower ones are older keys still published until an operator
removes their files — that is how keys rotate. Files are written atomically
(temporary file, fsync, rename), so a crash never leaves half a key.

``phoenix-ref admin`` rotates keys by writing files beside a running
homeserver; the homeserver calls :meth:`Keystore.refresh` now and then and
takes the new key material over in place (the lists keep their identity, so
everything holding them sees the change).

All methods do blocking file I/O; async code calls them with
``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .codec import DecodeError, decode, encode
from .credentials import AsCredential, AsIntermediateCredential
from .crypto import HpkeKeyPair, SigningKey, random_bytes
from .federation.outbound_crypto import SECRET_LEN as OUTBOUND_SECRET_LEN

DAY_MS = 86_400_000
AS_CREDENTIAL_VALIDITY_MS = 10 * 365 * DAY_MS     # credentials.md: "valid for a long time, e.g. 10 years"
INTERMEDIATE_VALIDITY_MS = 365 * DAY_MS
#: The AS issues a new intermediate once the current one has less than this
#: left (docs/decisions.md): a client credential must end before its signer.
INTERMEDIATE_RENEW_MS = 90 * DAY_MS
BACKDATE_MS = 5 * 60_000                           # tolerate peers whose clocks run a little behind

KINDS = ("as_credential", "as_intermediate", "qs_signing", "qs_queue_config", "ds_signing", "qs_outbound",
         "privacy_pass_counter")
COUNTER_SECRET_LEN = 32
_NAME = re.compile(r"^(?P<kind>[a-z_]+)-(?P<n>[0-9]+)\.key$")


class KeystoreError(Exception):
    """Key material is missing, unreadable or inconsistent."""


@dataclass
class Keystore:
    """The loaded key material; lists are current first."""
    keys_dir: Path
    domain: str
    as_credentials: list[tuple[AsCredential, SigningKey]] = field(default_factory=list)
    as_intermediates: list[tuple[AsIntermediateCredential, SigningKey]] = field(default_factory=list)
    qs_signing_keys: list[SigningKey] = field(default_factory=list)
    qs_queue_config_keys: list[HpkeKeyPair] = field(default_factory=list)
    ds_signing_keys: list[SigningKey] = field(default_factory=list)
    qs_outbound_secrets: list[bytes] = field(default_factory=list)
    privacy_pass_counter_secrets: list[bytes] = field(default_factory=list)
    #: Names of the key files this object knows (loaded or written), for :meth:`refresh`.
    files: set[str] = field(default_factory=set, repr=False)

    # --- creation and loading ---------------------------------------------------------

    @classmethod
    def create(cls, keys_dir: Path | str, domain: str, now_ms: int) -> "Keystore":
        """Generate fresh key material for ``domain``; refuses to overwrite."""
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        if any(_NAME.match(p.name) for p in keys_dir.iterdir()):
            raise KeystoreError(f"{keys_dir} already holds key material")
        ks = cls(keys_dir, domain)
        root_key = SigningKey.generate()
        root = AsCredential.create(domain, root_key, now_ms - BACKDATE_MS,
                                   now_ms + AS_CREDENTIAL_VALIDITY_MS)
        ks._write("as_credential", 1, root_key.private, encode(root))
        ks.as_credentials.append((root, root_key))
        ks.issue_intermediate(now_ms)
        ks.rotate_qs_signing_key()
        ks.rotate_queue_config_key()
        ks.rotate_ds_signing_key()
        ks.rotate_outbound_secret()
        ks.new_counter_secret()
        return ks

    @classmethod
    def load(cls, keys_dir: Path | str, domain: str) -> "Keystore":
        """Read every key of every kind; raise KeystoreError if one is missing or bad."""
        keys_dir = Path(keys_dir)
        if not keys_dir.is_dir():
            raise KeystoreError(f"no keys directory {keys_dir}")
        ks = cls(keys_dir, domain)
        ks.files = ks._key_files()
        for kind in KINDS:
            for n in sorted(ks._numbers(kind), reverse=True):
                ks._load_one(kind, n)
        for kind, lst in (("as_credential", ks.as_credentials), ("as_intermediate", ks.as_intermediates),
                          ("qs_signing", ks.qs_signing_keys), ("qs_queue_config", ks.qs_queue_config_keys),
                          ("ds_signing", ks.ds_signing_keys)):
            if not lst:
                raise KeystoreError(f"{keys_dir} holds no {kind} key")
        for cred, _ in ks.as_credentials:
            if str(cred.as_domain) != domain:
                raise KeystoreError(f"{keys_dir}: AS credential is for {cred.as_domain}, not {domain}")
        if not ks.qs_outbound_secrets:   # a keys directory of an earlier version
            ks.rotate_outbound_secret()
        if not ks.privacy_pass_counter_secrets:
            ks.new_counter_secret()
        return ks

    def _key_files(self) -> set[str]:
        return {p.name for p in self.keys_dir.iterdir() if _NAME.match(p.name)}

    def refresh(self) -> bool:
        """Take over key files another process (``phoenix-ref admin``) wrote
        or removed since this keystore was loaded: every list is replaced in
        place by the directory's contents. Returns whether anything changed.
        Raises KeystoreError if the directory is no longer loadable (the
        keystore then stays as it was)."""
        if self._key_files() == self.files:
            return False
        fresh = Keystore.load(self.keys_dir, self.domain)
        for name in ("as_credentials", "as_intermediates", "qs_signing_keys", "qs_queue_config_keys",
                     "ds_signing_keys", "qs_outbound_secrets", "privacy_pass_counter_secrets"):
            getattr(self, name)[:] = getattr(fresh, name)
        self.files = fresh.files
        return True

    def describe(self) -> list[tuple[str, int, bool, str, bytes | None]]:
        """``(kind, n, current, public part, fingerprint)`` of every loaded
        key, current first per kind: for an AS credential its fingerprint
        and end of validity, for a key pair its public key, for the outbound
        and counter secrets only their number (they are secret). ``fingerprint`` is the AS
        credential's, else None."""
        lists = {"as_credential": self.as_credentials, "as_intermediate": self.as_intermediates,
                 "qs_signing": self.qs_signing_keys, "qs_queue_config": self.qs_queue_config_keys,
                 "ds_signing": self.ds_signing_keys, "qs_outbound": self.qs_outbound_secrets,
                 "privacy_pass_counter": self.privacy_pass_counter_secrets}
        out = []
        for kind in KINDS:
            numbers = sorted(self._numbers(kind), reverse=True)
            for i, (n, entry) in enumerate(zip(numbers, lists[kind])):
                if kind.startswith("as_"):
                    cred = entry[0]
                    text = f"fingerprint {cred.fingerprint().hex()}, valid until {_day(cred.expiration_data.not_after)}"
                    out.append((kind, n, i == 0, text, cred.fingerprint()))
                elif kind in ("qs_outbound", "privacy_pass_counter"):
                    out.append((kind, n, i == 0, "secret", None))
                else:
                    out.append((kind, n, i == 0, f"public key {entry.public.hex()}", None))
        return out

    def _load_one(self, kind: str, n: int) -> None:
        private = self._read_private(kind, n)
        if kind in ("qs_outbound", "privacy_pass_counter"):
            want = OUTBOUND_SECRET_LEN if kind == "qs_outbound" else COUNTER_SECRET_LEN
            if len(private) != want:
                raise KeystoreError(f"{kind}-{n}.key: {want} bytes expected, not {len(private)}")
            (self.qs_outbound_secrets if kind == "qs_outbound" else self.privacy_pass_counter_secrets).append(private)
            return
        if kind == "qs_queue_config":
            self.qs_queue_config_keys.append(_hpke_from_private(private))
            return
        key = SigningKey.from_private(private)
        if kind == "qs_signing":
            self.qs_signing_keys.append(key)
        elif kind == "ds_signing":
            self.ds_signing_keys.append(key)
        else:
            cls_ = AsCredential if kind == "as_credential" else AsIntermediateCredential
            try:
                cred = decode(cls_, (self.keys_dir / f"{kind}-{n}.cred").read_bytes())
            except (OSError, DecodeError) as e:
                raise KeystoreError(f"{kind}-{n}.cred: {e}") from None
            if cred.public_key != key.public:
                raise KeystoreError(f"{kind}-{n}: the credential does not match its private key")
            (self.as_credentials if kind == "as_credential" else self.as_intermediates).append((cred, key))

    # --- rotation (operator actions) ------------------------------------------------------

    def _intermediate_end(self, now_ms: int) -> int:
        """When an intermediate issued now ends: a year on, or with the AS credential."""
        return min(now_ms + INTERMEDIATE_VALIDITY_MS, self.as_credentials[0][0].expiration_data.not_after)

    def intermediate_due(self, now_ms: int) -> bool:
        """Whether the current intermediate ends within ``INTERMEDIATE_RENEW_MS``
        and a new one would end later."""
        current = self.as_intermediates[0][0].expiration_data.not_after
        return current - now_ms < INTERMEDIATE_RENEW_MS and self._intermediate_end(now_ms) > current

    def rotate_as_credential(self, now_ms: int) -> AsCredential:
        """A new current AS credential (``credentials.md#as-credentials``:
        "Rotation MUST be possible"), and a new intermediate signed by it, so
        that new client credentials chain to the new AS credential. The old
        AS credential stays published (clients' chains through it still
        verify) until its file is removed."""
        root_key = SigningKey.generate()
        root = AsCredential.create(self.domain, root_key, now_ms - BACKDATE_MS, now_ms + AS_CREDENTIAL_VALIDITY_MS)
        self._write("as_credential", self._next("as_credential"), root_key.private, encode(root))
        self.as_credentials.insert(0, (root, root_key))
        self.issue_intermediate(now_ms)
        return root

    def issue_intermediate(self, now_ms: int) -> AsIntermediateCredential:
        """Issue a new current intermediate credential, signed by the current AS credential."""
        root, root_key = self.as_credentials[0]
        key = SigningKey.generate()
        inter = AsIntermediateCredential.create(root, root_key, key,
                                                max(now_ms - BACKDATE_MS, root.expiration_data.not_before),
                                                self._intermediate_end(now_ms))
        self._write("as_intermediate", self._next("as_intermediate"), key.private, encode(inter))
        self.as_intermediates.insert(0, (inter, key))
        return inter

    def rotate_qs_signing_key(self) -> SigningKey:
        key = SigningKey.generate()
        self._write("qs_signing", self._next("qs_signing"), key.private)
        self.qs_signing_keys.insert(0, key)
        return key

    def rotate_ds_signing_key(self) -> SigningKey:
        key = SigningKey.generate()
        self._write("ds_signing", self._next("ds_signing"), key.private)
        self.ds_signing_keys.insert(0, key)
        return key

    def rotate_outbound_secret(self) -> bytes:
        """A new current secret for the QS-to-QS queues at rest; items sealed
        with an older one still open while its file exists."""
        secret = random_bytes(OUTBOUND_SECRET_LEN)
        self._write("qs_outbound", self._next("qs_outbound"), secret)
        self.qs_outbound_secrets.insert(0, secret)
        return secret

    def new_counter_secret(self) -> bytes:
        """A new secret for the issuance counters' names. The counters of
        running windows are then lost (their names change), which gives each
        client at most one more allowance: rotate only when needed."""
        secret = random_bytes(COUNTER_SECRET_LEN)
        self._write("privacy_pass_counter", self._next("privacy_pass_counter"), secret)
        self.privacy_pass_counter_secrets.insert(0, secret)
        return secret

    @property
    def counter_secret(self) -> bytes:
        """The current secret of the issuance counters' names."""
        return self.privacy_pass_counter_secrets[0]

    def rotate_queue_config_key(self) -> HpkeKeyPair:
        pair = _hpke_from_private(random_bytes(32))
        self._write("qs_queue_config", self._next("qs_queue_config"), pair.private)
        self.qs_queue_config_keys.insert(0, pair)
        return pair

    # --- files -------------------------------------------------------------------------------

    def _numbers(self, kind: str) -> list[int]:
        out = []
        for p in self.keys_dir.iterdir():
            m = _NAME.match(p.name)
            if m and m.group("kind") == kind:
                out.append(int(m.group("n")))
        return out

    def _next(self, kind: str) -> int:
        return max(self._numbers(kind), default=0) + 1

    def _read_private(self, kind: str, n: int) -> bytes:
        path = self.keys_dir / f"{kind}-{n}.key"
        try:
            return bytes.fromhex(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as e:
            raise KeystoreError(f"{path}: {e}") from None

    def _write(self, kind: str, n: int, private: bytes, cred: bytes | None = None) -> None:
        if cred is not None:
            _atomic_write(self.keys_dir / f"{kind}-{n}.cred", cred, 0o644)
        _atomic_write(self.keys_dir / f"{kind}-{n}.key", (private.hex() + "\n").encode(), 0o600)
        self.files.add(f"{kind}-{n}.key")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d")


def _hpke_from_private(private: bytes) -> HpkeKeyPair:
    """An X25519 HPKE key pair (DHKEM(X25519), RFC 9180 §7.1) from its private key."""
    try:
        public = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
    except ValueError as e:
        raise KeystoreError(f"bad X25519 private key: {e}") from None
    return HpkeKeyPair(private, public)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
