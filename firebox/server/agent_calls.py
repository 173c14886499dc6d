"""What every route that reaches into a sandbox shares: the agent's failures as API errors,
the cap on a sandbox's channels in flight, and the lines of a streamed (NDJSON) answer."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from firebox.agent_client import AgentError, AgentGone
from firebox.server.errors import AGENT_CODES, ApiError
from firebox.server.manager import LiveSandbox

# Streams in flight per sandbox: each may hold the agent's credit window of output (16 × 256
# KiB) in the daemon while its client is slow to read, so their number is what bounds memory.
CHANNELS_MAX = 64

T = TypeVar("T")


def agent_error(e: AgentError | AgentGone, sbx: LiveSandbox) -> ApiError:
    """The one translation of agent failures into API errors."""
    if isinstance(e, AgentGone):
        if sbx.state != "running" or "was paused" in str(e):  # a pause cut it: not an end
            return ApiError("sandbox_error", str(e))
        if sbx.ended_out_of_memory():
            return ApiError("sandbox_error", sbx.out_of_memory_message())
        return ApiError(
            "sandbox_error", f"sandbox {sbx.id} stopped answering ({e}); create a new one"
        )
    return ApiError(AGENT_CODES.get(e.code, "sandbox_error"), e.message)


async def agent_call(sbx: LiveSandbox, operation: Awaitable[T]) -> T:
    """Await an operation on the sandbox's agent; its failures become API errors."""
    try:
        return await operation
    except (AgentError, AgentGone) as e:
        raise agent_error(e, sbx) from None


def ensure_capacity(sbx: LiveSandbox) -> None:
    """Refuse a new stream or transfer past CHANNELS_MAX in flight (429, saying what to do)."""
    if sbx.agent.open_channels >= CHANNELS_MAX:
        raise ApiError(
            "rate_limited",
            f"sandbox {sbx.id} has {CHANNELS_MAX} commands and transfers in flight; wait for "
            "some to finish (or kill them) before starting more",
        )


# How a streamed answer is documented in the OpenAPI document (app.openapi_document keeps it)
NDJSON_TYPE = "application/x-ndjson"
NDJSON: dict[int | str, dict[str, Any]] = {200: {"content": {NDJSON_TYPE: {}}}}


def ndjson_line(obj: dict[str, Any]) -> bytes:
    """One line of a streamed answer (commands, code)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
