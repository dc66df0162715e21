"""What ``phoenix-ref serve`` writes to stderr: its log, text or JSON lines.

Two kinds of record go through :mod:`logging`:

* the **request records** of :class:`~phoenix_ref.http.RequestLog` (logger
  :data:`REQUEST_LOGGER`, level INFO): one per request served, per
  federation request sent and per outbound delivery attempt, the entry
  itself in the record's ``request`` attribute;
* everything else the homeserver and its libraries log (start-up, retries,
  dead letters, bugs).

``--log-format json`` (:class:`JsonFormatter`) writes a request record as
its entry — the same object as a line of the request log file (``t``,
``hs``, ``dir``, ``method``, ``host``, ``path``, ``status``, ``ms`` …) — and
any other record as ``{"t", "hs", "level", "logger", "msg"}`` plus ``exc``
(the traceback) when it has one. ``text`` (the default) writes the usual
``time logger level message`` lines, a request record's message being its
entry as ``key=value`` pairs.

What the request records hold is listed in :class:`~phoenix_ref.http.RequestLog`:
no bodies, tokens, addresses, client or user ids.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import IO

__all__ = ["REQUEST_LOGGER", "FORMATS", "JsonFormatter", "configure"]

#: The logger of request records (``phoenix_ref.http.RequestLog``).
REQUEST_LOGGER = "phoenix_ref.requests"
#: Libraries whose INFO records repeat a request record: httpx logs one
#: line per request it sends ("HTTP Request: POST …"), which the request
#: log's ``out`` record already holds. :func:`configure` lets only their
#: warnings through, which saves a second formatted line and write per
#: federation request (issue 17).
QUIET_BELOW_WARNING = ("httpx",)
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module docstring); ``domain`` is the
    homeserver's, for records that are not request records."""

    def __init__(self, domain: str = ""):
        super().__init__()
        self.domain = domain

    def format(self, record: logging.LogRecord) -> str:
        entry = getattr(record, "request", None)
        if isinstance(entry, dict):
            return json.dumps(entry, separators=(",", ":"), default=str)
        out = {"t": round(record.created, 4), "hs": self.domain, "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def configure(fmt: str = "text", *, level: int = logging.INFO, domain: str = "",
              stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record at ``level`` and above to ``stream`` (stderr) in
    format ``fmt`` (``text`` or ``json``); replaces the root logger's
    handlers; the loggers of :data:`QUIET_BELOW_WARNING` pass warnings and
    above only. Returns the handler.

    What Python would otherwise print to stderr by itself goes through the
    log too, so that every line is in the chosen format (a JSON reader
    never meets a stray line): warnings (logger ``py.warnings``), exceptions
    no one could catch (an error in a ``__del__``, an unclosed coroutine;
    logger ``phoenix_ref.unraisable``) and exceptions that end a thread
    (logger ``phoenix_ref.thread``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(domain))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_BELOW_WARNING:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception
    return handler


def _log_unraisable(u: "sys.UnraisableHookArgs") -> None:
    exc_info = (u.exc_type, u.exc_value, u.exc_traceback) if u.exc_value is not None else None
    logging.getLogger("phoenix_ref.unraisable").error(
        "%s: %r", u.err_msg or "Exception ignored in", u.object, exc_info=exc_info)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("phoenix_ref.thread").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
