"""A sandbox's lifecycle between create and end: running ⇄ paused, and the timer of each.

    create ──▶ running ──pause──▶ paused ──resume (connect; a call, with auto_resume)──▶ running
                  │                  │
                  └─timeout: kill, or pause (lifecycle.on_timeout)
                                     └─kept longer than --paused-ttl: ended

One change at a time per sandbox (its ``transition`` lock); a call into a sandbox waits for a
change under way, then finds it running, resumes it (``auto_resume``), or is told to resume it.

A pause first detaches every request in flight (their clients get a clear error; a cell or a
command runs on, unheard), closes its egress proxy, then has the backend pause: a microVM's
memory and devices are written to disk and its QEMU ends (its agent quieted first, so the
saved channel is at a frame boundary); a jail is frozen in its cgroup, its memory kept. Resume
undoes it: the backend wakes the sandbox, a microVM's new channel says hello, egress reopens,
and the timeout left at the pause runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from firebox import protocol
from firebox.agent_client import AgentClient, AgentError, AgentGone
from firebox.backends.base import Backend, BackendError
from firebox.server.admission import Admission
from firebox.server.config import ServerConfig
from firebox.server.egress import EgressSettings, SandboxEgress
from firebox.server.errors import ApiError
from firebox.server.live import LiveSandbox, cancel_task
from firebox.server.registry import Registry

log = logging.getLogger("firebox.lifecycle")

QUIET_DEADLINE = 5.0  # for the agent to stop writing before a microVM's state is saved
HELLO_DEADLINE = 15.0  # for a woken microVM's agent to say hello on its new channel
MIB = 1 << 20


class Lifecycle:
    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        backend: Backend,
        admission: Admission,
        egress: EgressSettings,
        owned: Callable[[str], list[LiveSandbox]],
        end: Callable[[LiveSandbox, str], Awaitable[None]],
        watch: Callable[[LiveSandbox], None],
    ) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        self.admission = admission
        self.egress = egress
        self._owned = owned  # a key's sandboxes, paused ones included
        self._end = end  # the manager's: frees everything, once
        self._watch = watch  # (re)starts a running sandbox's liveness monitor

    # -- timers ---------------------------------------------------------------------------

    def schedule(self, live: LiveSandbox) -> None:
        """Its timer: the timeout while it runs; how long it may stay paused once paused."""
        if live.timer is not None:
            live.timer.cancel()
        at = live.end_at
        if live.state == "paused" and live.paused_at is not None:
            at = live.paused_at + self.config.paused_ttl
        delay = max(0.0, at - time.time())
        live.timer = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._expired(live))
        )

    async def _expired(self, live: LiveSandbox) -> None:
        async with live.transition:  # a change under way decides what the timer means
            pass
        if live.ended:
            return
        if live.state == "paused":
            hours = self.config.paused_ttl / 3600
            await self._end(live, f"kept paused for longer than {hours:g} h (--paused-ttl-hours)")
            return
        if time.time() < live.end_at - 0.05:  # its timeout was moved meanwhile
            self.schedule(live)
            return
        if live.settings.lifecycle.on_timeout == "pause":
            try:
                await self.pause(live)
                return
            except ApiError as e:
                log.warning("sandbox %s: could not pause at its timeout: %s", live.id, e.message)
                await self._end(live, f"timeout (it could not be paused: {e.message})")
                return
        await self._end(live, "timeout")

    # -- pause ----------------------------------------------------------------------------

    async def pause(self, live: LiveSandbox) -> None:
        """Pause a running sandbox (a paused one stays as it is); ApiError if it cannot be,
        and then it runs on as before."""
        keeps = live.running.pause_keeps
        if keeps is None:
            raise ApiError(
                "invalid_argument", f"sandboxes of the {live.backend} backend cannot be paused"
            )
        async with live.transition:
            if live.ended:
                raise ApiError("sandbox_not_found", f"sandbox {live.id} ended meanwhile")
            if live.state == "paused":
                return
            self._check_room(live, keeps)
            await cancel_task(live.monitor)
            live.monitor = None
            live.agent.interrupt(
                AgentGone(
                    f"sandbox {live.id} was paused; resume it (Sandbox.connect) and reconnect "
                    "to the commands it runs"
                )
            )
            if live.egress is not None:
                await live.egress.close()
                live.egress = None
            quiesced = False
            try:
                if keeps == "disk":
                    await live.agent.quiesce(QUIET_DEADLINE)
                    quiesced = True
                await live.running.pause()
            except (BackendError, AgentError, AgentGone, TimeoutError, OSError) as e:
                await self._running_on(live, quiesced)
                raise ApiError(
                    "sandbox_error", f"sandbox {live.id} could not be paused ({e}); it runs on"
                ) from None
            if keeps == "disk":
                await live.agent.close()  # its channel ended with its QEMU
            now = time.time()
            live.left = max(0.0, live.end_at - now)
            live.paused_at = now
            live.state = "paused"
            self.registry.set_paused(live.id, now)
            self.registry.set_record(live.id, live.record())
            self.schedule(live)
        log.info("sandbox %s paused (%s kept)", live.id, keeps)

    def _check_room(self, live: LiveSandbox, keeps: str) -> None:
        """Refuse a pause past the key's share of paused storage, or one whose saved state
        would eat into the disk's free-space floor."""
        mine = self._owned(live.owner)
        held = sum(s.running.paused_bytes() for s in mine if s.state == "paused") // MIB
        held += sum(
            s.spec.limits.memory_mb
            for s in mine
            if s.state == "paused" and s.running.pause_keeps == "memory"
        )
        need = live.spec.limits.memory_mb  # at most: its RAM (on disk, or kept frozen)
        if held + need > self.config.max_paused_mb_per_key:
            raise ApiError(
                "rate_limited",
                f"this key's paused sandboxes hold {held} MB and pausing {live.id} needs up to "
                f"{need} MB more, past --max-paused-mb-per-key "
                f"({self.config.max_paused_mb_per_key} MB); kill paused sandboxes you no "
                "longer need",
            )
        if keeps == "disk":
            for disk in self.admission.disks:
                with contextlib.suppress(OSError):
                    free = shutil.disk_usage(disk).free // MIB
                    if free - need < self.config.min_free_disk_mb:
                        raise ApiError(
                            "no_space",
                            f"pausing {live.id} writes up to {need} MB to {disk}, which has "
                            f"{free} MB free of the {self.config.min_free_disk_mb} MB firebox "
                            "keeps free; free some disk space (or kill paused sandboxes) and "
                            "try again; the sandbox runs on",
                        )

    async def _running_on(self, live: LiveSandbox, quiesced: bool) -> None:
        """A pause failed: the sandbox runs as before (its agent may write again)."""
        if quiesced:
            with contextlib.suppress(AgentGone, AgentError, OSError):
                await live.agent.send_control(protocol.Resume(time_ns=time.time_ns()))
        await self.reopen_egress(live)
        self._watch(live)

    # -- resume ---------------------------------------------------------------------------

    async def resume(self, live: LiveSandbox, timeout: int | None = None) -> bool:
        """Run a paused sandbox again, its timeout what was left of it at the pause (or
        ``timeout`` if longer); a running one has its timeout extended to ``timeout``. True
        if it was paused."""
        async with live.transition:
            if live.ended:
                raise ApiError("sandbox_not_found", f"sandbox {live.id} ended meanwhile")
            if live.state == "running":
                if timeout is not None:
                    self.extend(live, timeout)
                return False
            if live.running.pause_keeps == "disk":
                with self.admission.starting(self.backend.committed_mb(live.spec.limits.memory_mb)):
                    await self._wake(live)
            else:
                await self._wake(live)
            now = time.time()
            left = live.left if live.left >= 1 else self.config.default_timeout
            live.end_at = now + max(left, timeout or 0)
            live.state = "running"
            live.paused_at = None
            self.registry.set_paused(live.id, None)
            self.registry.set_end_at(live.id, live.end_at)
            await self.reopen_egress(live)
            self.registry.set_record(live.id, live.record())
            self.schedule(live)
            self._watch(live)
        log.info("sandbox %s resumed", live.id)
        return True

    async def _wake(self, live: LiveSandbox) -> None:
        try:
            await live.running.resume()
            if not live.agent.greeted and not live.agent.closed:
                # adopted while frozen: its answer to Adopt comes now it runs
                await live.agent.wait_hello(HELLO_DEADLINE)
            if live.running.pause_keeps == "disk":  # a new QEMU, a new channel
                agent = AgentClient(live.running.reader, live.running.writer)
                try:
                    await agent.wait_hello(HELLO_DEADLINE)
                except BaseException:
                    await agent.close()
                    raise
                live.agent = agent
        except (BackendError, AgentGone, AgentError, TimeoutError, OSError,
                protocol.ProtocolError) as e:  # fmt: skip
            raise ApiError(
                "sandbox_error",
                f"sandbox {live.id} could not be resumed ({e}); it stays paused: try again, "
                "or kill it",
            ) from None

    async def reopen_egress(self, live: LiveSandbox) -> None:
        if live.egress is not None or not live.policy.opens_anything:
            return
        egress = SandboxEgress(live.id, live.agent, live.policy, self.egress)
        try:
            await egress.start()
        except (AgentError, AgentGone) as e:
            log.warning("sandbox %s: its egress could not reopen: %s", live.id, e)
            return
        live.egress = egress

    async def usable(self, live: LiveSandbox) -> LiveSandbox:
        """``live`` running, for a call into it: resumed if paused and ``auto_resume``;
        ApiError saying how to resume it otherwise."""
        if live.state == "running" and not live.transition.locked():
            return live
        async with live.transition:  # a pause or resume under way ends first
            pass
        if live.ended:
            raise ApiError("sandbox_not_found", f"sandbox {live.id} ended meanwhile")
        if live.state == "paused":
            if not live.settings.lifecycle.auto_resume:
                raise ApiError(
                    "conflict",
                    f"sandbox {live.id} is paused: resume it first (Sandbox.connect or "
                    f"Sandbox.resume; POST /sandboxes/{live.id}/resume), or create sandboxes "
                    "with lifecycle auto_resume to have calls resume them",
                )
            await self.resume(live)
        return live

    @contextlib.asynccontextmanager
    async def unwatched(self, live: LiveSandbox) -> AsyncIterator[None]:
        """Its liveness monitor off meanwhile (a snapshot holds its channel quiet, which the
        monitor would take for a hung agent), on again after."""
        await cancel_task(live.monitor)
        live.monitor = None
        try:
            yield
        finally:
            if not live.ended and live.state == "running":
                self._watch(live)

    def extend(self, live: LiveSandbox, timeout: int) -> None:
        """Its timeout ``timeout`` s from now, never shorter than it was (E2B's connect)."""
        end_at = time.time() + timeout
        if end_at > live.end_at:
            live.end_at = end_at
            self.registry.set_end_at(live.id, end_at)
            self.registry.set_record(live.id, live.record())
            if live.state == "running":
                self.schedule(live)
