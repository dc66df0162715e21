"""What the homeserver changes in anycorn's HTTP/2 server, and why.

anycorn builds its HTTP/2 protocol objects inside ``anycorn.protocol`` and
offers no setting to choose their class, so :func:`install` replaces the name
there with :class:`PhoenixH2Protocol`; :func:`phoenix_ref.cli.serve` calls it
before serving. This is the only place in the project that changes a
dependency's behaviour (docs/decisions.md, "HTTP/2 server: three changes to
anycorn"). Three changes, each below with the failure it removes:

**1. A connection drains at its request limit.** anycorn ends an HTTP/2
connection after ``keep_alive_max_requests`` requests (``[limits]
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

**2. PRIORITY signals are ignored; streams with data take turns.** anycorn
kept RFC 7540's priority tree, and a PRIORITY frame for a stream not yet
opened inserted a node. The tree refuses its 1001st node with an exception
that nothing caught: one client sending 1001 PRIORITY frames (a few KB on one
connection, no request) ended the whole server. RFC 9113 §5.3.2 deprecates
that scheme and lets a server ignore it, so PRIORITY frames are ignored and
:class:`TakeTurns` schedules the streams that have data to send, one after
the other. This also saves CPU: with 50 requests in flight on one client
connection, the tree's scheduling was 6-9 % of a homeserver's CPU in
``benchmarks/delivery_bench.py``.

**3. A failure while handling one connection ends that connection only.**
An exception that escapes anycorn's handling of a connection's input went up
through its connection task into the server's task group and ended the
server, whatever its cause (change 2 is one such cause). Now it is logged
with its traceback, as an error of the server, and that connection is
closed; the others go on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import anyio
import h2.exceptions
import priority
from anycorn.events import Closed, RawData, Updated
from anycorn.protocol.h2 import H2Protocol

log = logging.getLogger("phoenix_ref.h2_server")


class TakeTurns:
    """The streams of a connection that have data to send, served one after
    the other (change 2). It answers the calls anycorn's send task makes on
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
    """anycorn's HTTP/2 protocol with the three changes of this module."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.priority = TakeTurns()
        self.draining = False          # the request limit is reached: no new stream is taken
        self.last_accepted = 0         # the id of the last stream handed to the app
        self._drained = anyio.Event()  # every accepted stream is done, or the connection is closed
        self._goaway_sent = False

    # --- 3: one connection's failure ends that connection -----------------------------------

    async def handle(self, event) -> None:
        if self._goaway_sent and isinstance(event, RawData):
            return                      # 1: after our GOAWAY, dropped
        try:
            await super().handle(event)
        except Exception:   # noqa: BLE001 - the server's own error, logged; the other connections go on
            log.exception("HTTP/2 connection closed after an error in the server while handling it")
            if not self.closed:
                await self.send(Closed())
        if isinstance(event, Closed):
            self._drained.set()

    # --- 2: PRIORITY frames ignored -------------------------------------------------------------

    async def _priority_updated(self, event) -> None:
        return

    # --- 1: drain at the request limit ----------------------------------------------------------

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


def install() -> None:
    """Make anycorn serve HTTP/2 with :class:`PhoenixH2Protocol` (idempotent)."""
    import anycorn.protocol
    anycorn.protocol.H2Protocol = PhoenixH2Protocol
