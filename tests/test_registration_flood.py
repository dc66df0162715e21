"""A flood of unauthenticated registration starts from one network source
cannot lock everybody else out (docs/decisions.md, "Pending registrations per
source"), seen through the HTTP app with requests from several addresses."""

from __future__ import annotations

import httpx

from phoenix_ref.cli import generate_config
from phoenix_ref.client.as_client import AsClient, Registration
from phoenix_ref.config import Limits
from phoenix_ref.errors import RateLimited
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.ids import Fqdn
from phoenix_ref.spec_plugin import spec

A = Fqdn("a.example")


def _client_from(hs: Homeserver, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi, client=(address, 40000)),
                             trust_env=False)


async def _start(as_client: AsClient, fingerprint: bytes, now_ms: int):
    _, init = Registration.start(A, b"password", fingerprint, now_ms, validity_ms=30 * 86_400_000)
    return await as_client.call(A, "init_user_registration", init)


@spec("spec/authentication_service.md#initialize-user-registration", "informative")
async def test_a_flooding_source_is_limited_and_others_still_register(tmp_path):
    limit = 5
    hs = Homeserver(generate_config(tmp_path / "a", "a.example", limits=Limits(registrations_per_source=limit)))
    async with hs.app.running():
        async with _client_from(hs, "198.51.100.7") as flood_http, \
                _client_from(hs, "2001:db8:1:2::7") as v6_http, \
                _client_from(hs, "2001:db8:1:2::8") as v6_neighbour_http, \
                _client_from(hs, "203.0.113.5") as honest_http:
            flood, honest = AsClient(flood_http), AsClient(honest_http)
            now = hs.clock.now_ms()
            fingerprint = (await honest.as_credentials(A)).signing_intermediate(now).fingerprint()
            for _ in range(limit):
                await _start(flood, fingerprint, now)
            for _ in range(3):
                try:
                    await _start(flood, fingerprint, now)
                    raise AssertionError("the flooding source was not limited")
                except RateLimited as e:
                    assert e.code == "rate_limited" and 0 < e.retry_after <= 300
            # everybody else still registers
            response = await _start(honest, fingerprint, now)
            assert response.opaque_registration_response
            # one IPv6 host's /64 is one source
            for _ in range(limit):
                await _start(AsClient(v6_http), fingerprint, now)
            try:
                await _start(AsClient(v6_neighbour_http), fingerprint, now)
                raise AssertionError("the same /64 was not limited")
            except RateLimited:
                pass
