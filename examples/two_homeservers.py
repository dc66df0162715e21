"""Two homeservers on this machine, over real TLS, finding and trusting each other.

Run: ``python examples/two_homeservers.py`` (exits 0 when every step worked).

1. ``generate-config`` for ``a.example`` and ``b.example`` into a temporary
   directory, both certificates from one private test CA, each with a
   resolve override that sends the other's host names to its 127.0.0.1 port.
2. Serve both with anycorn over TLS 1.3 (the same code as ``phoenix-ref serve``).
3. Each discovers the other (``.well-known/phoenix``) and fetches its key
   material (``spec/federation/use_cases.md#authentication-key-distribution``);
   a second fetch is served from the cache.
4. ``b.example`` signs a client credential; ``a.example`` verifies it against
   ``b.example``'s AS credentials; ``b.example``'s operator revokes the
   intermediate; once ``a.example`` refreshes, the credential is refused.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

import trio

from phoenix_ref.cli import generate_config, serve
from phoenix_ref.credentials import ClientCredentialCsr, CredentialError, sign_csr
from phoenix_ref.crypto import SigningKey
from phoenix_ref.federation.keys import key_id
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.ids import ClientId, UserId

DOMAINS = ("a.example", "b.example")


def bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def issue_client_credential(hs: Homeserver, now_ms: int):
    inter, inter_key = hs.keystore.as_intermediates[0]
    client_id = ClientId.random(UserId.random(hs.domain))
    csr = ClientCredentialCsr.create(client_id, SigningKey.generate(), inter.fingerprint(),
                                     now_ms - 1000, inter.expiration_data.not_after)
    return sign_csr(csr, inter, inter_key, now_ms, as_domain=client_id.as_domain)


async def demo(workdir: Path) -> None:
    socks = {d: bound_socket() for d in DOMAINS}
    ports = {d: s.getsockname()[1] for d, s in socks.items()}
    servers = {}
    for d in DOMAINS:
        other = next(o for o in DOMAINS if o != d)
        cfg = generate_config(workdir / d, d, port=ports[d], test_ca=True, test_ca_dir=workdir / "ca",
                              peers={other: ports[other]})
        print(f"[setup] {d}: config {workdir / d / 'config.toml'}, port {ports[d]}")
        servers[d] = Homeserver(cfg)

    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        for d in DOMAINS:
            await nursery.start(lambda task_status, d=d: serve(
                servers[d].config, homeserver=servers[d], sock=socks[d],
                shutdown_trigger=stop.wait, task_status=task_status))
            print(f"[serve] https://{{as,ds,qs}}.{d}:{ports[d]} is up (TLS 1.3, anycorn)")
        try:
            await federate(servers)
        finally:
            stop.set()
    for s in socks.values():
        s.close()


async def federate(servers: dict[str, Homeserver]) -> None:
    a, b = servers["a.example"], servers["b.example"]
    for me, other in ((a, b), (b, a)):
        fed = me.federation
        urls = await fed.discovery.discover(other.domain)
        print(f"[{me.domain}] discovered {other.domain} via {urls.source}: "
              f"AS {urls.as_url}, DS {urls.ds_url}, QS {urls.qs_url}")
        qs = await fed.keys.qs_verifying_keys(other.domain)
        ds = await fed.keys.ds_verifying_keys(other.domain)
        creds = await fed.keys.as_credentials(other.domain)
        assert qs == [k.public for k in other.keystore.qs_signing_keys]
        assert ds == [k.public for k in other.keystore.ds_signing_keys]
        print(f"[{me.domain}] {other.domain} QS key id {key_id(qs[0]).hex()[:16]}…, "
              f"DS key id {key_id(ds[0]).hex()[:16]}…, "
              f"{len(creds.as_credentials)} AS credential(s), "
              f"{len(creds.as_intermediate_credentials)} intermediate(s), {len(creds.revoked_certs)} revoked")
        sent = fed.fetcher.requests
        await fed.keys.qs_verifying_keys(other.domain)
        assert fed.fetcher.requests == sent
        print(f"[{me.domain}] second fetch of {other.domain}'s QS key: served from the cache")

    now = b.clock.now_ms()
    cred = issue_client_credential(b, now)
    chain = await a.federation.keys.verify_client_credential(cred, now)
    print(f"[a.example] client credential of {cred.client_id} verifies up to the AS credential "
          f"of {chain.as_credential.as_domain}")
    revoked = await b.operator.revoke_intermediate()
    print(f"[b.example] operator revoked intermediate {revoked.hex()[:16]}… and issued a new one")
    a.federation.keys.invalidate("b.example")      # as if the cache TTL had run out
    try:
        await a.federation.keys.verify_client_credential(cred, now)
    except CredentialError as e:
        print(f"[a.example] after refreshing b.example's AS credentials: refused ({e.code}: {e.message})")
    else:
        raise AssertionError("a credential under a revoked intermediate was accepted")


def main() -> int:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phoenix-two-homeservers-") as tmp:
        trio.run(demo, Path(tmp))
    print(f"done in {time.monotonic() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
