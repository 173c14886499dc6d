"""Terminal sessions (E2B's ``pty``): a command on a pseudo-terminal in the sandbox, its
screen streamed as NDJSON ``pty`` lines (base64 bytes), typed into with the commands' stdin
call and resized here. A terminal session is a command like any other: listed, killed,
reconnected to (``commands/{pid}/connect``), bounded by the sandbox's limits."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.server import activity
from firebox.server.agent_calls import NDJSON, NDJSON_TYPE, agent_call, agent_error, ensure_capacity
from firebox.server.commands import command_stream
from firebox.server.deps import Sandbox
from firebox.server.models import PtySize, StartPty

router = APIRouter(tags=["commands"])

# E2B's terminal: an interactive login shell, as its SDKs start one
LOGIN_SHELL = ["/bin/bash", "-i", "-l"]
TERMINAL_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@router.post("/sandboxes/{sandbox_id}/pty", responses=NDJSON)
async def start_pty(body: StartPty, sbx: Sandbox) -> StreamingResponse:
    """Start a terminal session; the stream is ``start`` (its pid), ``pty`` lines with the
    terminal's output as base64 bytes, and ``end``."""
    ensure_capacity(sbx)
    req = protocol.ProcessStart(
        argv=None if body.cmd else LOGIN_SHELL,
        cmd=body.cmd,
        envs={**TERMINAL_ENV, **sbx.envs, **body.envs},
        cwd=body.cwd,
        user=body.user,
        stdin=True,
        timeout=body.timeout or None,
        output_limit=None,  # a terminal is watched as it goes, not kept: no cap on it
        pty={"cols": body.cols, "rows": body.rows},
    )
    try:
        proc = await activity.start_process(sbx, req)
    except (AgentError, AgentGone) as e:
        raise agent_error(e, sbx) from None
    return StreamingResponse(command_stream(sbx, proc), media_type=NDJSON_TYPE)


@router.post("/sandboxes/{sandbox_id}/commands/{pid}/resize", status_code=204)
async def resize_pty(pid: int, body: PtySize, sbx: Sandbox) -> Response:
    """Resize a terminal session's terminal; its foreground program gets SIGWINCH."""
    await agent_call(sbx, sbx.agent.resize(pid, body.cols, body.rows))
    return Response(status_code=204)
