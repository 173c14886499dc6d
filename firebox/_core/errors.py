"""From a daemon's error answer, or a failed HTTP exchange, to one firebox exception.

``ERROR_CODES`` is the one table from the daemon's error ``code`` (docs/API.md, "Errors") to an
exception class. The daemon's message says what happened and what to do, so it is the
exception's message, unchanged but for the status and code appended for searching logs.
"""

from __future__ import annotations

import json

import httpx

from firebox.exceptions import (
    AuthenticationException,
    ConflictException,
    FireboxException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    PermissionDeniedException,
    RateLimitException,
    SandboxException,
    SandboxLostException,
    SandboxNotFoundException,
    TimeoutException,
    TooLargeException,
    UnavailableException,
)

ERROR_CODES: dict[str, type[FireboxException]] = {
    "invalid_argument": InvalidArgumentException,
    "unauthenticated": AuthenticationException,
    "forbidden": PermissionDeniedException,
    "not_found": NotFoundException,
    "sandbox_not_found": SandboxNotFoundException,
    "sandbox_lost": SandboxLostException,  # a cluster's gateway: the node holding it is lost
    "conflict": ConflictException,
    "too_large": TooLargeException,
    "rate_limited": RateLimitException,
    "internal": SandboxException,  # a daemon bug; not in docs/API.md, but the daemon sends it
    "sandbox_error": SandboxException,
    "unavailable": UnavailableException,
    "timeout": TimeoutException,
    "no_space": NotEnoughSpaceException,
}

# Used only when the body carries no known code (a proxy's HTML page, an older daemon).
STATUS_CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    410: "sandbox_lost",
    413: "too_large",
    429: "rate_limited",
    500: "internal",
    502: "sandbox_error",
    503: "unavailable",
    504: "timeout",
    507: "no_space",
}


def error_from_response(status: int, body: bytes) -> FireboxException:
    """The exception for an error answer: by its ``code``, else by its status."""
    code, message = _parse_error_body(body)
    cls = ERROR_CODES.get(code or "")
    if cls is None:
        cls = ERROR_CODES.get(STATUS_CODES.get(status, ""), FireboxException)
    if not message:
        text = body[:500].decode("utf-8", "replace").strip()
        message = f"the firebox daemon answered HTTP {status}" + (f": {text}" if text else "")
    return cls(f"{message} (HTTP {status}, {code or 'no error code'})", code=code, status=status)


def _parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    try:
        error = json.loads(body)["error"]
        code, message = error.get("code"), error.get("message")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, None
    if not isinstance(code, str):
        code = None
    if not isinstance(message, str):
        message = None
    return code, message


def error_from_transport(exc: httpx.HTTPError, api_url: str) -> FireboxException:
    """The exception for an exchange that got no answer: timeouts, refused or broken connections."""
    if isinstance(exc, httpx.TimeoutException):
        return TimeoutException(
            f"no answer from the firebox daemon at {api_url} in time ({type(exc).__name__}); "
            "pass a larger request_timeout= (or a larger timeout= for a command), "
            "or check whether the daemon is overloaded"
        )
    if isinstance(exc, httpx.ConnectError):
        return UnavailableException(
            f"cannot connect to the firebox daemon at {api_url} ({exc}); is `firebox serve` "
            "running? Set FIREBOX_URL (or pass api_url=) if it listens elsewhere"
        )
    if isinstance(exc, httpx.TransportError):
        return UnavailableException(
            f"the connection to the firebox daemon at {api_url} failed ({exc}); "
            "the daemon may have restarted: retry, and see its log if this persists"
        )
    return FireboxException(f"talking to the firebox daemon at {api_url} failed: {exc}")
