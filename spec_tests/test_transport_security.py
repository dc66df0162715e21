"""What every connection to and from a homeserver must be, tried on real sockets.

* ``threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication``:
  every action over the network goes through a unilaterally authenticated
  TLS 1.3 connection to the home domain. A client limited to TLS 1.2 gets no
  connection; the federation client refuses a peer that offers only TLS 1.2.
  A scan with sslyze finds TLS 1.3 as the only version accepted.
* ``threat_model.md#availability``: one request must not take a
  homeserver down — a large HTTP/2 body sent to a path the server answers
  before reading it (unknown path, wrong method, unknown host, too large).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import trio

from phoenix_ref.shared import REPO_ROOT
from phoenix_ref.federation.client import HttpsFetcher, OldTls, client_ssl_context
from phoenix_ref.spec_plugin import spec
from phoenix_ref.testing import Deployment

pytestmark = pytest.mark.needs_control("phoenix_ref homeservers on sockets of its own (TLS versions, HTTP/2 bodies after the answer, its federation client)")

TLS13 = "threat_model/stride/security_requirements.md#basic-confidentiality-and-authentication"
AVAILABILITY = "threat_model.md#availability"


async def _handshake(port: int, host: str, ctx: ssl.SSLContext) -> str:
    """TLS handshake with ``127.0.0.1:port`` naming ``host``; the negotiated version."""
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname=host)
    try:
        await stream.do_handshake()
        return stream.version()
    finally:
        await stream.aclose()


@spec(TLS13, "MUST")
async def test_listener_speaks_tls13_and_refuses_tls12():
    with trio.fail_after(60):
        async with Deployment("sockets", ["hs1"]) as d:
            node = d["hs1"]
            ca = d.tmp / "ca" / "ca.pem"
            for host in (f"as.{node.domain}", f"qs.{node.domain}", f"ds.{node.domain}", node.domain):
                assert await _handshake(node.port, host, client_ssl_context(ca)) == "TLSv1.3"
                old = client_ssl_context(ca)
                old.minimum_version = ssl.TLSVersion.TLSv1_2
                old.maximum_version = ssl.TLSVersion.TLSv1_2
                with pytest.raises(trio.BrokenResourceError) as info:
                    await _handshake(node.port, host, old)
                assert isinstance(info.value.__cause__, ssl.SSLError)   # no TLS session
            async with d.client() as http:   # TLS 1.3 works as before
                assert (await http.get(node.url("qs", "/phoenix/v1/qs_verifying_key"))).status_code == 200


class Tls12OnlyServer:
    """A TLS server that offers only TLS 1.2, with a valid certificate for the
    name the client asks for. Blocking sockets in a thread, so that OpenSSL
    writes its ``protocol_version`` alert to the wire as a real server does."""

    def __init__(self, cert: Path, key: Path):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.outcomes: list[str] = []
        self.thread = threading.Thread(target=self._serve_one, daemon=True)
        self.thread.start()

    def _serve_one(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.outcomes.append(tls.version())
            except (ssl.SSLError, OSError) as e:
                self.outcomes.append(type(e).__name__)
        self.sock.close()


@spec(TLS13, "MUST")
async def test_federation_client_refuses_a_tls12_only_peer():
    with trio.fail_after(60):
        async with Deployment("sockets", ["hs1"]) as d:
            node = d["hs1"]
            peer = Tls12OnlyServer(node.dir / "cert.pem", node.dir / "key.pem")
            fetcher = HttpsFetcher(client_ssl_context(d.tmp / "ca" / "ca.pem"),
                                   resolve={f"qs.{node.domain}": f"127.0.0.1:{peer.port}"})
            try:
                with pytest.raises(OldTls):
                    await fetcher.request("GET", f"https://qs.{node.domain}/phoenix/v1/qs_verifying_key",
                                          domain=node.domain)
            finally:
                await fetcher.aclose()
            await trio.to_thread.run_sync(peer.thread.join)
            assert peer.outcomes == ["SSLError"]    # no TLS session came about


@spec(AVAILABILITY, "SHOULD")
@pytest.mark.parametrize("host_service,path,method", [
    ("as", "/phoenix/v1/nope", "POST"),                    # 404 unknown endpoint
    ("qs", "/phoenix/v1/qs_verifying_key", "POST"),        # 405 (a GET endpoint)
    ("unknown", "/phoenix/v1/dequeue_messages", "POST"),   # 404 unknown host
    ("qs", "/phoenix/v1/dequeue_messages", "POST"),        # 413 (larger than max_body_bytes)
])
async def test_an_http2_body_after_the_answer_does_not_stop_the_server(host_service, path, method):
    """A 200 KB HTTP/2 body to a path the server answers before reading the
    body; then ordinary requests still succeed (hypercorn 0.18 ended its
    serve loop here: docs/decisions.md, "HTTP server")."""
    from phoenix_ref.config import Limits
    with trio.fail_after(60):
        async with Deployment("sockets", ["hs1"], limits=Limits(max_body_bytes=100_000)) as d:
            node = d["hs1"]
            body = bytes(200_000)
            headers = {"content-type": "application/phoenix"}
            if host_service == "unknown":   # the TLS name is ours, the :authority is not
                host_service, headers["host"] = "qs", "unknown.example"
            async with d.client() as http:
                for _ in range(3):
                    try:
                        resp = await http.request(method, node.url(host_service, path), content=body,
                                                  headers=headers)
                        assert resp.status_code in (404, 405, 413)
                        assert resp.http_version == "HTTP/2"
                    except httpx.RemoteProtocolError:
                        pass     # the server may reset the stream instead of reading the body
            async with d.client() as http:   # a new connection: the server is still there
                resp = await http.get(node.url("qs", "/phoenix/v1/qs_verifying_key"))
                assert resp.status_code == 200 and resp.http_version == "HTTP/2"


# --- a scan from outside, with sslyze -------------------------------------------------------------

#: sslyze pins an older ``cryptography`` than phoenix_ref, so it lives in a
#: virtualenv of its own: ``PHOENIX_SSLYZE`` names its executable, else the
#: suite installs it once into ``.cache/sslyze-venv`` (PyPI needed then).
SSLYZE_VERSION = "6.3.1"
PROTOCOLS = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3")


def sslyze_executable() -> Path:
    given = os.environ.get("PHOENIX_SSLYZE")
    if given:
        return Path(given)
    venv = REPO_ROOT / ".cache" / "sslyze-venv"
    exe = venv / "bin" / "sslyze"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"sslyze=={SSLYZE_VERSION}"], check=True)
    return exe


@spec(TLS13, "MUST")
async def test_sslyze_finds_tls13_as_the_only_accepted_version():
    exe = await trio.to_thread.run_sync(sslyze_executable)
    with trio.fail_after(180):
        async with Deployment("sockets", ["hs1"]) as d:
            node = d["hs1"]
            target = f"qs.{node.domain}:{node.port}{{127.0.0.1}}"
            flags = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"]
            done = await trio.run_process([str(exe), *flags, "--mozilla_config", "disable",
                                           "--json_out", "-", target], capture_stdout=True, check=False)
    report = json.loads(done.stdout)
    scan = report["server_scan_results"][0]
    assert scan["scan_status"] == "COMPLETED", scan
    accepted = {p: scan["scan_result"][f"{p}_cipher_suites"]["result"]["accepted_cipher_suites"]
                for p in PROTOCOLS}
    assert accepted["tls_1_3"], "no TLS 1.3 cipher suite accepted"
    assert {p for p, suites in accepted.items() if suites} == {"tls_1_3"}
