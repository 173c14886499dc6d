"""E2B's sandbox metrics routes (``SandboxMetric`` in E2B's spec/openapi.yml), read from the
daemon's sampler (server/metrics.py): one sandbox's samples over a time range
(``sbx.get_metrics(start=, end=)``), and the latest sample of several sandboxes of the key.

Included in the control app before its own router: its ``GET /sandboxes/{id}`` would take
``/sandboxes/metrics`` for a sandbox named "metrics", and its catch-all for features not
served yet would take ``/sandboxes/{id}/metrics``.

Where E2B's guest agent reports the guest's own view, firebox reports the host's (the
sandbox's cgroup and disk), and a figure the host cannot measure is null, never made up:
``cpuUsedPct`` is of the sandbox's CPU limit (its ``cpu_count``, which ``cpuCount`` rounds to
whole CPUs); ``memUsed`` is what its cgroup holds less inactive file cache and ``memTotal``
the cgroup's limit (a microVM's: guest RAM plus QEMU's own); ``diskUsed`` is exact for a
jail, an upper bound for a microVM (docs/API.md).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query

from firebox.server.deps import Caller, Manager
from firebox.server.errors import ApiError
from firebox.server.metrics import Sample
from firebox.server.models import iso

router = APIRouter()

IDS_MAX = 100  # sandbox_ids per request, as E2B's spec allows


def sandbox_metric(sample: Sample) -> dict[str, Any]:
    """E2B's ``SandboxMetric``."""
    return {
        "timestamp": iso(sample.timestamp),
        "timestampUnix": int(sample.timestamp),
        "cpuCount": max(1, round(sample.cpu_count)),  # as E2B's listed sandboxes have it
        "cpuUsedPct": sample.cpu_used_pct,
        "memUsed": sample.mem_used,
        "memTotal": sample.mem_total,
        "memCache": sample.mem_cache,
        "diskUsed": sample.disk_used,
        "diskTotal": sample.disk_total,
    }


@router.get("/sandboxes/metrics")
async def latest_metrics(
    caller: Caller,
    mgr: Manager,
    sandbox_ids: list[str] = Query(description="comma-separated sandbox ids"),
) -> dict[str, Any]:
    ids = list(dict.fromkeys(i.strip() for part in sandbox_ids for i in part.split(",")))
    ids = [i for i in ids if i]
    if len(ids) > IDS_MAX:
        raise ApiError(
            "invalid_argument",
            f"sandbox_ids names {len(ids)} sandboxes; ask for at most {IDS_MAX} at a time",
        )
    found: dict[str, Any] = {}
    for sandbox_id in ids:
        live = mgr.live(sandbox_id)
        # another key's sandbox is left out, as a missing one is: no existence oracle
        if live is None or live.owner != caller.id:
            continue
        sample = mgr.metrics.latest(sandbox_id)
        if sample is not None:
            found[sandbox_id] = sandbox_metric(sample)
    return {"sandboxes": found}


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str,
    caller: Caller,
    mgr: Manager,
    start: int | None = Query(default=None, ge=0, description="unix seconds; default: its start"),
    end: int | None = Query(default=None, ge=0, description="unix seconds; default: now"),
) -> list[dict[str, Any]]:
    live = mgr.get(caller.id, sandbox_id)  # another key's sandbox is a 404
    if start is not None and end is not None and start > end:
        raise ApiError(
            "invalid_argument", f"start ({start}) is after end ({end}); swap them or drop one"
        )
    since = float(start) if start is not None else live.started_at
    until = float(end) if end is not None else time.time()
    return [sandbox_metric(s) for s in mgr.metrics.samples(live.id, since, until)]
