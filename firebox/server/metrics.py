"""Sandbox metrics: every live sandbox's CPU, memory and disk, sampled every 5 s (as E2B
does), the last hour of samples kept per sandbox. E2B's routes (e2b/metrics.py) and firebox's
own (metrics_routes.py) read them here.

One task for the whole daemon: each round reads every sandbox's usage from the host (its
cgroup's counters and its disk, ``RunningSandbox.usage``) in one worker thread, so a round
costs the event loop one thread hop however many sandboxes run. Nothing of a sandbox is asked:
its agent and its commands never see the sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from firebox.backends.base import RunningSandbox, SandboxUsage
    from firebox.server.manager import LiveSandbox

log = logging.getLogger("firebox.metrics")

INTERVAL = 5.0  # seconds between samples, as E2B's
KEPT = 720  # samples kept per sandbox: the last hour
_monotonic = time.monotonic  # when a reading was taken (tests replace it)


@dataclass(frozen=True, slots=True)
class Sample:
    """One sandbox at one time. None: the host cannot measure it (never made up)."""

    timestamp: float  # unix seconds
    cpu_count: float  # its CPU limit
    cpu_used_pct: float | None  # of its CPU limit, since the previous sample
    mem_used: int
    mem_cache: int
    mem_total: int | None
    disk_used: int | None
    disk_total: int | None


def cpu_percent(cpu_ns: int, elapsed_s: float, cpus: float) -> float:
    """The share of its CPU limit a sandbox used: ``cpu_ns`` of CPU time over ``elapsed_s``
    seconds of wall time, with ``cpus`` CPUs allowed. 100 is the whole limit (a 2-CPU sandbox
    busy on both); a burst within one scheduler period may lift it a little above."""
    if elapsed_s <= 0 or cpus <= 0:
        return 0.0
    return round(100.0 * max(0, cpu_ns) / 1e9 / (elapsed_s * cpus), 2)


@dataclass(eq=False)
class _Series:
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=KEPT))
    cpu_ns: int | None = None  # the previous reading, and when it was taken (monotonic)
    read_at: float = 0.0


def _read(running: Iterable[tuple[str, RunningSandbox]]) -> list[tuple[str, SandboxUsage, float]]:
    """Every sandbox's usage, with when it was read (monotonic). In a thread: file reads."""
    out = []
    for sandbox_id, sandbox in running:
        try:
            usage = sandbox.usage()
        except OSError as e:  # one sandbox's trouble must not cost the others their sample
            log.debug("sandbox %s: no usage: %s", sandbox_id, e)
            continue
        if usage is not None:
            out.append((sandbox_id, usage, _monotonic()))
    return out


class Sampler:
    """Samples ``live()``'s sandboxes every ``interval`` seconds once started."""

    def __init__(
        self, live: Callable[[], list[LiveSandbox]], interval: float = INTERVAL, kept: int = KEPT
    ) -> None:
        self._live = live
        self.interval = interval
        self._kept = kept
        self._series: dict[str, _Series] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def samples(
        self, sandbox_id: str, start: float | None = None, end: float | None = None
    ) -> list[Sample]:
        """The kept samples of one sandbox taken within [start, end], oldest first."""
        series = self._series.get(sandbox_id)
        if series is None:
            return []
        return [
            s
            for s in series.samples
            if (start is None or s.timestamp >= start) and (end is None or s.timestamp <= end)
        ]

    def latest(self, sandbox_id: str) -> Sample | None:
        series = self._series.get(sandbox_id)
        return series.samples[-1] if series is not None and series.samples else None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sample_once()
            except Exception:  # a failed round is logged; the next one may do better
                log.exception("sampling sandbox metrics failed")

    async def sample_once(self) -> None:
        """One round: read every live sandbox, add a sample to each series that has a
        previous reading (CPU percent needs two), forget the sandboxes that ended."""
        live = {s.id: s for s in self._live()}
        for gone in self._series.keys() - live.keys():
            del self._series[gone]
        readings = await asyncio.to_thread(_read, [(i, s.running) for i, s in live.items()])
        now = time.time()
        for sandbox_id, usage, read_at in readings:
            sandbox = live[sandbox_id]
            if sandbox.ended:  # ended while we read: its series must not come back
                continue
            series = self._series.setdefault(sandbox_id, _Series(deque(maxlen=self._kept)))
            previous, previous_at = series.cpu_ns, series.read_at
            series.cpu_ns, series.read_at = usage.cpu_ns, read_at
            if previous is None and usage.cpu_ns is not None:
                continue  # the first reading: the baseline of the next sample's CPU percent
            cpus = sandbox.spec.limits.cpu_count
            pct = None
            if usage.cpu_ns is not None and previous is not None:
                pct = cpu_percent(usage.cpu_ns - previous, read_at - previous_at, cpus)
            series.samples.append(
                Sample(
                    timestamp=now,
                    cpu_count=cpus,
                    cpu_used_pct=pct,
                    mem_used=usage.mem_used,
                    mem_cache=usage.mem_cache,
                    mem_total=usage.mem_total,
                    disk_used=usage.disk_used,
                    disk_total=usage.disk_total,
                )
            )
