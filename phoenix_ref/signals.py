"""Stopping on Ctrl-C or SIGTERM at a point the program chooses.

Left to Trio, a SIGINT becomes a ``KeyboardInterrupt`` raised wherever code
happens to be running. Inside a request handler, the HTTP server takes it
for that request's failure, logs "Error in ASGI Framework" and serves on:
``phoenix-ref serve`` then did not stop (seen in CI, under load, when the
signal came while the last request's answer was going out). Receiving the
signals instead, and then stopping through the program's own mechanism —
anycorn's shutdown trigger for ``serve``, a cancel scope for ``phoenix-ref
client listen`` — ends the program the same way wherever the signal lands.
"""

from __future__ import annotations

import signal

import trio

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_stop_signal() -> None:
    """Return at the first SIGINT or SIGTERM this process receives from now on
    (call it in the main thread, inside ``trio.run``)."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for _ in signals:
            return


async def cancel_on_stop_signal(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` at the first SIGINT or SIGTERM (a task to start
    beside the work ``scope`` covers)."""
    await until_stop_signal()
    scope.cancel()
