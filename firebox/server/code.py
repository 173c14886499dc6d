"""Code execution: run a cell in a stateful context (streamed as NDJSON), and manage contexts.

The stream of ``POST /sandboxes/{id}/code``, one JSON object per line::

    {"type": "stdout", "text": "..."}               printed while the cell runs
    {"type": "stderr", "text": "..."}
    {"type": "result", "data": {"text/plain": ..., "image/png": <base64>, ...},
     "is_main_result": false, "chart": {...} | null}
    {"type": "error", "name": "...", "value": "...", "traceback": "..."}
    {"type": "end", "execution_count": 3, "timed_out": false, "restarted": false,
     "reason": null}
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone, CodeStream
from firebox.server import activity
from firebox.server.agent_calls import (
    NDJSON,
    NDJSON_TYPE,
    agent_call,
    agent_error,
    ensure_capacity,
    ndjson_line,
)
from firebox.server.deps import Sandbox
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox
from firebox.server.models import ContextInfo, CreateContext, RunCode

router = APIRouter(tags=["code"])
FIRST_EVENT_WAIT = 0.5  # seconds
# A context's create answers once its interpreter is ready: the agent's own deadline for that,
# and a margin for a busy sandbox to answer in.
CONTEXT_START_TIMEOUT = protocol.INTERPRETER_START_TIMEOUT + 10


def unquoted(data: dict[str, Any]) -> dict[str, Any]:
    """A result's MIME bundle with a string's plain text as its value, not its repr ('abc'
    shows as abc), as E2B's interpreter gives it; for both edges."""
    text = data.get("text/plain")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return {**data, "text/plain": text[1:-1]}
    return data


def _event(kind: str, value: Any) -> dict[str, Any]:
    if kind in ("stdout", "stderr"):
        return {"type": kind, "text": value}
    if kind == "result":
        return {
            "type": "result",
            "data": unquoted(value.data),
            "is_main_result": bool(value.is_main_result),
            "chart": value.chart if isinstance(value.chart, dict) else None,
        }
    return {
        "type": "error",
        "name": str(value.name),
        "value": str(value.value),
        "traceback": str(value.traceback),
    }


def _end_line(cell: CodeStream) -> bytes:
    """The stream's last line: how the cell ended."""
    return ndjson_line({"type": "end", **protocol.as_dict(cell.done or protocol.CodeDone())})


async def _stream(
    sbx: LiveSandbox, cell: CodeStream, pending: asyncio.Future[tuple[str, Any] | None]
) -> AsyncIterator[bytes]:
    finished = False
    try:
        try:
            first = await pending
            if first is not None:
                yield ndjson_line(_event(*first))
                async for kind, value in cell:
                    yield ndjson_line(_event(kind, value))
        except (AgentError, AgentGone) as e:
            err = agent_error(e, sbx)
            finished = True
            yield ndjson_line({"type": "end", "error": err.code, "message": err.message})
            return
        finished = True
        yield _end_line(cell)
    finally:
        if not finished:  # the client went away: the agent interrupts the cell
            pending.cancel()
            with contextlib.suppress(Exception):
                await cell.detach()


class Cell:
    """A cell the agent has accepted: its stream, and its first event (or None: the cell is
    over already, having printed and shown nothing) once ``first`` is done."""

    def __init__(self, stream: CodeStream, first: asyncio.Future[tuple[str, Any] | None]) -> None:
        self.stream = stream
        self.first = first

    @property
    def silent_end(self) -> bool:
        return self.first.done() and self.first.result() is None


