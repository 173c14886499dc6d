"""Shared request dependencies: the manager, the caller, the caller's sandbox.

All are ``async def`` although none awaits: FastAPI runs plain ``def`` dependencies in a
thread pool, a hop that costs more than the lookups themselves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from firebox.server.auth import authenticate
from firebox.server.manager import LiveSandbox, SandboxManager
from firebox.server.registry import KeyRecord

Caller = Annotated[KeyRecord, Depends(authenticate)]


async def manager(request: Request) -> SandboxManager:
    mgr: SandboxManager = request.app.state.manager
    return mgr


Manager = Annotated[SandboxManager, Depends(manager)]


async def sandbox(sandbox_id: str, caller: Caller, mgr: Manager) -> LiveSandbox:
    """The caller's sandbox, running: resumed if paused with auto_resume, else a 409."""
    return await mgr.usable(caller.id, sandbox_id)


async def known_sandbox(sandbox_id: str, caller: Caller, mgr: Manager) -> LiveSandbox:
    """The caller's sandbox as it is, running or paused (its info, timeout, kill)."""
    return mgr.get(caller.id, sandbox_id)


Sandbox = Annotated[LiveSandbox, Depends(sandbox)]
KnownSandbox = Annotated[LiveSandbox, Depends(known_sandbox)]
