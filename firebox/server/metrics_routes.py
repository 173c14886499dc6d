"""A sandbox's metrics: its CPU, memory and disk every 5 s over the last hour, as the daemon's
sampler took them (metrics.py). Fields named and shaped as E2B's ``SandboxMetrics``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from firebox.server import telemetry
from firebox.server.deps import Caller, KnownSandbox, Manager
from firebox.server.errors import ApiError
from firebox.server.metrics import Sample
from firebox.server.models import iso

router = APIRouter(tags=["sandboxes"])


class SandboxMetric(BaseModel):
    """One sample; null where the host cannot measure it (docs/API.md says which)."""

    timestamp: str  # ISO 8601, UTC
    cpu_count: float  # the sandbox's CPU limit
    cpu_used_pct: float | None  # of that limit, since the previous sample
    mem_used: int  # bytes it holds, less file cache the kernel drops first
    mem_cache: int  # page cache charged to it (a jail's files included)
    mem_total: int | None  # what it may hold before an OOM kill
    disk_used: int | None  # its writable disk: home, /tmp, /root
    disk_total: int | None

    @classmethod
    def of(cls, s: Sample) -> SandboxMetric:
        return cls(
            timestamp=iso(s.timestamp),
            cpu_count=s.cpu_count,
            cpu_used_pct=s.cpu_used_pct,
            mem_used=s.mem_used,
            mem_cache=s.mem_cache,
            mem_total=s.mem_total,
            disk_used=s.disk_used,
            disk_total=s.disk_total,
        )


@router.get("/sandboxes/{sandbox_id}/metrics", response_model=list[SandboxMetric])
async def get_metrics(
    sbx: KnownSandbox,  # a paused one's samples too, without waking it
    mgr: Manager,
    start: float | None = Query(default=None, ge=0, description="unix seconds; default: its start"),
    end: float | None = Query(default=None, ge=0, description="unix seconds; default: now"),
) -> list[SandboxMetric]:
    if start is not None and end is not None and start > end:
        raise ApiError("invalid_argument", f"start ({start}) is after end ({end}); swap them")
    since = start if start is not None else sbx.started_at
    until = end if end is not None else time.time()
    return [SandboxMetric.of(s) for s in mgr.metrics.samples(sbx.id, since, until)]


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse)
async def daemon_metrics(caller: Caller) -> PlainTextResponse:
    """The daemon's own metrics in Prometheus' text format (server/telemetry.py): sandboxes
    by state and backend, creates and their latency, errors by code, pool levels, admission
    refusals, egress and port-proxy connections and bytes. The admin key only (a scraper's
    ``authorization: Bearer``): they count every key's sandboxes."""
    if not caller.admin:
        raise ApiError("forbidden", "the daemon's metrics are the admin key's to read")
    return PlainTextResponse(telemetry.scrape(), media_type=telemetry.CONTENT_TYPE)
