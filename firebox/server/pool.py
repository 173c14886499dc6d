"""The warm pool: a few sandboxes started ahead of demand (boot.py starts them, as any).

The pool keeps ``size`` booted sandboxes per template, of the daemon's default limits, so that
a create is a hand-over; it refills in the background. A pooled sandbox belongs to nobody
until taken, is taken at most once (a queue hands each out once), and one that dies while
waiting is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.backends.base import Backend
from firebox.server.admission import Admission
from firebox.server.boot import HELLO_DEADLINE, START_DEADLINE, Booted, boot, spec_for
from firebox.server.errors import ApiError
from firebox.settings import Limits

log = logging.getLogger("firebox.pool")

RETRY_DELAY = 5.0  # after a failed refill, so a broken host is not hammered
# A boot takes ~30 ms of CPU; right after a hand-over it would compete with the new sandbox's
# first commands (2 cores here), so refills start a moment later.
REFILL_DELAY = 0.25
WARM_UP_DEADLINE = 60.0


async def warm_up(booted: Booted) -> None:
    """Take the paths a new sandbox's first calls take, once, before anyone waits on them: a
    silent python cell (no execution counted, nothing kept) and a command. Best effort.

    A first call is several times slower than the next on every backend: IPython compiles
    and imports on its first cell (4 ms against 1.5 in a jail), and a restored microVM's CPU
    emulator starts with an empty translation cache."""
    agent = booted.agent
    try:
        async with asyncio.timeout(WARM_UP_DEADLINE):
            cell = await agent.run_code(
                protocol.CodeRun(code="None", language="python", silent=True)
            )
            async for _ in cell:
                pass
            proc = await agent.start_process(protocol.ProcessStart(cmd="true"))
            async for _ in proc:
                pass
    except (TimeoutError, AgentGone, AgentError) as e:
        log.warning("warming up pooled sandbox %s failed: %s", booted.spec.sandbox_id, e)


class WarmPool:
    def __init__(self, limits: Limits, backend: Backend, size: int, admission: Admission) -> None:
        self.limits = limits  # every pooled sandbox has these: the daemon's defaults
        self.backend = backend
        self.size = size
        self.admission = admission  # a pooled sandbox counts against the host's limits
        self._ready: dict[str, asyncio.Queue[Booted]] = {}
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closed = False

    def start(self, templates: list[str]) -> None:
        if self.size <= 0:
            return
        for template in templates:
            self._ready[template] = asyncio.Queue()
            self._wake[template] = asyncio.Event()
            self._refills[template] = asyncio.create_task(self._refill(template))

    async def take(self, template: str) -> Booted | None:
        """A live booted sandbox for ``template`` at once, or None (the caller boots one)."""
        queue = self._ready.get(template)
        if queue is None:
            return None
        while not queue.empty():
            booted = queue.get_nowait()
            self._wake[template].set()
            if booted.alive():
                return booted
            await booted.discard()
        return None

    def waiting(self) -> int:
        """Sandboxes waiting in the pool (each of the default size)."""
        return sum(q.qsize() for q in self._ready.values())

    async def _refill(self, template: str) -> None:
        queue = self._ready[template]
        wake = self._wake[template]
        while not self._closed:
            if queue.qsize() >= self.size:
                wake.clear()
                await wake.wait()
                await asyncio.sleep(REFILL_DELAY)
                continue
            try:
                with self.admission.starting():
                    booted = await boot(self.backend, spec_for(template, self.limits))
                    await warm_up(booted)
                    if self._closed:
                        await booted.discard()
                        return
                    queue.put_nowait(booted)
            except ApiError as e:
                log.warning("warm pool for %s could not start a sandbox: %s", template, e.message)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), RETRY_DELAY)  # close() wakes us
                continue

    async def close(self) -> None:
        # Let a boot in progress finish and discard its sandbox rather than cancel it halfway,
        # which could strand a started jail; cancel only past the boot's own deadlines.
        self._closed = True
        for wake in self._wake.values():
            wake.set()
        for task in self._refills.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, START_DEADLINE + HELLO_DEADLINE + 5)
        for queue in self._ready.values():
            while not queue.empty():
                await queue.get_nowait().discard()
