"""E2B's snapshots and forks (spec/openapi.yml: ``/sandboxes/{id}/snapshots``, ``/snapshots``,
``/sandboxes/{id}/fork``), translated onto server/snapshots.py. A snapshot's id is what E2B's
``Sandbox.create`` takes as its template, and ``DELETE /templates/{id}`` deletes it
(control.py and template_names.py route those here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from firebox.server.deps import Caller
from firebox.server.errors import STATUS, ApiError
from firebox.server.snapshots import FORKS_MAX, Snapshot, Snapshots
from firebox.settings import DEFAULT_TIMEOUT, MAX_TIMEOUT

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class SnapshotRequest(_Body):
    name: str | None = None


class ForkRequest(_Body):
    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=0)
    count: int = Field(default=1, ge=1, le=FORKS_MAX)


def service(request: Request) -> Snapshots:
    found: Snapshots = request.app.state.snapshots
    return found


def snapshot_info(snap: Snapshot) -> dict[str, Any]:
    """E2B's ``SnapshotInfo``."""
    return {"snapshotID": snap.id, "names": [snap.name] if snap.name else [snap.id]}


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def take(
    sandbox_id: str, caller: Caller, request: Request, body: SnapshotRequest | None = None
) -> dict[str, Any]:
    name = body.name if body is not None else None
    return snapshot_info(await service(request).take(caller.id, sandbox_id, name))


@router.get("/snapshots")
async def list_(
    caller: Caller,
    request: Request,
    response: Response,
    sandbox_id: str | None = Query(default=None, alias="sandboxID"),
    name: str | None = None,
    limit: int = Query(default=100, ge=1, le=100),
    next_token: str | None = Query(default=None, alias="nextToken"),
) -> list[dict[str, Any]]:
    found = service(request).listed(caller.id, sandbox_id)
    if name is not None:
        wanted = name.split(":", 1)[0].rsplit("/", 1)[-1]  # E2B's team/ and :tag forms
        found = [s for s in found if wanted in (s.id, s.name)]
    start = int(next_token) if next_token and next_token.isdigit() else 0
    page = found[start : start + limit]
    if start + limit < len(found):
        response.headers["X-Next-Token"] = str(start + limit)
    return [snapshot_info(s) for s in page]


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork(
    sandbox_id: str, caller: Caller, request: Request, body: ForkRequest | None = None
) -> list[dict[str, Any]]:
    from firebox.server.e2b.control import sandbox_created  # the one Sandbox shape

    body = body or ForkRequest()
    timeout = max(1, min(body.timeout, MAX_TIMEOUT))
    made = await service(request).fork(caller.id, sandbox_id, body.count, timeout)
    domain = request.app.state.manager.config.preview_domain
    return [
        {"error": {"code": STATUS[m.code], "message": m.message}}
        if isinstance(m, ApiError)
        else {"sandbox": sandbox_created(m, domain)}
        for m in made
    ]


async def delete_if_snapshot(request: Request, owner: str, ref: str) -> bool:
    """``DELETE /templates/{id}`` of a snapshot's id: deleted here (True)."""
    snaps = service(request)
    if snaps.by_id(owner, ref) is None:  # by id only: a name could be a template's
        return False
    await snaps.delete(owner, ref)
    return True
