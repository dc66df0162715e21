"""What the homeserver changes in anycorn, its HTTP server, and why.

anycorn builds its connection and HTTP/2 protocol objects by module-level
names (``anycorn.tcp_server.TCPServer``, ``anycorn.protocol.H2Protocol``) and
offers no setting to choose their classes, so :func:`install` replaces those
names with the subclasses below; :func:`phoenix_ref.cli.serve` calls it
before serving. This is the only place in the project that changes a
dependency's behaviour, and the only one allowed to reach into a
dependency's internals (``tests/test_public_apis.py``); it refuses any
anycorn but the version it was written for (docs/decisions.md, "HTTP
server: what the homeserver changes in anycorn"). Four changes, each below
with the failure it removes:

**1. An error while serving one connection ends that connection only.** An
exception that escaped anycorn's handling of a connection (its input, or the
task that writes HTTP/2 frames) went up through the connection's task into
the server's task group and ended the server. A client could cause one: an
HTTP/1.1 request asking to upgrade to h2c followed by the client's close made
a write hit a TLS stream anycorn had already shut (``ssl.SSLError:
PROTOCOL_IS_SHUTDOWN``; found by sending random bytes and random HTTP/2
frames on a few hundred connections; change 4 now keeps that path shut),
and change 3 below describes another.
:class:`PhoenixTCPServer` logs such an error with its traceback, as an error
of the server, and that connection ends; the others go on.

**2. An HTTP/2 connection drains at its request limit.** anycorn ends an
HTTP/2 connection after ``keep_alive_max_requests`` requests (``[limits]
max_requests_per_connection``, 1000), its guard against clients that open
and reset streams without end ("Rapid Reset"). It sent its GOAWAY the moment
the request over the limit arrived, and python-h2 sends nothing more on a
connection that has sent a GOAWAY: the answers of every request in flight
were never sent, though the homeserver had handled them, and the GOAWAY named
them as processed, so no client may repeat them. A send the DS accepted was
reported to its client as failed. Now, within what python-h2 allows (RFC 9113
§6.8 describes the graceful way):

* the connection takes exactly ``keep_alive_max_requests`` requests, as an
  HTTP/1.1 connection does; streams the client opens after that are not
  handed to the app;
* once every accepted request's answer has been flushed, the GOAWAY goes
  out naming the last accepted stream, so the client sends the later ones
  again on a new connection (httpcore does so on its own);
* a request still unanswered after ``graceful_timeout`` seconds (the time
  anycorn gives open requests at shutdown) no longer holds the connection:
  the GOAWAY goes out then, as anycorn would have sent it;
* what the client sends after the GOAWAY is read and dropped. python-h2
  refuses any frame after a GOAWAY, which made anycorn cut the TCP
  connection under the requests the client had sent before it read the
  GOAWAY. The connection closes when the client closes it, or after
  ``keep_alive_timeout`` like any idle one.

**3. HTTP/2 PRIORITY signals are ignored; streams with data take turns.**
anycorn kept RFC 7540's priority tree, and a PRIORITY frame for a stream not
yet opened inserted a node. The tree refuses its 1001st node with an
exception that nothing caught: one client sending 1001 PRIORITY frames (a few
KB on one connection, no request) ended the whole server. RFC 9113 §5.3.2
deprecates that scheme and lets a server ignore it, so PRIORITY frames are
ignored and :class:`TakeTurns` schedules the streams that have data to send,
one after the other. This also saves CPU: with 50 requests in flight on one
client connection, the tree's scheduling was 6-9 % of a homeserver's CPU in
``benchmarks/delivery_bench.py``.

**4. No h2c upgrade.** A request with ``Upgrade: h2c`` made anycorn answer
101 and switch the connection to HTTP/2, on a TLS connection too, although
h2c names HTTP/2 over cleartext TCP, which RFC 9113 §3.1 deprecates; over
TLS, HTTP/2 is chosen by ALPN only. It was the path of change 1's
SSLError: with bytes after such a request, each connection logged two
errors with tracebacks, so a scanner could fill the log. RFC 9110 §7.8 lets
a server ignore an Upgrade, and :class:`PhoenixH11Protocol` does so for
every upgrade but the websocket (which anycorn handles elsewhere): the
request is answered over HTTP/1.1.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections import OrderedDict

import anyio
import h2.exceptions
import priority
from anycorn.events import Closed, RawData, Updated
from anycorn.protocol.h11 import H11Protocol
from anycorn.protocol.h2 import H2Protocol
from anycorn.tcp_server import TCPServer

log = logging.getLogger("phoenix_ref.anycorn_changes")


class PhoenixTCPServer(TCPServer):
    """anycorn's server of one connection, whose errors end that connection
    only (change 1)."""

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as errors:   # the server's own error, logged; cancellation goes on up
            log.error("connection closed after an error in the server while serving it", exc_info=errors)


class TakeTurns:
    """The streams of a connection that have data to send, served one after
    the other (change 3). It answers the calls anycorn's send task makes on
    its priority tree, and raises the same errors."""

    def __init__(self) -> None:
        self._streams: set[int] = set()
        self._ready: OrderedDict[int, None] = OrderedDict()   # in turn order

    def insert_stream(self, stream_id: int) -> None:
        if stream_id in self._streams:
            raise priority.DuplicateStreamError(stream_id)
        self._streams.add(stream_id)
        self._ready[stream_id] = None

    def block(self, stream_id: int) -> None:
        self._known(stream_id)
        self._ready.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        self._known(stream_id)
        self._ready[stream_id] = None          # a stream already waiting keeps its turn

    def remove_stream(self, stream_id: int) -> None:
        self._known(stream_id)
        self._streams.discard(stream_id)
        self._ready.pop(stream_id, None)

    def __iter__(self) -> "TakeTurns":
        return self

    def __next__(self) -> int:
        if not self._ready:
            raise priority.DeadlockError("no stream has data to send")
        stream_id = next(iter(self._ready))
        self._ready.move_to_end(stream_id)
        return stream_id

    def _known(self, stream_id: int) -> None:
        if stream_id not in self._streams:
            raise priority.MissingStreamError(stream_id)


class PhoenixH2Protocol(H2Protocol):
    """anycorn's HTTP/2 protocol with changes 2 and 3."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.priority = TakeTurns()
        self.draining = False          # the request limit is reached: no new stream is taken
        self.last_accepted = 0         # the id of the last stream handed to the app
        self._drained = anyio.Event()  # every accepted stream is done, or the connection is closed
        self._goaway_sent = False

    async def handle(self, event) -> None:
        if self._goaway_sent and isinstance(event, RawData):
            return                      # 2: after our GOAWAY, dropped
        await super().handle(event)
        if isinstance(event, Closed):
            self._drained.set()

    # --- 3: PRIORITY frames ignored -------------------------------------------------------------

    async def _priority_updated(self, event) -> None:
        return

    # --- 2: drain at the request limit ----------------------------------------------------------

    async def _create_stream(self, request) -> None:
        if self.draining:
            # Not handed to the app and not counted, so anycorn's own GOAWAY
            # (sent when the count goes over the limit) never fires; the
            # GOAWAY below tells the client this stream was not processed.
            return
        await super()._create_stream(request)
        self.last_accepted = request.stream_id
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            self.draining = True
            self.task_group.spawn(self._goaway_when_drained)

    # A stream is done when the app has finished it (it leaves self.streams)
    # and its answer is on the wire: its send buffer goes only once the
    # answer's last frame has been flushed, which can be after the app has
    # finished. A GOAWAY sent in between would cut that last frame off.

    async def _close_stream(self, stream_id: int) -> None:
        await super()._close_stream(stream_id)
        self._check_drained()

    async def _send_data(self, stream_id: int) -> None:
        await super()._send_data(stream_id)
        self._check_drained()

    async def _discard_send_state(self, stream_id: int) -> None:
        await super()._discard_send_state(stream_id)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.draining and not self.streams and not self.stream_buffers:
            self._drained.set()

    async def _goaway_when_drained(self) -> None:
        with anyio.move_on_after(self.config.graceful_timeout):
            await self._drained.wait()
        if self.closed:
            return
        try:
            self.connection.close_connection(last_stream_id=self.last_accepted)
        except h2.exceptions.ProtocolError:   # the client's own GOAWAY closed it first
            return
        self._goaway_sent = True
        await self._flush()
        await self.send(Updated(idle=True))   # the keep-alive timeout now runs


