"""The dashboard's page, its assets, and the two feeds only it needs (the rest of what it shows
comes from the REST API, with the key the person signed in with).

The page is plain HTML and a small script (static/), no framework and nothing fetched from
elsewhere at run time. Its live list is a server-sent event stream of the key's sandboxes with
their latest usage (the metrics sampler's), read with ``fetch`` (an ``EventSource`` cannot send
the key in a header, and a key in a URL ends up in logs). The page holds no secret: the key is
typed in and kept in the tab's ``sessionStorage``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse

from firebox import images
from firebox.server.deps import Caller, Manager
from firebox.server.errors import ApiError
from firebox.server.live import LiveSandbox
from firebox.server.models import iso

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).with_name("static")
FILES = {
    "app.js": "text/javascript",
    "terminal.js": "text/javascript",
    "style.css": "text/css",
}
# xterm.js, the terminal, as npm installed it for the README's first command (package.json):
# served from here, never fetched from elsewhere at run time
VENDOR = {
    "xterm.js": ("@xterm/xterm/lib/xterm.js", "text/javascript"),
    "xterm.css": ("@xterm/xterm/css/xterm.css", "text/css"),
    "addon-fit.js": ("@xterm/addon-fit/lib/addon-fit.js", "text/javascript"),
}


def node_modules() -> Path:
    """Where npm put the dashboard's packages: $FIREBOX_DASHBOARD_ASSETS, else the checkout's."""
    configured = os.environ.get("FIREBOX_DASHBOARD_ASSETS")
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "node_modules"


TICK = 2.0  # seconds between updates of the live list (the sampler takes one every 5 s)
# a heartbeat comment at least this often, so that proxies keep the stream open
HEARTBEAT = 15.0


@router.get("/dashboard")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_NO_STORE)


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in FILES:
        raise ApiError("not_found", f"no dashboard asset {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=_NO_STORE)


@router.get("/dashboard/vendor/{name}")
async def vendor(name: str) -> FileResponse:
    if name not in VENDOR:
        raise ApiError("not_found", f"no dashboard asset {name!r}")
    relative, media_type = VENDOR[name]
    path = node_modules() / relative
    if not path.is_file():
        raise ApiError(
            "not_found",
            f"the terminal's {name} is not installed ({path}); scripts/install installs it",
        )
    return FileResponse(path, media_type=media_type)


@router.get("/dashboard/api/overview")
async def overview(caller: Caller, mgr: Manager) -> dict[str, Any]:
    """The host as the dashboard shows it: backend and why, capacity, the warm pool."""
    from firebox.backends.select import consequence

    backend = mgr.backend
    usage = mgr.admission.usage()
    limits = mgr.admission.limits
    return {
        "admin": caller.admin,
        "backend": backend.name,
        "backend_reason": backend.availability().reason,
        "consequence": consequence(backend),
        "sandboxes": len(mgr.all_live()),
        "max_sandboxes": limits.max_sandboxes,
        "committed_mb": usage.committed_mb,
        "max_memory_mb": limits.max_memory_mb,
        "pool": mgr.pool.levels(),
        "pool_size": mgr.pool.size,
        "own_templates": images.known_templates(),  # firebox's, beside the built ones
    }


@router.get("/dashboard/api/events")
async def events(request: Request, caller: Caller, mgr: Manager) -> StreamingResponse:
    """Server-sent events: ``sandboxes`` (the key's, or every key's for the admin key, each
    marked ``mine`` or not) whenever the list or their usage changes."""

    async def stream() -> AsyncIterator[bytes]:
        last = ""
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            rows = [
                _row(s, mgr, s.owner == caller.id)
                for s in mgr.all_live()
                if caller.admin or s.owner == caller.id
            ]
            now = json.dumps(rows, sort_keys=True)
            if now != last:
                last, quiet_since = now, time.monotonic()
                yield f"event: sandboxes\ndata: {now}\n\n".encode()
            elif time.monotonic() - quiet_since > HEARTBEAT:
                quiet_since = time.monotonic()
                yield b": still here\n\n"
            await asyncio.sleep(TICK)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={**_NO_STORE, "X-Accel-Buffering": "no"}
    )


def _row(s: LiveSandbox, mgr: Any, mine: bool) -> dict[str, Any]:
    """One sandbox of the live list. The admin key sees every key's in the list (what runs on
    the host); the insides of a sandbox stay its own key's, as everywhere in the API."""
    sample = mgr.metrics.latest(s.id)
    return {
        "sandbox_id": s.id,
        "mine": mine,
        "template": s.spec.template,
        "backend": s.backend,
        "state": s.state,
        "started_at": iso(s.started_at),
        "end_at": iso(s.end_at),
        "metadata": s.settings.metadata,
        "cpu_pct": None if sample is None else sample.cpu_used_pct,
        "cpu_count": s.spec.limits.cpu_count,
        "mem_used": None if sample is None else sample.mem_used,
        "mem_total": None if sample is None else sample.mem_total,
    }


_NO_STORE = {"Cache-Control": "no-store"}
