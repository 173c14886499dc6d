"""Sandboxes: create, list, get, set timeout, kill, pause, resume; and API keys."""

from __future__ import annotations

import contextlib
from datetime import datetime

from fastapi import APIRouter, Query, Request, Response

from firebox.server import listing
from firebox.server.auth import hash_key, new_key
from firebox.server.deps import Caller, KnownSandbox, Manager
from firebox.server.errors import ApiError
from firebox.server.live import LiveSandbox
from firebox.server.manager import SandboxManager
from firebox.server.models import (
    ActivityEntry,
    CreateKey,
    KeyCreated,
    KeyInfo,
    Resume,
    SandboxInfo,
    SetTimeout,
    iso,
)
from firebox.settings import SandboxSettings

router = APIRouter(tags=["sandboxes"])


def _info(live: LiveSandbox, mgr: SandboxManager) -> SandboxInfo:
    return SandboxInfo(**live.info(), domain=mgr.config.preview_domain)


@router.post("/sandboxes", status_code=201, response_model=SandboxInfo)
async def create_sandbox(
    body: SandboxSettings, caller: Caller, mgr: Manager, request: Request
) -> SandboxInfo:
    if body.snapshot is not None:
        live = await request.app.state.snapshots.create(caller.id, body.snapshot, body)
    else:
        live = await mgr.create(caller.id, body)
    return _info(live, mgr)


@router.get("/sandboxes", response_model=list[SandboxInfo])
async def list_sandboxes(
    caller: Caller,
    mgr: Manager,
    response: Response,
    metadata: str | None = Query(
        default=None, description="URL-encoded `k=v&k2=v2`; every pair must match"
    ),
    state: str | None = Query(default=None, description="running and/or paused, comma-separated"),
    started_after: datetime | None = Query(default=None, description="ISO 8601"),
    template: str | None = None,
    order: str | None = Query(default=None, description="asc (default, oldest first) or desc"),
    limit: int | None = Query(default=None, ge=1, le=1000),
    next_token: str | None = Query(default=None, description="X-Next-Token of the page before"),
) -> list[SandboxInfo]:
    q = listing.Query(
        metadata=listing.parse_metadata(metadata),
        states=listing.parse_states(state),
        started_after=started_after,
        templates=frozenset({template}) if template is not None else None,
        newest_first=listing.parse_order(order, "asc"),
        limit=limit,
        next_token=next_token,
    )
    page = listing.select(mgr, caller.id, q)
    if page.next_token:
        response.headers["X-Next-Token"] = page.next_token
    return [_info(s, mgr) for s in page.sandboxes]


@router.get("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
async def get_sandbox(sbx: KnownSandbox, mgr: Manager) -> SandboxInfo:
    return _info(sbx, mgr)


@router.get("/sandboxes/{sandbox_id}/activity", response_model=list[ActivityEntry])
async def sandbox_activity(sbx: KnownSandbox) -> list[ActivityEntry]:
    """What was run in it through the API (any edge), oldest first: commands, terminal
    sessions, cells; the last 200."""
    return [
        ActivityEntry(at=iso(e.at), kind=e.kind, text=e.text, user=e.user, pid=e.pid)
        for e in sbx.activity
    ]


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(body: SetTimeout, sbx: KnownSandbox, mgr: Manager) -> Response:
    mgr.set_timeout(sbx.owner, sbx.id, body.timeout)
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sbx: KnownSandbox, mgr: Manager) -> Response:
    await mgr.kill(sbx.owner, sbx.id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", response_model=SandboxInfo)
async def pause_sandbox(sbx: KnownSandbox, mgr: Manager) -> SandboxInfo:
    """Pause it (a paused one stays so): server/lifecycle.py says what is kept."""
    await mgr.pause(sbx.owner, sbx.id)
    return _info(sbx, mgr)


@router.post("/sandboxes/{sandbox_id}/resume", response_model=SandboxInfo)
async def resume_sandbox(
    sbx: KnownSandbox, mgr: Manager, body: Resume | None = None
) -> SandboxInfo:
    """Resume it if paused, with what was left of its timeout (or ``timeout`` if longer);
    a running one's timeout is extended to ``timeout``, never shortened."""
    await mgr.resume(sbx.owner, sbx.id, body.timeout if body else None)
    return _info(sbx, mgr)


@router.post("/keys", status_code=201, response_model=KeyCreated, tags=["keys"])
async def create_key(body: CreateKey, caller: Caller, request: Request) -> KeyCreated:
    if not caller.admin:
        raise ApiError("forbidden", "only the admin key may create keys")
    registry = request.app.state.registry
    key = new_key(registry, body.name)
    record = registry.key_by_hash(hash_key(key))
    return KeyCreated(key=key, name=body.name, id=record.id if record else None)


@router.get("/keys", response_model=list[KeyInfo], tags=["keys"])
async def list_keys(caller: Caller, request: Request) -> list[KeyInfo]:
    """Every key (the admin key only): names and ids, never the keys themselves."""
    if not caller.admin:
        raise ApiError("forbidden", "only the admin key may list keys")
    return [
        KeyInfo(
            id=k["id"],
            name=k["name"],
            admin=k["admin"],
            created_at=iso(k["created_at"]),
            revoked_at=iso(k["revoked_at"]) if k["revoked_at"] else None,
        )
        for k in request.app.state.registry.all_keys()
    ]


@router.delete("/keys/{key_id}", status_code=204, tags=["keys"])
async def revoke_key(key_id: str, caller: Caller, mgr: Manager, request: Request) -> Response:
    """Revoke a key (the admin key only; never the admin key itself): it opens nothing from
    now on, and its sandboxes, nobody's any more, are killed."""
    if not caller.admin:
        raise ApiError("forbidden", "only the admin key may revoke keys")
    if not request.app.state.registry.revoke_key(key_id):
        raise ApiError("not_found", f"no key {key_id!r} to revoke (the admin key cannot be)")
    for live in [s for s in mgr.all_live() if s.owner == key_id]:
        with contextlib.suppress(ApiError):
            await mgr.kill(key_id, live.id)
    return Response(status_code=204)
