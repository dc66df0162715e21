"""Shared builders for the AS unit tests: an AS of one domain with real key
material (credentials, OPAQUE setup, Privacy Pass keys) on an SQLite file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phoenix_ref import opaque
from phoenix_ref import privacy_pass as pp
from phoenix_ref.authentication.accounts import open_as_storage
from phoenix_ref.authentication.core import AsConfig, AsSecrets, AuthenticationCore
from phoenix_ref.client.as_client import AsIdentity, Registration
from phoenix_ref.credentials import AsCredential, AsCredentialsResponse, AsIntermediateCredential
from phoenix_ref.crypto import SigningKey
from phoenix_ref.ids import Fqdn

NOW = 1_767_225_600_000  # 2026-01-01
YEAR = 365 * 24 * 3600 * 1000
COUNTER_SECRET = b"\x07" * 32


def make_secrets(domain: Fqdn, now: int = NOW) -> AsSecrets:
    as_key, inter_key = SigningKey.generate(), SigningKey.generate()
    as_cred = AsCredential.create(domain, as_key, now - YEAR, now + 10 * YEAR)
    inter = AsIntermediateCredential.create(as_cred, as_key, inter_key, now - YEAR, now + 5 * YEAR)
    local = pp.IssuerKeys.generate(now)
    federated = pp.IssuerKeys.generate(now)
    while federated.current.truncated_key_id == local.current.truncated_key_id:   # as the gate draws them
        federated = pp.IssuerKeys.generate(now)
    return AsSecrets(AsCredentialsResponse([as_cred], [inter], []), inter, inter_key,
                     opaque.OpaqueServerSetup.generate(), local, federated)


@dataclass
class AsUnderTest:
    core: AuthenticationCore
    secrets: AsSecrets
    path: Path
    counters: pp.MemoryCounterStore

    @property
    def domain(self) -> Fqdn:
        return self.core.domain

    def close(self) -> None:
        self.core.accounts.close()
        self.core.queues.store.close()

    def reopen(self) -> "AsUnderTest":
        """A new core on the same database file and key material: a restart
        (the ephemeral OPAQUE DB is gone)."""
        self.close()
        return build(self.domain, self.path, self.secrets, counters=self.counters)

    def register(self, password: bytes = b"correct horse", now: int = NOW, packages: int = 1,
                 validity_ms: int = YEAR) -> AsIdentity:
        reg, init = Registration.start(self.domain, password, self.secrets.intermediate.fingerprint(), now,
                                       validity_ms=validity_ms)
        resp = self.core.init_user_registration(init, now)
        ident = reg.identity(self.core.finish_user_registration(reg.finish(resp, now), now))
        if packages:
            self.core.upload_connection_packages(ident.upload_packages(packages, now), now)
        return ident


def build(domain: Fqdn | str, path: Path, secrets: AsSecrets | None = None, *,
          limits: pp.IssuanceLimits = pp.IssuanceLimits(client_allowance=10, domain_allowance=15),
          counters: pp.MemoryCounterStore | None = None, max_messages: int = 500) -> AsUnderTest:
    domain = Fqdn(domain) if not isinstance(domain, Fqdn) else domain
    secrets = secrets or make_secrets(domain)
    accounts, queues = open_as_storage(path, max_messages=max_messages)
    counters = counters if counters is not None else pp.MemoryCounterStore()
    core = AuthenticationCore(AsConfig(domain), secrets, accounts, queues,
                              pp.IssuancePolicy(limits, counters, domain, COUNTER_SECRET))
    return AsUnderTest(core, secrets, path, counters)
