"""One client's HTTP/2 frames do not stop a homeserver (``threat_model.md#availability``).

Black-box, over TLS: phoenix_ref on sockets, or the target in target mode
(``pytest --phoenix-target FILE``). The frames are written with python-h2 on
a TLS connection that negotiated ``h2``, so the suite can send what an
ordinary HTTP client never would. Whatever the homeserver does with that
connection (answers, refuses, closes it), it must still serve everybody
else afterwards.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import trio

from phoenix_ref.spec_plugin import deployment_modes, spec
from phoenix_ref.testing import TARGET, Deployment

AVAILABILITY = "threat_model.md#availability"


def _over(request) -> str:
    return "target" if deployment_modes(request.config) == (TARGET,) else "sockets"


async def _still_serving(d) -> None:
    async with d.client() as http:
        resp = await http.get(d["hs1"].url("", "/.well-known/phoenix"))
    assert resp.status_code == 200


async def _h2(stream) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    return conn


@spec(AVAILABILITY, "SHOULD")
async def test_priority_frames_for_streams_never_opened(request):
    """2000 PRIORITY frames for streams the client never opens (RFC 9113
    §5.3.2 deprecates the scheme; a server may ignore them), then a request
    on the same connection: answered, or the connection closed; and the
    homeserver serves a new connection. (anycorn 0.20.1 left alone ended its
    whole process at the 1001st frame.)"""
    with trio.fail_after(60):
        async with Deployment(_over(request), ["hs1"]) as d:
            domain = d["hs1"].domain
            async with d.tls_stream("hs1", "h2") as stream:
                conn = await _h2(stream)
                for i in range(2000):
                    conn.prioritize(2 * i + 1, weight=16)
                conn.send_headers(4001, [(":method", "GET"), (":path", "/.well-known/phoenix"),
                                         (":scheme", "https"), (":authority", domain)], end_stream=True)
                try:
                    await stream.send_all(conn.data_to_send())
                    with trio.fail_after(20):
                        while True:
                            data = await stream.receive_some(65536)
                            if not data:
                                break                       # the homeserver closed this connection
                            events = conn.receive_data(data)
                            await stream.send_all(conn.data_to_send())
                            if any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset,
                                                  h2.events.ConnectionTerminated)) for e in events):
                                break
                except trio.BrokenResourceError:
                    pass                                    # closed while we wrote: also its right
            await _still_serving(d)
