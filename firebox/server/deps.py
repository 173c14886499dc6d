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
    return mgr.get(caller.id, sandbox_id)


Sandbox = Annotated[LiveSandbox, Depends(sandbox)]
