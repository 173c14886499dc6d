"""One translation of firebox's errors into E2B's in-sandbox error shapes: Connect errors for
the RPC services, ``{"code": <status>, "message": ...}`` for the HTTP routes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from fastapi import Request
from fastapi.responses import JSONResponse

from firebox.agent_client import AgentError, AgentGone
from firebox.server.agent_calls import agent_error
from firebox.server.e2b import access
from firebox.server.errors import ApiError

# firebox's API codes → Connect's; E2B's SDKs map these onto their exceptions (NotFound,
# InvalidArgument, Timeout, …) exactly as they would map envd's own.
CONNECT_CODES = {
    "invalid_argument": Code.INVALID_ARGUMENT,
    "unauthenticated": Code.UNAUTHENTICATED,
    "forbidden": Code.PERMISSION_DENIED,
    "not_found": Code.NOT_FOUND,
    "sandbox_not_found": Code.UNAVAILABLE,  # what E2B's proxy answers for a missing sandbox
    "conflict": Code.ALREADY_EXISTS,
    "too_large": Code.RESOURCE_EXHAUSTED,
    "rate_limited": Code.RESOURCE_EXHAUSTED,
    "internal": Code.INTERNAL,
    "sandbox_error": Code.UNAVAILABLE,
    "unavailable": Code.UNAVAILABLE,
    "timeout": Code.DEADLINE_EXCEEDED,
    "no_space": Code.RESOURCE_EXHAUSTED,
}


def as_api_error(e: ApiError | AgentError | AgentGone) -> ApiError:
    if isinstance(e, ApiError):
        return e
    return agent_error(e, access.current())


@contextmanager
def connect_errors() -> Iterator[None]:
    """Run a Connect handler's body: firebox's errors leave it as Connect errors."""
    try:
        yield
    except (ApiError, AgentError, AgentGone) as e:
        err = as_api_error(e)
        raise ConnectError(CONNECT_CODES[err.code], err.message) from None


def envd_status(err: ApiError) -> int:
    """E2B's proxy answers 502 for a sandbox that is not running (its SDKs tell "not running"
    from "unreachable" by the message); everything else keeps firebox's status."""
    return 502 if err.code == "sandbox_not_found" else err.status


def envd_error_body(err: ApiError) -> dict[str, object]:
    return {"code": envd_status(err), "message": err.message}


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI handler for the sandbox app's HTTP routes."""
    assert isinstance(exc, ApiError)
    return JSONResponse(envd_error_body(exc), status_code=envd_status(exc))
