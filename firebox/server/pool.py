"""Starting sandboxes, and keeping a few started ahead of demand (the warm pool).

``boot`` is the one way a sandbox comes to life: a backend start plus the agent's hello, each
with a deadline. The pool keeps ``size`` booted sandboxes per template so that a create is a
hand-over; it refills in the background. A pooled sandbox belongs to nobody until taken, is
taken at most once (a queue hands each out once), and one that dies while waiting is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox import images, protocol
from firebox.backends.base import Backend, BackendError, RunningSandbox, SandboxSpec
from firebox.server.admission import Admission
from firebox.server.agent_client import AgentClient, AgentError, AgentGone
from firebox.server.config import ServerConfig
from firebox.server.errors import ApiError

log = logging.getLogger("firebox.pool")

START_DEADLINE = 20.0  # seconds for a backend to hand over a connected agent
HELLO_DEADLINE = 10.0
RETRY_DELAY = 5.0  # after a failed refill, so a broken host is not hammered
# A boot takes ~30 ms of CPU; right after a hand-over it would compete with the new sandbox's
# first commands (2 cores here), so refills start a moment later.
REFILL_DELAY = 0.25


@dataclass(eq=False)
class Booted:
    spec: SandboxSpec
    running: RunningSandbox
    agent: AgentClient

    def alive(self) -> bool:
        return self.running.poll() is None and not self.agent.closed

    async def discard(self) -> None:
        await self.agent.close()
        await self.running.cleanup()


def rootfs_for(template: str) -> Path:
    known = images.known_templates()
    if template not in known:
        raise ApiError(
            "invalid_argument", f"unknown template {template!r}; known: {', '.join(known)}"
        )
    rootfs = images.image_path(template)
    if rootfs is None:
        raise ApiError(
            "unavailable",
            f"template {template!r} is not built on this host yet; "
            f"run `firebox image build {template}`",
        )
    return rootfs


def default_limits(config: ServerConfig) -> dict[str, Any]:
    """The SandboxSpec fields a sandbox of the daemon's default size has."""
    return {
        "memory_mb": config.memory_mb,
        "cpus": config.cpus,
        "pids": config.pids,
        "disk_mb": config.disk_mb,
        "open_files": config.open_files,
    }


def spec_for(config: ServerConfig, template: str, **limits: Any) -> SandboxSpec:
    """A new sandbox of ``template`` with the daemon's limits, or those given instead."""
    sandbox_id = "sbx_" + secrets.token_hex(8)
    return SandboxSpec(
        sandbox_id=sandbox_id,
        hostname=sandbox_id.replace("_", "-"),  # its own, and a valid host name
        template=template,
        rootfs=rootfs_for(template),
        **{**default_limits(config), **limits},
    )


async def boot(backend: Backend, spec: SandboxSpec) -> Booted:
    try:
        running = await asyncio.wait_for(backend.start(spec), START_DEADLINE)
    except TimeoutError:
        raise ApiError("timeout", f"the sandbox did not start in {START_DEADLINE:.0f} s") from None
    except BackendError as e:
        raise ApiError("unavailable", str(e)) from None
    agent = AgentClient(running.reader, running.writer)
    try:
        await agent.wait_hello(HELLO_DEADLINE)
    except BaseException as e:  # cancelled too: a half-started sandbox is never stranded
        await agent.close()
        await running.cleanup()
        if not isinstance(e, AgentGone | TimeoutError | protocol.ProtocolError):
            raise
        said = running.diagnostics()
        raise ApiError(
            "sandbox_error",
            f"the sandbox's agent did not start: {e}" + (f" ({said})" if said else ""),
        ) from None
    return Booted(spec, running, agent)


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
    def __init__(
        self, config: ServerConfig, backend: Backend, size: int, admission: Admission
    ) -> None:
        self.config = config
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
                    booted = await boot(self.backend, spec_for(self.config, template))
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
