"""``phoenix-ref admin``: an operator manages users and keys of a homeserver
locally, also while it runs (``phoenix_ref/admin.py``).

The homeserver runs in-process (the test harness, on a real data
directory); the admin commands run the real command line in a worker
thread, with their own SQLite connections, as a second process would.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from phoenix_ref.cli import main
from phoenix_ref.client.session import ClientSession
from phoenix_ref.codec import decode
from phoenix_ref.config import Limits
from phoenix_ref.credentials import AsCredentialsResponse
from phoenix_ref.errors import NotFound, ProtocolError, Unauthorized
from phoenix_ref.ids import Fqdn
from phoenix_ref.queuing.messages import QsVerifyingKeyResponse
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

A = Fqdn("a.example")
MANAGE = "functional_requirements.md#functional-requirements-for-homeserver-operators"
OPERATORS = "threat_model/stride/security_requirements/operators.md#homeserver-management"


async def admin(d: Deployment, *args: str) -> tuple[int, str]:
    """Run ``phoenix-ref admin --config <hs1's config> ARGS`` in a worker thread;
    returns the exit code and what it printed (stdout, or the error line)."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["admin", "--config", str(d["hs1"].dir / "config.toml"), *args])
    code = await trio.to_thread.run_sync(run)
    return code, (out.getvalue() if code == 0 else err.getvalue())


@pytest.fixture
async def hs1():
    # the running homeserver looks for the operator's changes every 50 ms
    async with Deployment("in_process", ["hs1"], limits=Limits(operator_poll_interval_s=0.05)) as d:
        yield d


@spec(MANAGE, "MUST")
@spec(OPERATORS, "SHOULD")
async def test_admin_deletes_a_user_while_the_homeserver_keeps_serving(hs1):
    d = hs1
    async with d.client() as http:
        alice, bob, carol = [await ClientSession.register(http, A, clock=d.clock) for _ in range(3)]
        await bob.update_profile(b"bob's profile")
        await bob.upload_connection_packages(2)

        assert await admin(d, "count-users") == (0, "3 users\n")
        code, listing = await admin(d, "list-users")
        assert code == 0
        assert {line.split()[0] for line in listing.splitlines()} == {str(s.user_id) for s in (alice, bob, carol)}
        assert all(line.endswith("  1 client") for line in listing.splitlines())
        code, page = await admin(d, "list-users", "--limit", "2")
        assert code == 0 and "continue with --after" in page

        # alice keeps using the homeserver while the operator deletes bob
        served = 0

        async def alice_works() -> None:
            nonlocal served
            for i in range(15):
                await alice.update_profile(b"alice %d" % i)
                served += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(alice_works)
            code, said = await admin(d, "delete-user", str(bob.user_id))
        assert code == 0 and said == f"deleted {bob.user_id} with 1 client and their direct queues\n"
        assert served == 15 and await alice.profile(alice.user_id) == b"alice 14"

        # bob's credential no longer authenticates, and nothing of his is served
        for attempt in (bob.update_profile(b"x"), bob.login(), bob.fetch_tokens(A, 1),
                        bob.upload_connection_packages(1)):
            with pytest.raises(Unauthorized):
                await attempt
        with pytest.raises(NotFound):
            await alice.profile(bob.user_id)
        with pytest.raises(NotFound):
            await carol.connection_package(bob.user_id)
        assert await admin(d, "count-users") == (0, "2 users\n")
        # the others are untouched
        await carol.update_profile(b"carol")
        assert (await carol.profile(carol.user_id)) == b"carol"


@spec(OPERATORS, "MUST")
async def test_operator_mistakes_are_one_line_and_exit_2(hs1):
    d = hs1
    async with d.client() as http:
        alice = await ClientSession.register(http, A, clock=d.clock)
    code, err = await admin(d, "delete-user", "not-a-user")
    assert code == 2 and err.startswith("phoenix-ref: 'not-a-user' is not a user id") and err.count("\n") == 1
    other = str(alice.user_id).replace("a.example", "b.example")
    code, err = await admin(d, "delete-user", other)
    assert code == 2 and "is a user of b.example, not of this homeserver" in err
    unknown = "00000000-0000-4000-8000-000000000000@a.example"
    assert await admin(d, "delete-user", unknown) == (2, f"phoenix-ref: no user {unknown} on this homeserver\n")
    code, err = await admin(d, "revoke-intermediate", "zz")
    assert code == 2 and "not a fingerprint in hex" in err
    code, err = await admin(d, "revoke-intermediate", "00" * 32)
    assert code == 2 and "no intermediate credential with fingerprint" in err
    assert (await admin(d, "list-users", "--limit", "0"))[0] == 2
    assert await admin(d, "count-users") == (0, "1 users\n")


