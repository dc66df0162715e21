"""The thin HTTP layer: error answers, strict body decoding, the Privacy Pass plug-in point."""

from typing import Annotated

import httpx
import pytest

from phoenix_ref.cli import generate_config
from phoenix_ref.codec import U8, WireType, decode, struct
from phoenix_ref.errors import ErrorResponse, Malformed, RateLimited, TooLarge, Unauthorized
from phoenix_ref.homeserver import Homeserver
from phoenix_ref.http import MEDIA_TYPE, decode_body, error_response


@struct
class Pair:
    a: U8
    b: U8


class _Exploding(WireType):
    """A wire type whose reader fails with something other than DecodeError."""
    name = "exploding"

    def read(self, r):
        raise ValueError("a validator refused the value")

    def write(self, value, out):
        out.append(value)


@struct
class Odd:
    x: Annotated[int, _Exploding()]


def test_error_response_carries_status_code_and_retry_after():
    resp = error_response(RateLimited("slow down", retry_after=7))
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.content_type == MEDIA_TYPE
    assert decode(ErrorResponse, resp.body) == ErrorResponse("rate_limited", "slow down")


def test_decode_body_is_strict_and_never_leaks_other_exceptions():
    assert decode_body(Pair, b"\x01\x02", 10) == Pair(1, 2)
    with pytest.raises(Malformed):
        decode_body(Pair, b"\x01\x02\x03", 10)             # trailing byte
    with pytest.raises(TooLarge):
        decode_body(Pair, b"\x01" * 11, 10)
    with pytest.raises(Malformed, match="unexpected|no request body"):
        decode_body(None, b"x", 10)
    with pytest.raises(Malformed, match="ValueError"):
        decode_body(Odd, b"\x00", 10)                       # any decoding failure is a 400


async def test_privacy_pass_plug_in_is_called_for_marked_rows_only(tmp_path):
    hs = Homeserver(generate_config(tmp_path / "a", "a.example"))
    seen = []

    async def check(endpoint, call):
        seen.append(endpoint.name)
        if "authorization" not in call.headers:
            raise Unauthorized("a Privacy Pass token is required", code="privacy_pass_required")

    hs.privacy_pass = check
    async with hs.app.running():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hs.asgi)) as c:
            refused = await c.get("https://qs.a.example/phoenix/v1/queue_config_encryption_key")
            ok = await c.get("https://qs.a.example/phoenix/v1/queue_config_encryption_key",
                             headers={"authorization": "PrivateToken token=abc"})
            free = await c.get("https://qs.a.example/phoenix/v1/qs_verifying_key")
    assert refused.status_code == 401
    assert decode(ErrorResponse, refused.content).code == "privacy_pass_required"
    assert ok.status_code == 200 and free.status_code == 200
    assert seen == ["queue_config_encryption_key", "queue_config_encryption_key"]
