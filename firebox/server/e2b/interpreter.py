"""E2B's code-interpreter protocol (port 49999): ``/execute`` and ``/contexts``.

A translation onto the cells and contexts firebox's own API runs (server/code.py), nothing
more. ``POST /execute`` answers one JSON object a line, as E2B's interpreter does::

    {"type": "stdout" | "stderr", "text": "...", "timestamp": "<ISO 8601>"}
    {"type": "result", "text": ..., "html": ..., "png": <base64>, ..., "chart": {...},
     "extra": {<other MIME types>}, "is_main_result": bool}
    {"type": "error", "name": "...", "value": "...", "traceback": "..."}
    {"type": "keepalive"}                       every few seconds while the cell is quiet
    {"type": "number_of_executions", "execution_count": 3}
    {"type": "end_of_execution"}

E2B's SDKs bound a cell by the request's deadline (``run_code(timeout=...)``): they close the
connection, which firebox notices at the next keepalive at the latest and answers by
interrupting the cell, as E2B's server interrupts its kernel. A cell whose sandbox dies while it
runs ends the answer without its last line, which E2B's SDKs report as the sandbox killed.
Refusals are plain text with an HTTP status, as E2B's server sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from firebox.agent_client import AgentError, AgentGone
from firebox.server import code
from firebox.server.agent_calls import agent_error
from firebox.server.e2b import access
from firebox.server.e2b.interpreter_charts import e2b_chart
from firebox.server.errors import ApiError, StreamAborted
from firebox.server.manager import LiveSandbox
from firebox.settings import Text

log = logging.getLogger(__name__)
router = APIRouter()

KEEPALIVE = 5.0  # seconds between keepalive lines while a cell is quiet (E2B's own pace)
HOME = "/home/user"  # E2B's default working directory for a new context
# E2B's language names (and the aliases its server accepts) → the agent's context languages.
LANGUAGES = {
    "python": "python",
    "javascript": "javascript",
    "js": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "bash": "bash",
}
# Languages E2B's template has and firebox's does not, and why.
MISSING = {
    "r": "firebox's sandbox template has no r interpreter",
    "java": "firebox's sandbox template has no java interpreter",
}
# E2B's result fields by the MIME type they carry; any other type goes in ``extra``.
FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
}


class ExecutionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # E2B's SDKs may add fields: readers ignore them
    code: Text
    context_id: Text | None = None
    language: Text | None = None
    env_vars: dict[str, str] | None = None


class CreateContext(BaseModel):
    model_config = ConfigDict(extra="ignore")
    language: Text | None = None
    cwd: Text | None = None


def _refused(e: ApiError) -> Response:
    return PlainTextResponse(e.message, status_code=e.status)


def _sandbox() -> LiveSandbox:
    sbx = access.current()
    if access.current_port() != access.INTERPRETER_PORT:
        raise ApiError(
            "not_found",
            f"the code interpreter answers on port {access.INTERPRETER_PORT} "
            "(E2b-Sandbox-Port), not on the sandbox daemon's",
        )
    return sbx


def _language(name: str | None) -> str:
    wanted = (name or "python").strip().lower()
    if wanted in LANGUAGES:
        return LANGUAGES[wanted]
    known = "python, javascript (js), typescript (ts) or bash"
    if wanted in MISSING:
        raise ApiError("invalid_argument", f"{MISSING[wanted]}; run {known}")
    raise ApiError("invalid_argument", f"unknown language {name!r}: use {known}")


@router.post("/execute")
async def execute(body: ExecutionRequest) -> Response:
    try:
        sbx = _sandbox()
        if body.context_id and body.language:
            raise ApiError("invalid_argument", "Only one of context_id or language can be provided")
        language = _language(body.language) if body.language else None
        cell = await code.start_cell(
            sbx,
            body.code,
            context_id=body.context_id or None,
            language=language,
            envs=body.env_vars,
        )
    except ApiError as e:
        return _refused(e)
    return StreamingResponse(_lines(sbx, cell), media_type="application/json")


async def _lines(sbx: LiveSandbox, cell: code.Cell) -> AsyncIterator[bytes]:
    stream = cell.stream
    pending: asyncio.Future[tuple[str, Any] | None] = cell.first
    finished = False
    try:
        while True:
            # Quiet cells still write now and then: a client that went away is only noticed
            # when a write fails, and its cell must not run on unseen.
            while not pending.done():
                await asyncio.wait({pending}, timeout=KEEPALIVE)
                if not pending.done():
                    yield _line({"type": "keepalive"})
            event = pending.result()
            if event is None:
                break
            yield _line(_event(*event))
            pending = asyncio.ensure_future(anext(stream, None))
        finished = True
    except (AgentError, AgentGone) as e:
        # The answer has begun: end it without its last line, which E2B's SDKs take for a
        # dead sandbox (and ask the control API whether it is) rather than a finished cell.
        err = agent_error(e, sbx)
        log.warning("a cell in %s broke off: %s", sbx.id, err.message)
        raise StreamAborted(err.message) from None
    finally:
        if not finished:  # the client went away (or the sandbox did): interrupt the cell
            pending.cancel()
            with contextlib.suppress(Exception):
                await stream.detach()
    done = stream.done
    if done is not None and done.execution_count is not None:
        yield _line({"type": "number_of_executions", "execution_count": done.execution_count})
    yield _line({"type": "end_of_execution"})


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _event(kind: str, value: Any) -> dict[str, Any]:
    if kind in ("stdout", "stderr"):
        now = datetime.datetime.now(datetime.UTC).isoformat()
        return {"type": kind, "text": value, "timestamp": now}
    if kind == "result":
        return _result(value.data, bool(value.is_main_result), value.chart)
    return {
        "type": "error",
        "name": str(value.name),
        "value": str(value.value),
        "traceback": str(value.traceback),
    }


def _result(data: dict[str, Any], main: bool, chart: Any) -> dict[str, Any]:
    """A rich result in E2B's shape: one field per known MIME type, the rest in ``extra``."""
    out: dict[str, Any] = {"type": "result"}
    extra: dict[str, Any] = {}
    for mime, value in code.unquoted(data).items():
        if mime in FIELDS:
            out[FIELDS[mime]] = value
        elif mime != "e2b/chart":
            extra[mime] = value
    if isinstance(chart, dict):
        converted = e2b_chart(chart)
        if converted is not None:
            out["chart"] = converted
    out["extra"] = extra
    out["is_main_result"] = main
    return out


