"""The running sandbox that one gated host process holds, for either backend: bwrap around
the jail's agent, or the bwrap around a microVM's QEMU (firebox.confine.gate starts both);
its agent's channel held by its supervisor, so that it outlives the daemon."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from firebox.backends.adopted import AdoptedProcess, HeldProcess, start_time
from firebox.backends.base import BackendError, RunningSandbox, SandboxUsage
from firebox.backends.supervision import Supervised
from firebox.confine import cgroups
from firebox.confine.uids import UidSlots


@dataclass
class Adopted:
    """What of a sandbox an earlier daemon started is still there, taken over (``adopt``)."""

    proc: AdoptedProcess
    cgroup: cgroups.CgroupSet
    supervised: Supervised
    slot: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    release: Callable[[], None]


async def adopt(
    held: dict[str, Any],
    slots: UidSlots,
    cgroup_parent: str,
    what: str,
    connect: Callable[[AdoptedProcess], Awaitable[object]] | None = None,
) -> Adopted:
    """Take over a sandbox's host process ``what`` (bwrap, QEMU: by pid and start time), its
    uid range, its cgroup and its agent's channel through its supervisor, from its
    ``RunningSandbox.held``; then ``connect`` what else the backend holds of it. BackendError
    if any of it is gone, with what was taken let go."""
    proc = AdoptedProcess.of(int(held["pid"]), int(held["started"]))
    if proc is None:
        raise BackendError(f"its {what} is gone")
    slot = int(held["slot"])
    if not await asyncio.to_thread(slots.reclaim, slot):
        proc.kill()
        raise BackendError("its host uid range is held by another daemon")
    cgroup = await asyncio.to_thread(cgroups.attach, str(held["cgroup"]), cgroup_parent)
    supervised = Supervised.from_dict(held["supervisor"])
    try:
        reader, writer = await supervised.connect()
        if connect is not None:
            await connect(proc)
    except BaseException:
        proc.kill()
        await asyncio.to_thread(cgroup.destroy)
        slots.release(slot)
        raise
    return Adopted(proc, cgroup, supervised, slot, reader, writer, lambda: slots.release(slot))


def take_slot(slots: UidSlots) -> int:
    """A host uid range for a new sandbox (confine/uids.py), or BackendError saying why not."""
    try:
        return slots.take()
    except OSError as e:
        raise BackendError(f"no host uid range for the sandbox: {e.strerror or e}") from None


class ConfinedSandbox(RunningSandbox):
    """A sandbox held by one gated host process (bwrap, or the bwrap around QEMU) in its own
    cgroup, with a uid range to give back. Its agent's channel goes through its supervisor
    (supervision.py), which also keeps the tail of the process's output (stderr, or a VM's
    console) for error messages; backends free what else they hold in ``_free``."""

    def __init__(
        self,
        proc: HeldProcess,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        supervised: Supervised,
        slot: int,
        release: Callable[[], None],
    ) -> None:
        self._cleaned = False
        self._frozen = False  # by _freeze, until _thaw
        self._rebind(proc, cgroup, reader, writer, supervised, slot, release)

    def _rebind(
        self,
        proc: HeldProcess,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        supervised: Supervised,
        slot: int,
        release: Callable[[], None],
    ) -> None:
        """Hold a (new) process: at start, at adoption, and when a paused microVM's new QEMU
        takes over."""
        self._proc = proc
        self._cgroup = cgroup
        self.reader = reader
        self.writer = writer
        self._supervised = supervised
        self._slot = slot
        self._release = release  # gives the uid range back once every process is gone
        self._started = start_time(proc.pid)

    def held(self) -> dict[str, Any]:
        """What a later daemon needs to adopt it (Backend.adopt)."""
        return {
            "pid": self._proc.pid,
            "started": self._started,
            "cgroup": self._cgroup.name,
            "slot": self._slot,
            "supervisor": self._supervised.as_dict(),
        }

    @property
    def slot(self) -> int:
        return self._slot

    async def reconnect(self) -> None:
        """A new channel to the agent through its supervisor (a restarted daemon's)."""
        self.reader, self.writer = await self._supervised.connect()

    async def _stop_holder(self) -> None:
        """End the held process and free its cgroup and uid range, keeping the rest (a paused
        microVM's directory): ``_rebind`` may hold a new one later."""
        self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        await asyncio.to_thread(self._cgroup.destroy)
        release, self._release = self._release, lambda: None
        release()

    def diagnostics(self) -> str:
        return self._supervised.tail_text()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def send_signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        if self._frozen:  # a frozen process acts on its SIGKILL only once thawed (cgroup v1)
            with contextlib.suppress(BackendError):
                await self._thaw("sandbox")
        # The held process's death takes the sandbox with it (its pid namespace, or the VM);
        # then the cgroup is emptied too, the one handle that cannot miss a process. The
        # supervisor ends once the agent's channel and the output have.
        self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        await asyncio.to_thread(self._cgroup.destroy)
        await self._supervised.forget()
        await self._free()
        # only now: a cgroup that could not be emptied keeps its uid range out of use
        self._release()

    async def _free(self) -> None:
        """What the backend holds beyond the process and its cgroup (after both are gone)."""

    async def _freeze(self, what: str) -> None:
        """Pause by freezing every host process of the sandbox in its cgroup (memory kept):
        a jail's and a gVisor sandbox's ``pause``. ``what`` names it in the error."""
        try:
            await asyncio.to_thread(self._cgroup.freeze)
        except OSError as e:
            raise BackendError(f"could not freeze the {what}: {e}") from None
        self._frozen = True

    async def _thaw(self, what: str) -> None:
        try:
            await asyncio.to_thread(self._cgroup.thaw)
        except OSError as e:
            raise BackendError(f"could not thaw the {what}: {e}") from None
        self._frozen = False

    async def set_priority(self, background: bool) -> None:
        # Its cgroup's CPU and I/O weights: everything of the sandbox on the host is in it (a
        # jail's processes, a microVM's QEMU), children born later too. A few small writes that
        # never wait on the sandbox, so no thread: a hand-over waits on this.
        try:
            cgroups.set_weight(self._cgroup, background)
        except OSError as e:
            what = "background" if background else "normal"
            raise BackendError(f"could not give the sandbox the {what} priority: {e}") from e

    def limit_events(self) -> dict[str, int]:
        try:
            mem = self._cgroup.memory_events()
            return {"oom_kill": int(mem.get("oom_kill", 0)), "pids_max": self._cgroup.pids_events()}
        except OSError:
            return {}

    def usage(self) -> SandboxUsage | None:
        # The cgroup holds everything of the sandbox on the host. For a jail that is its
        # processes (and its disk: tmpfs pages are charged to it). For a microVM it is QEMU:
        # its memory is the guest RAM QEMU has touched since the snapshot (copy-on-write pages
        # of the template's) plus QEMU's own, and its CPU time is the guest's and the
        # emulator's together; the guest's own page cache sits inside that RAM, unseen here.
        try:
            cg = self._cgroup.usage()
            disk_used, disk_total = self._disk()
        except OSError:  # the cgroup or disk is being removed: the sandbox is ending
            return None
        return SandboxUsage(
            cpu_ns=cg.cpu_ns,
            mem_used=cg.working_set,
            mem_cache=cg.cache,
            mem_total=cg.memory_limit,
            disk_used=disk_used,
            disk_total=disk_total,
        )

    def _disk(self) -> tuple[int | None, int | None]:
        """Bytes used and total of the sandbox's writable disk, where the host can tell."""
        return None, None