async def start_cell(
    sbx: LiveSandbox,
    code: str,
    *,
    context_id: str | None = None,
    language: str | None = None,
    envs: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Cell:
    """Start a cell in the sandbox: what every edge that runs code shares (firebox's API and
    E2B's interpreter). A request the agent refuses at once raises as an ApiError."""
    ensure_capacity(sbx)
    req = protocol.CodeRun(
        code=code,
        context_id=context_id,
        language=language,
        envs={**sbx.envs, **(envs or {})},
        timeout=timeout or None,
        output_limit=sbx.output_limit,
    )
    stream = await agent_call(sbx, sbx.agent.run_code(req))
    activity.note(sbx, "cell", code)
    # Wait briefly for the first event before answering, so that a request the agent refuses
    # at once (an unknown context, say) is a 4xx rather than a broken 200. Not longer: a cell
    # may be silent for minutes, and only an answer that has begun notices its client leave.
    pending = asyncio.ensure_future(anext(stream, None))
    await asyncio.wait({pending}, timeout=FIRST_EVENT_WAIT)
    if pending.done() and isinstance(pending.exception(), AgentError | AgentGone):
        raise agent_error(pending.exception(), sbx) from None  # type: ignore[arg-type]
    return Cell(stream, pending)


@router.post("/sandboxes/{sandbox_id}/code", responses=NDJSON)
async def run_code(body: RunCode, sbx: Sandbox) -> Response:
    cell = await start_cell(
        sbx,
        body.code,
        context_id=body.context_id,
        language=body.language,
        envs=body.envs,
        timeout=body.timeout,
    )
    if cell.silent_end:
        # Over already, with nothing printed or shown (an assignment, an import, a def): the
        # one line is the whole answer, without a stream's machinery (~0.1 ms a cell).
        return Response(content=_end_line(cell.stream), media_type=NDJSON_TYPE)
    return StreamingResponse(_stream(sbx, cell.stream, cell.first), media_type=NDJSON_TYPE)


def _context(raw: Any) -> ContextInfo:
    # the agent's replies are checked, never trusted to be well-formed
    try:
        return ContextInfo(**raw)
    except (TypeError, ValueError) as e:
        raise ApiError("sandbox_error", f"the sandbox's agent sent a malformed context: {e}") from e


async def new_context(
    sbx: LiveSandbox, language: str, cwd: str | None, user: str = "user"
) -> ContextInfo:
    msg = protocol.ContextCreate(language=language, cwd=cwd, user=user)
    return _context(await agent_call(sbx, sbx.agent.call(msg, timeout=CONTEXT_START_TIMEOUT)))


async def contexts_of(sbx: LiveSandbox) -> list[ContextInfo]:
    raw = await agent_call(sbx, sbx.agent.call(protocol.ContextList()))
    if not isinstance(raw, list):
        raise ApiError("sandbox_error", "the sandbox's agent sent a malformed context list")
    return [_context(c) for c in raw]


async def restart_context_of(sbx: LiveSandbox, context_id: str) -> None:
    msg = protocol.ContextRestart(id=context_id)
    timeout = CONTEXT_START_TIMEOUT + protocol.CONTEXT_RESTART_WAIT
    await agent_call(sbx, sbx.agent.call(msg, timeout=timeout))


async def remove_context_of(sbx: LiveSandbox, context_id: str) -> None:
    await agent_call(sbx, sbx.agent.call(protocol.ContextRemove(id=context_id)))


@router.post("/sandboxes/{sandbox_id}/contexts", status_code=201, response_model=ContextInfo)
async def create_context(body: CreateContext, sbx: Sandbox) -> ContextInfo:
    return await new_context(sbx, body.language, body.cwd, body.user)


@router.get("/sandboxes/{sandbox_id}/contexts", response_model=list[ContextInfo])
async def list_contexts(sbx: Sandbox) -> list[ContextInfo]:
    return await contexts_of(sbx)


@router.post("/sandboxes/{sandbox_id}/contexts/{context_id}/restart", status_code=204)
async def restart_context(context_id: str, sbx: Sandbox) -> Response:
    await restart_context_of(sbx, context_id)
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}/contexts/{context_id}", status_code=204)
async def remove_context(context_id: str, sbx: Sandbox) -> Response:
    await remove_context_of(sbx, context_id)
    return Response(status_code=204)
