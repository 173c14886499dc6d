"""The warm pool: a few sandboxes started ahead of demand (boot.py starts them, as any).

The pool keeps booted sandboxes per template, of the daemon's default limits, so that a
create is a hand-over; it refills in the background. A pooled sandbox belongs to nobody until
taken, is taken at most once (a queue hands each out once), and one that dies while waiting
is dropped.

The default template's pool is there from the daemon's start. A built template gets one at
its first create (``ensure``), of its own size, with its start command already ready in each
sandbox; one nobody has taken from for ``IDLE`` seconds is emptied and stops, so templates
nobody uses hold nothing.

The pool helps, never hurts: a refill is work the host does for a later create, so it gives
way to the work of now. A pooled sandbox runs at background priority (its cgroup's CPU and I/O
weights, ``RunningSandbox.set_priority``) while it starts, warms up and waits, and gets the
normal one in ``take``, before the caller sees it. The refill's own work in the daemon (~30 ms
of CPU a boot, and its channel's traffic) starts each step only once the daemon is quiet
(``_quiet``): no create for ``REFILL_DELAY`` and the daemon's CPU near idle, as it is unless
creates or calls are being served (all of them pass through it). So under back-to-back creates
the pool waits rather than booting and warming a sandbox beside each create's own boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.backends.base import Backend, BackendError, SandboxSpec
from firebox.server.admission import Admission
from firebox.server.boot import HELLO_DEADLINE, START_DEADLINE, Booted, boot, spec_for
from firebox.server.errors import ApiError
from firebox.settings import Limits

log = logging.getLogger("firebox.pool")

RETRY_DELAY = 5.0  # after a failed refill, so a broken host is not hammered
# A boot takes ~30 ms of the daemon's CPU; right after a hand-over it would compete with the
# new sandbox's first commands (2 cores here), so a refill's step waits this long after the
# last create (back-to-back creates hold it until they stop) ...
REFILL_DELAY = 0.25
# ... and until the daemon has used under BUSY of a core over PROBE seconds: serving a call
# takes 1-2 ms of its CPU (one client's back-to-back calls: 15-40 % of a core), while an idle
# daemon uses ~0.2 %. A step held HOLD_MAX goes ahead anyway (at background priority), so a
# daemon that is never quiet still refills, slowly.
PROBE = 0.05
BUSY = 0.05
HOLD_MAX = 10.0
WARM_UP_DEADLINE = 60.0
IDLE = 600.0  # seconds without a take before a built template's pool is emptied
FORGET_WAIT = 10.0  # seconds a forgotten pool's refill is waited for (forget)


@dataclass(frozen=True)
class Source:
    """What a pool of one template starts: a spec each time, what makes a booted one ready
    (a built template's start command), how many it keeps, and whether it ever idles out."""

    spec: Callable[[], SandboxSpec]
    size: int
    ready: Callable[[Booted], Awaitable[None]] | None = None
    keep: bool = False


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
        self.size = size  # per template, unless its own says otherwise
        self.admission = admission  # a pooled sandbox counts against the host's limits
        self._sources: dict[str, Source] = {}
        self._ready: dict[str, asyncio.Queue[Booted]] = {}
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._taken: dict[str, float] = {}  # when each pool was last asked
        self._leaving: set[asyncio.Task[None]] = set()  # refills of forgotten pools, ending
        self._asked = 0.0  # when a create last asked any pool (foreground work arriving)
        self._closed = False

    def start(self, templates: list[str]) -> None:
        """Pools of firebox's own ``templates``, kept for as long as the daemon runs."""
        for template in templates:
            self.ensure(
                template,
                Source(functools.partial(spec_for, template, self.limits), self.size, keep=True),
            )

    def ensure(self, key: str, source: Source) -> None:
        """A pool for ``key`` filling from ``source``, unless there is one."""
        self._taken[key] = time.monotonic()
        if self._closed or source.size <= 0 or key in self._refills:
            return
        self._sources[key] = source
        self._ready[key] = asyncio.Queue()
        self._wake[key] = asyncio.Event()
        self._refills[key] = asyncio.create_task(self._refill(key))

    async def take(self, key: str) -> Booted | None:
        """A live booted sandbox of ``key``'s pool at once, at the normal priority, or None
        (the caller boots one)."""
        self._taken[key] = self._asked = time.monotonic()
        queue = self._ready.get(key)
        if queue is None:
            return None
        while not queue.empty():
            booted = queue.get_nowait()
            self._wake[key].set()
            if booted.alive() and await self._raise(booted):
                return booted
            await booted.discard()
        return None

    async def _raise(self, booted: Booted) -> bool:
        """Give a pooled sandbox the normal priority before anyone uses it; False if that
        failed, and the caller discards it: nobody is handed a sandbox that yields to all."""
        try:
            await booted.running.park(False)
            await booted.running.set_priority(False)
        except BackendError as e:
            log.warning("pooled sandbox %s: %s; discarded", booted.spec.sandbox_id, e)
            return False
        except BaseException:  # cancelled: the sandbox is nobody's, and not to be lost
            await booted.discard()
            raise
        return True

    def levels(self) -> dict[str, int]:
        """Sandboxes waiting, per pool."""
        return {key: q.qsize() for key, q in self._ready.items()}

    def waiting(self) -> int:
        """Sandboxes waiting in the pool (each of the default size)."""
        return sum(q.qsize() for q in self._ready.values())

    async def forget(self, key: str) -> None:
        """Stop ``key``'s pool and discard what it holds (its template is going). Its refill
        is told and cancelled, and waited for ``FORGET_WAIT`` at most: one whose cancel was
        lost in a wait it was in (a template's DELETE once waited 300 s for the pool to idle
        out) still ends at its next step, discarding what it made meanwhile."""
        self._sources.pop(key, None)  # what the refill looks at before each step
        if (wake := self._wake.get(key)) is not None:
            wake.set()
        task = self._refills.pop(key, None)
        if task is not None:
            task.cancel()
            # held until it ends (asyncio keeps only weak references to tasks: a dropped one
            # can be collected mid-boot, its sandbox left running), and waited for at close
            self._leaving.add(task)
            task.add_done_callback(self._left)
            await asyncio.wait({task}, timeout=FORGET_WAIT)
        await self._drain(key)

    def _left(self, task: asyncio.Task[None]) -> None:
        self._leaving.discard(task)
        if not task.cancelled():
            task.exception()  # looked at: a refill's own error is logged where it happens

    async def _drain(self, key: str) -> None:
        queue = self._ready.pop(key, None)
        self._wake.pop(key, None)
        self._sources.pop(key, None)
        while queue is not None and not queue.empty():
            await queue.get_nowait().discard()

    def _idle(self, key: str, source: Source) -> bool:
        return not source.keep and (time.monotonic() - self._taken.get(key, 0.0) > IDLE)

    def _serving(self, key: str, source: Source) -> bool:
        """Whether a refill of ``source`` is still wanted (not closed, not forgotten)."""
        return not self._closed and self._sources.get(key) is source

    async def _quiet(self, key: str, source: Source) -> bool:
        """Wait until the daemon is quiet before a refill's next step (see the module's
        docstring): ``REFILL_DELAY`` since the last create, and under ``BUSY`` of a core
        over the last ``PROBE`` seconds. Only this pool's step waits, never a create. The
        CPU is the whole daemon's, so another pool's refill step holds this one too: the
        refills take turns. False, at once, if the pool is closed or forgotten meanwhile."""
        held_until = time.monotonic() + HOLD_MAX
        while self._serving(key, source) and time.monotonic() < held_until:
            since = time.monotonic() - self._asked
            if since < REFILL_DELAY:
                await asyncio.sleep(REFILL_DELAY - since)
                continue
            cpu, start = time.process_time(), time.monotonic()
            await asyncio.sleep(PROBE)
            used = (time.process_time() - cpu) / (time.monotonic() - start)
            if used < BUSY and time.monotonic() - self._asked >= REFILL_DELAY:
                break
        return self._serving(key, source)

    async def _refill(self, key: str) -> None:
        source, queue, wake = self._sources.get(key), self._ready.get(key), self._wake.get(key)
        if source is None or queue is None or wake is None:
            return  # forgotten before it began
        if not source.keep:
            # a built template's pool starts as its first create does: let that one go first
            await asyncio.sleep(REFILL_DELAY * 4)
        while self._serving(key, source):
            if self._idle(key, source):
                log.warning("warm pool for %s: unused for %.0f s, emptied", key, IDLE)
                self._refills.pop(key, None)
                await self._drain(key)
                return
            if queue.qsize() >= source.size:
                wake.clear()
                with contextlib.suppress(TimeoutError):  # wakes now and then to see if idle
                    await asyncio.wait_for(wake.wait(), IDLE / 4)
                continue
            if not await self._quiet(key, source):
                return
            try:
                with self.admission.starting():
                    # at background priority from its start to its hand-over (take)
                    booted = await boot(self.backend, source.spec(), background=True)
                    try:
                        if source.ready is not None and await self._quiet(key, source):
                            await source.ready(booted)
                        if await self._quiet(key, source):
                            await warm_up(booted)
                        await booted.running.park(True)
                    except BaseException:  # cancelled too (forget): never left running
                        await booted.discard()
                        raise
                    if not self._serving(key, source):
                        await booted.discard()
                        return
                    queue.put_nowait(booted)
            except ApiError as e:
                log.warning("warm pool for %s could not start a sandbox: %s", key, e.message)
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
        for task in [*self._refills.values(), *self._leaving]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, START_DEADLINE + HELLO_DEADLINE + 5)
        for key in list(self._ready):
            await self._drain(key)
