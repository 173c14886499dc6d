"""Sandboxes: create, list, get, set timeout, kill; and API keys."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request, Response

from firebox.server.auth import new_key
from firebox.server.deps import Caller, Manager, Sandbox
from firebox.server.errors import ApiError
from firebox.server.models import CreateKey, KeyCreated, SandboxInfo, SetTimeout
from firebox.settings import SandboxSettings

router = APIRouter(tags=["sandboxes"])


@router.post("/sandboxes", status_code=201, response_model=SandboxInfo)
async def create_sandbox(body: SandboxSettings, caller: Caller, mgr: Manager) -> SandboxInfo:
    live = await mgr.create(caller.id, body)
    return SandboxInfo(**live.info())


@router.get("/sandboxes", response_model=list[SandboxInfo])
async def list_sandboxes(
    caller: Caller,
    mgr: Manager,
    metadata: str | None = Query(
        default=None, description="URL-encoded `k=v&k2=v2`; every pair must match"
    ),
) -> list[SandboxInfo]:
    wanted: dict[str, str] = {}
    if metadata:
        try:
            wanted = dict(parse_qsl(metadata, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise ApiError(
                "invalid_argument",
                "metadata filter must be URL-encoded pairs like 'user=alice&app=prod'",
            ) from None
    return [SandboxInfo(**s.info()) for s in mgr.list(caller.id, wanted)]


@router.get("/sandboxes/{sandbox_id}", response_model=SandboxInfo)
async def get_sandbox(sbx: Sandbox) -> SandboxInfo:
    return SandboxInfo(**sbx.info())


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(body: SetTimeout, sbx: Sandbox, mgr: Manager) -> Response:
    mgr.set_timeout(sbx.owner, sbx.id, body.timeout)
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sbx: Sandbox, mgr: Manager) -> Response:
    await mgr.kill(sbx.owner, sbx.id)
    return Response(status_code=204)


@router.post("/keys", status_code=201, response_model=KeyCreated, tags=["keys"])
async def create_key(body: CreateKey, caller: Caller, request: Request) -> KeyCreated:
    if not caller.admin:
        raise ApiError("forbidden", "only the admin key may create keys")
    return KeyCreated(key=new_key(request.app.state.registry, body.name), name=body.name)
