"""What was run in a sandbox through the API: commands, terminal sessions and cells, from any
edge (firebox's REST API, E2B's, MCP), newest last, the last few hundred of them (the
``LiveSandbox.activity`` deque's bound); the dashboard's
log of a sandbox (``GET /sandboxes/{id}/activity``). A line of what ran, not its output."""

from __future__ import annotations

import time
from dataclasses import dataclass

from firebox import protocol
from firebox.agent_client import ProcessStream
from firebox.server.live import LiveSandbox

SHOWN = 500  # characters of a command or cell kept


@dataclass(frozen=True, slots=True)
class Entry:
    at: float  # unix seconds
    kind: str  # "command" | "terminal" | "cell"
    text: str  # the command line, or the cell's code (cut at SHOWN characters)
    user: str | None = None
    pid: int | None = None


def note(
    sbx: LiveSandbox, kind: str, text: str, user: str | None = None, pid: int | None = None
) -> None:
    cut = text if len(text) <= SHOWN else text[:SHOWN] + " …"
    sbx.activity.append(Entry(time.time(), kind, cut, user, pid))


async def start_process(sbx: LiveSandbox, req: protocol.ProcessStart) -> ProcessStream:
    """Start a caller's process in the sandbox (every edge's commands and terminals), noted."""
    proc = await sbx.agent.start_process(req)
    line = req.cmd if req.cmd is not None else " ".join(req.argv or [])
    note(sbx, "terminal" if req.pty else "command", line, req.user, proc.pid)
    return proc