@spec(MANAGE, "MUST")
def test_admin_refuses_a_homeserver_that_never_ran(tmp_path, capsys):
    from phoenix_ref.cli import generate_config
    generate_config(tmp_path / "a", "a.example")
    assert main(["admin", "--config", str(tmp_path / "a" / "config.toml"), "count-users"]) == 2
    assert "no AS database" in capsys.readouterr().err


async def _get(http: httpx.AsyncClient, d: Deployment, service: str, path: str) -> bytes:
    resp = await http.get(d["hs1"].url(service, path))
    assert resp.status_code == 200
    return resp.content


async def _eventually(check, timeout: float = 30.0) -> None:
    """Wait until the running homeserver's next look at the operator's changes made ``check()`` true."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.02)


@spec(MANAGE, "MUST")
@spec("spec/authentication_service/credentials.md#as-credentials", "MUST")
async def test_keys_rotate_beside_a_running_homeserver(hs1):
    d = hs1
    async with d.client() as http:
        code, listing = await admin(d, "keys")
        assert code == 0 and "qs_signing-1: current; public key" in listing and "qs_outbound-1: current; secret" in listing
        before = decode(QsVerifyingKeyResponse, await _get(http, d, "qs", "/phoenix/v1/qs_verifying_key"))
        for kind in ("qs_signing", "as_credential", "qs_outbound"):
            code, said = await admin(d, "rotate-key", kind)
            assert code == 0 and said.startswith(f"rotated {kind}: ")

        async def all_taken_over() -> bool:
            now = decode(QsVerifyingKeyResponse, await _get(http, d, "qs", "/phoenix/v1/qs_verifying_key"))
            creds = decode(AsCredentialsResponse, await _get(http, d, "as", "/phoenix/v1/as_credentials"))
            return len(now.verifying_keys) == 2 and len(creds.as_credentials) == 2 \
                and len(d["hs1"].hs.keystore.qs_outbound_secrets) == 2
        await _eventually(all_taken_over)
        now = decode(QsVerifyingKeyResponse, await _get(http, d, "qs", "/phoenix/v1/qs_verifying_key"))
        assert now.verifying_keys[1:] == before.verifying_keys      # the new key first, the old one kept
        creds = decode(AsCredentialsResponse, await _get(http, d, "as", "/phoenix/v1/as_credentials"))
        assert len(creds.as_credentials) == 2 and len(creds.as_intermediate_credentials) == 2
        assert creds.as_intermediate_credentials[0].signer_fingerprint == creds.as_credentials[0].fingerprint()
        # a client registering now chains to the new AS credential; the homeserver still serves it
        alice = await ClientSession.register(http, A, clock=d.clock)
        assert alice.credential.signer_fingerprint == creds.as_intermediate_credentials[0].fingerprint()
        await alice.update_profile(b"p")
        hs = d["hs1"].hs
        from phoenix_ref.federation.outbound_crypto import OutboundKeys
        newest = OutboundKeys(hs.keystore.qs_outbound_secrets[:1]).current_id
        assert hs.qs_store.outbound._sealer().current_id == newest   # sealing with the new outbound secret
        code, listing = await admin(d, "keys")
        assert "qs_signing-2: current" in listing and "qs_signing-1: older, still published" in listing


@spec(MANAGE, "MUST")
@spec("spec/authentication_service.md#get-as-credentials", "informative")
async def test_revoking_the_intermediate_beside_a_running_homeserver(hs1):
    d = hs1
    async with d.client() as http:
        alice = await ClientSession.register(http, A, clock=d.clock)
        old = alice.credential.signer_fingerprint
        code, said = await admin(d, "revoke-intermediate")
        assert code == 0 and said == f"revoked intermediate {old.hex()} and issued a new current intermediate\n"

        async def revoked_published() -> bool:
            """The revocation and the new intermediate are both published (the
            running homeserver takes them up in one look, but two files)."""
            creds = decode(AsCredentialsResponse, await _get(http, d, "as", "/phoenix/v1/as_credentials"))
            usable = creds.signing_intermediate(d.clock.now_ms())
            return old in creds.revoked_certs and usable is not None and usable.fingerprint() != old

        await _eventually(revoked_published)
        # alice's credential was signed by the revoked intermediate: the AS no longer accepts it
        async def alice_refused() -> bool:
            try:
                await alice.fetch_tokens(A, 1)
            except ProtocolError as e:
                return e.status == 401
            return False
        await _eventually(alice_refused)
        # a new registration gets a credential from the new intermediate and works
        bob = await ClientSession.register(http, A, clock=d.clock)
        assert bob.credential.signer_fingerprint != old
        await bob.update_profile(b"bob")
        code, listing = await admin(d, "keys")
        assert f"fingerprint {old.hex()}" in listing and "REVOKED" in listing
