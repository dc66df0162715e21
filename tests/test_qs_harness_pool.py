"""The in-process harness models a keep-alive pool: one TLS handshake per
connection, a new one after the homeserver restarts (``phoenix_ref.testing``)."""

import ssl

import httpx
import pytest

import phoenix_ref.testing as testing
from phoenix_ref.testing import Deployment

PATH = "/phoenix/v1/qs_verifying_key"


async def test_handshake_once_per_connection_and_again_after_restart(monkeypatch):
    handshakes = []
    real = testing.tls_handshake

    def counting(client_ctx, server_ctx, hostname):
        handshakes.append(hostname)
        return real(client_ctx, server_ctx, hostname)

    monkeypatch.setattr(testing, "tls_handshake", counting)
    async with Deployment("in_process", ("hs1",)) as d:
        url = d["hs1"].url("qs", PATH)
        async with d.client() as client:
            for _ in range(3):
                assert (await client.get(url)).status_code == 200
            assert handshakes == ["qs.a.example"]
            await d.restart("hs1")
            assert (await client.get(url)).status_code == 200
            assert len(handshakes) == 2
            await d.set_down("hs1")
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
            await d.set_up("hs1")
            d["hs1"].server_ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no certificate
            with pytest.raises(httpx.ConnectError):
                await client.get(url)   # the pooled connection is gone: the new handshake fails
            assert len(handshakes) == 3