# -- contexts ---------------------------------------------------------------------------------
# E2B's kernels run as root, so that a context may start anywhere (``cwd="/root"``, say): the
# contexts made here do too. The default ones (a ``language`` without a context) are the
# agent's, shared with firebox's own API, and run as the sandbox's user.


def _context(info: Any) -> dict[str, str]:
    return {"id": info.id, "language": info.language, "cwd": info.cwd}


@router.post("/contexts")
async def create_context(body: CreateContext) -> Response:
    try:
        sbx = _sandbox()
        language = _language(body.language)
        info = await code.new_context(sbx, language, body.cwd or HOME, user="root")
    except ApiError as e:
        return _refused(e)
    return Response(json.dumps(_context(info)), media_type="application/json")


@router.get("/contexts")
async def list_contexts() -> Response:
    try:
        contexts = await code.contexts_of(_sandbox())
    except ApiError as e:
        return _refused(e)
    return Response(json.dumps([_context(c) for c in contexts]), media_type="application/json")


@router.post("/contexts/{context_id}/restart")
async def restart_context(context_id: str) -> Response:
    try:
        await code.restart_context_of(_sandbox(), context_id)
    except ApiError as e:
        return _refused(e)
    return Response("null", media_type="application/json")


@router.delete("/contexts/{context_id}")
async def remove_context(context_id: str) -> Response:
    try:
        await code.remove_context_of(_sandbox(), context_id)
    except ApiError as e:
        return _refused(e)
    return Response("null", media_type="application/json")
