"""Snapshots and forks over firebox's own API (server/snapshots.py has the behaviour)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from firebox.server.deps import Caller
from firebox.server.errors import ApiError
from firebox.server.models import SandboxInfo
from firebox.server.snapshots import FORKS_MAX, Snapshots
from firebox.settings import Timeout

router = APIRouter(tags=["snapshots"])


class TakeSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None


class Fork(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=1, ge=1, le=FORKS_MAX)
    timeout: Timeout | None = None


class SnapshotInfo(BaseModel):
    snapshot_id: str
    name: str | None
    sandbox_id: str
    template: str
    backend: str
    # "memory+disk" (a sandbox made from it starts where the original was, its processes
    # running) or "disk" (its files only: processes start afresh)
    keeps: str
    created_at: str
    size_bytes: int


def snapshots(request: Request) -> Snapshots:
    found: Snapshots = request.app.state.snapshots
    return found


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201, response_model=SnapshotInfo)
async def take(
    sandbox_id: str, caller: Caller, request: Request, body: TakeSnapshot | None = None
) -> SnapshotInfo:
    name = body.name if body is not None else None
    snap = await snapshots(request).take(caller.id, sandbox_id, name)
    return SnapshotInfo(**snap.info())


@router.get("/snapshots", response_model=list[SnapshotInfo])
async def list_(
    caller: Caller, request: Request, sandbox_id: str | None = None
) -> list[SnapshotInfo]:
    return [SnapshotInfo(**s.info()) for s in snapshots(request).listed(caller.id, sandbox_id)]


@router.get("/snapshots/{ref}", response_model=SnapshotInfo)
async def get(ref: str, caller: Caller, request: Request) -> SnapshotInfo:
    return SnapshotInfo(**snapshots(request).get(caller.id, ref).info())


@router.delete("/snapshots/{ref}", status_code=204)
async def delete(ref: str, caller: Caller, request: Request) -> Response:
    await snapshots(request).delete(caller.id, ref)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork(
    sandbox_id: str, caller: Caller, request: Request, body: Fork | None = None
) -> list[dict[str, Any]]:
    """``count`` sandboxes starting where this one is now; each entry has ``sandbox`` or
    ``error``, as E2B's fork answers."""
    body = body or Fork()
    made = await snapshots(request).fork(caller.id, sandbox_id, body.count, body.timeout)
    domain = request.app.state.manager.config.preview_domain
    return [
        {"error": {"code": m.code, "message": m.message}}
        if isinstance(m, ApiError)
        else {"sandbox": SandboxInfo(**m.info(), domain=domain).model_dump()}
        for m in made
    ]
