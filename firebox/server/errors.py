"""Every error the API returns: one exception type, one JSON shape, one table of statuses.

The body is always ``{"error": {"code": ..., "message": ...}}``; messages say what happened and
what to do. Agent error codes (``firebox.protocol.ERROR_CODES``) map onto API codes here.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATUS = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "sandbox_not_found": 404,
    "conflict": 409,
    "sandbox_lost": 410,  # only a cluster's gateway says it (server/gateway/app.py)
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "sandbox_error": 502,
    "unavailable": 503,
    "timeout": 504,
    "no_space": 507,
}

# agent code → API code
AGENT_CODES = {
    "not_found": "not_found",
    "exists": "conflict",
    "not_a_directory": "conflict",
    "is_a_directory": "conflict",
    "permission_denied": "forbidden",
    "invalid": "invalid_argument",
    "no_space": "no_space",
    "busy": "conflict",
    "unavailable": "unavailable",
    "connection_refused": "sandbox_error",
    "internal": "sandbox_error",
    "timeout": "timeout",
    "too_large": "too_large",
}


class StreamAborted(Exception):
    """Ends a streamed answer that has begun: the connection is closed mid-body, so the client
    sees a truncated answer rather than a complete-looking one. Already logged where raised."""


# seconds a client is told to wait before it tries again past a capacity limit (429, 503)
RETRY_AFTER = {"rate_limited": 1, "unavailable": 2}


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in STATUS, code
        self.code = code
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Retry-After on the answers that say "not now" (capacity), as HTTP has it."""
        after = RETRY_AFTER.get(self.code)
        return {"Retry-After": str(after)} if after else {}

    @property
    def status(self) -> int:
        return STATUS[self.code]


def body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    from firebox.server import telemetry  # here: errors.py is below everything that raises

    telemetry.ERRORS.labels(code=exc.code).inc()
    return JSONResponse(body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)


async def validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}")
    msg = "invalid request: " + "; ".join(parts) + " (see GET /openapi.json for the shapes)"
    return JSONResponse(body("invalid_argument", msg), status_code=400)


async def http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "invalid_argument", 413: "too_large"}.get(
        exc.status_code, "invalid_argument"
    )
    message = str(exc.detail)
    if exc.status_code == 404:
        message = "no such endpoint; the API is described at GET /openapi.json"
    elif exc.status_code == 405:
        message = "method not allowed on this endpoint; see GET /openapi.json"
    if exc.status_code >= 500:
        code = "internal"
    return JSONResponse(body(code, message), status_code=exc.status_code, headers=exc.headers)


async def unexpected_handler(_: Request, exc: Exception) -> JSONResponse:
    # A bug in the daemon: still answer in the API's shape, and leave the details to the log.
    import logging

    if not isinstance(exc, StreamAborted):
        logging.getLogger("firebox.server").exception("unexpected error", exc_info=exc)
    return JSONResponse(
        body("internal", f"internal error ({type(exc).__name__}); see the daemon's log"),
        status_code=500,
    )
