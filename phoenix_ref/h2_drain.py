"""HTTP/2 connections that end after their request limit without dropping answers.

anycorn ends an HTTP/2 connection after ``keep_alive_max_requests`` requests
(``[limits] max_requests_per_connection``, 1000): hypercorn's guard against
clients that open and reset streams without end (HTTP/2 "Rapid Reset"). It
does so by sending a GOAWAY the moment the request over the limit arrives.
python-h2 moves a connection that has sent a GOAWAY to its closed state, in
which it sends nothing more, so the answers of every request still in flight
on that connection are never sent, though the homeserver has handled them.
The GOAWAY names those streams as processed, so a client may not repeat them:
a send or a commit the DS accepted is reported to its client as failed. With
ten requests in flight, a quarter of the requests around each limit failed
that way (docs/decisions.md, "HTTP/2 connections drain at their request
limit").

:class:`DrainingH2Protocol` ends such a connection the way RFC 9113 §6.8
describes a graceful shutdown, within what python-h2 allows:

* the connection takes exactly ``keep_alive_max_requests`` requests, as an
  HTTP/1.1 connection does;
* streams the client opens after that are not handed to the app: they are
  left unanswered;
* once the last accepted request has its answer, the GOAWAY goes out naming
  the last accepted stream as the last one processed. The streams above it
  were not processed, and the client sends them again on a new connection
  (httpcore does so on its own);
* a request that has no answer after ``graceful_timeout`` seconds (the time
  anycorn gives open requests at shutdown) no longer holds the connection:
  the GOAWAY goes out then, as anycorn would have sent it;
* after the GOAWAY, what the client still sends is read and dropped, where
  anycorn would hand it to python-h2, which refuses any frame after a GOAWAY
  and so makes anycorn cut the TCP connection: that broke the writes of
  requests the client had sent before it read the GOAWAY, which it would
  otherwise send again on a new connection. The connection then closes when
  the client closes it, or after ``keep_alive_timeout`` like any idle one.

anycorn builds its protocol objects inside ``anycorn.protocol`` and offers
no setting to choose the class, so :func:`install` replaces the name there;
:func:`phoenix_ref.cli.serve` calls it before serving. This is the only place
in the project that changes a dependency's behaviour: it extends five of
``H2Protocol``'s methods (each calls anycorn's own first, but for
``_create_stream`` while draining) and adds two.
"""

from __future__ import annotations

import anyio
import h2.exceptions
from anycorn.events import Closed, RawData, Updated
from anycorn.protocol.h2 import H2Protocol


class DrainingH2Protocol(H2Protocol):
    """anycorn's HTTP/2 protocol, ending at its request limit without dropping answers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False          # the request limit is reached: no new stream is taken
        self.last_accepted = 0         # the id of the last stream handed to the app
        self._drained = anyio.Event()  # every accepted stream is closed, or the connection is
        self._goaway_sent = False

    async def _create_stream(self, request) -> None:
        if self.draining:
            # Not handed to the app and not counted: anycorn's own GOAWAY
            # (sent when the count goes over the limit) never fires, and the
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

    async def handle(self, event) -> None:
        if self._goaway_sent and isinstance(event, RawData):
            return
        await super().handle(event)
        if isinstance(event, Closed):
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
    """Make anycorn serve HTTP/2 with :class:`DrainingH2Protocol` (idempotent)."""
    import anycorn.protocol
    anycorn.protocol.H2Protocol = DrainingH2Protocol
