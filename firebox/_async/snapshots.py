"""Snapshots of sandboxes and forks, over the daemon's API: what ``AsyncSandbox``'s
``create_snapshot``, ``fork``, ``list_snapshots`` and ``delete_snapshot`` send."""

from __future__ import annotations

import builtins
import json
from typing import Any
from urllib.parse import quote

from firebox._async._http import AsyncApiClient
from firebox._core.config import resolve_config
from firebox._core.errors import ERROR_CODES
from firebox._core.models import SandboxInfo, SnapshotInfo
from firebox._core.requests import sandbox_path
from firebox._core.responses import parse_list, parse_sandbox_info, parse_snapshot_info
from firebox.exceptions import FireboxException, NotFoundException


async def take_snapshot(
    api: AsyncApiClient, sandbox_id: str, name: str | None, request_timeout: float | None
) -> SnapshotInfo:
    response = await api.request(
        "POST",
        sandbox_path(sandbox_id, "snapshots"),
        json={"name": name} if name else {},
        timeout=request_timeout,
    )
    return parse_snapshot_info(response.json())


async def fork(
    api: AsyncApiClient,
    sandbox_id: str,
    timeout: int | None,
    count: int | None,
    request_timeout: float | None,
) -> builtins.list[SandboxInfo | FireboxException]:
    """One entry per fork: its info, or the error it failed with."""
    body: dict[str, Any] = {}
    if timeout is not None:
        body["timeout"] = timeout
    if count is not None:
        body["count"] = count
    response = await api.request(
        "POST", sandbox_path(sandbox_id, "fork"), json=body, timeout=request_timeout
    )
    out: builtins.list[SandboxInfo | FireboxException] = []
    for entry in parse_list(response.json(), "forks"):
        if isinstance(entry, dict) and isinstance(entry.get("sandbox"), dict):
            out.append(parse_sandbox_info(entry["sandbox"]))
        else:
            error = entry.get("error") if isinstance(entry, dict) else None
            error = error if isinstance(error, dict) else {}
            cls = ERROR_CODES.get(str(error.get("code")), FireboxException)
            out.append(cls(str(error.get("message") or json.dumps(entry))))
    return out


async def list_snapshots(
    sandbox_id: str | None = None,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> builtins.list[SnapshotInfo]:
    """The API key's snapshots, oldest first; with ``sandbox_id``, those taken of it."""
    params = {"sandbox_id": sandbox_id} if sandbox_id else None
    async with AsyncApiClient(resolve_config(api_key, api_url, request_timeout)) as api:
        response = await api.request("GET", "/snapshots", params=params)
        return [parse_snapshot_info(s) for s in parse_list(response.json(), "snapshots")]


async def delete_snapshot(
    snapshot_id: str,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> bool:
    """Deletes a snapshot (by id or name); False if there was none. Refused (a conflict)
    while a sandbox made from a microVM's snapshot still runs: it maps it."""
    async with AsyncApiClient(resolve_config(api_key, api_url, request_timeout)) as api:
        try:
            await api.request("DELETE", f"/snapshots/{quote(snapshot_id, safe='')}")
        except NotFoundException:
            return False
        return True
