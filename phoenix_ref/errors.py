"""Protocol errors: every refusal carries an HTTP status and a stable code.

Cores raise these; the HTTP layer turns them into a response whose body is an
``ErrorResponse`` (docs/wire.md) — never a 5xx for bad input (GUIDE §2).
"""

from __future__ import annotations

from .codec import String, struct


class ProtocolError(Exception):
    """Base class. ``status`` is the HTTP status, ``code`` a stable token."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


def describe(err: BaseException) -> str:
    """``Type: message`` of an error, or of each error an exception group
    holds (a nursery wraps even a lone one), joined by ``; ``: for logs,
    events and one-line reports."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(e) for e in err.exceptions)
    return f"{type(err).__name__}: {err}"


class Malformed(ProtocolError):
    status, code = 400, "malformed"


class Unauthorized(ProtocolError):
    status, code = 401, "unauthorized"


class Forbidden(ProtocolError):
    status, code = 403, "forbidden"


class NotFound(ProtocolError):
    status, code = 404, "not_found"


class MethodNotAllowed(ProtocolError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(ProtocolError):
    status, code = 408, "request_timeout"


class Conflict(ProtocolError):
    status, code = 409, "conflict"


class Gone(ProtocolError):
    status, code = 410, "gone"


class TooLarge(ProtocolError):
    status, code = 413, "too_large"


class RateLimited(ProtocolError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code=code, retry_after=retry_after)


class InternalError(ProtocolError):
    """What a client is told of a bug (the details go to the log only)."""
    status, code = 500, "internal_error"


class UpstreamError(ProtocolError):
    """A remote homeserver could not be reached or answered badly (502)."""
    status, code = 502, "upstream_error"


@struct
class ErrorResponse:
    """Body of every error answer: a stable code and a human message."""
    code: String
    message: String