class PhoenixH11Protocol(H11Protocol):
    """anycorn's HTTP/1.1 protocol with change 4."""

    async def _check_protocol(self, event) -> None:
        if any(name == b"upgrade" for name, _ in event.headers):   # h11 gives names lower-cased
            return   # 4: no h2c; a websocket upgrade is anycorn's next step, not this check's
        await super()._check_protocol(event)


#: the anycorn these changes were written against and tested with (pyproject pins it)
ANYCORN_VERSION = "0.20.1"
_installed_version = importlib.metadata.version


def install() -> None:
    """Make anycorn serve connections with :class:`PhoenixTCPServer`,
    HTTP/1.1 with :class:`PhoenixH11Protocol` and HTTP/2 with
    :class:`PhoenixH2Protocol` (idempotent). Refuses any other
    anycorn than :data:`ANYCORN_VERSION`: the subclasses extend internal
    methods, which a new version may change without notice."""
    found = _installed_version("anycorn")
    if found != ANYCORN_VERSION:
        raise RuntimeError(f"phoenix_ref/anycorn_changes.py was written for anycorn {ANYCORN_VERSION}, "
                           f"and anycorn {found} is installed: check each change against it first")
    import anycorn.protocol
    import anycorn.tcp_server
    anycorn.tcp_server.TCPServer = PhoenixTCPServer
    anycorn.protocol.H11Protocol = PhoenixH11Protocol
    anycorn.protocol.H2Protocol = PhoenixH2Protocol
