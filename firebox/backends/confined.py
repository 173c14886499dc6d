"""The running sandbox that one gated host process holds, for either backend: bwrap around
the jail's agent, or the bwrap around a microVM's QEMU (firebox.confine.gate starts both)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from firebox.backends.base import BackendError, RunningSandbox, SandboxUsage
from firebox.confine import cgroups
from firebox.confine.uids import UidSlots


def take_slot(slots: UidSlots) -> int:
    """A host uid range for a new sandbox (confine/uids.py), or BackendError saying why not."""
    try:
        return slots.take()
    except OSError as e:
        raise BackendError(f"no host uid range for the sandbox: {e.strerror or e}") from None


class ConfinedSandbox(RunningSandbox):
    """A sandbox held by one gated host process (bwrap, or the bwrap around QEMU) in its own
    cgroup, with a uid range to give back. The tail of ``output`` (stderr, or a VM's console)
    is kept for error messages; backends free what else they hold in ``_free``."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        output: asyncio.StreamReader,
        release: Callable[[], None],
    ) -> None:
        self._cleaned = False
        self._tail = bytearray()
        self._rebind(proc, cgroup, reader, writer, output, release)

    def _rebind(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        output: asyncio.StreamReader,
        release: Callable[[], None],
    ) -> None:
        """Hold a (new) process: at start, and when a paused microVM's new QEMU takes over."""
        self._proc = proc
        self._cgroup = cgroup
        self.reader = reader
        self.writer = writer
        self._release = release  # gives the uid range back once every process is gone
        self._tail_task = asyncio.create_task(self._keep_tail(output))

    async def _stop_holder(self) -> None:
        """End the held process and free its cgroup and uid range, keeping the rest (a paused
        microVM's directory): ``_rebind`` may hold a new one later."""
        self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._tail_task, 1.0)
        await asyncio.to_thread(self._cgroup.destroy)
        release, self._release = self._release, lambda: None
        release()

    async def _keep_tail(self, output: asyncio.StreamReader) -> None:
        # bounded, so a noisy sandbox cannot grow the daemon's memory
        while chunk := await output.read(65536):
            self._tail += chunk
            del self._tail[:-8192]

    def diagnostics(self) -> str:
        return self._tail.decode(errors="replace").strip()

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
        # The held process's death takes the sandbox with it (--die-with-parent); then the
        # cgroup is emptied too, the one handle that cannot miss a process.
        self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._tail_task, 1.0)
        await asyncio.to_thread(self._cgroup.destroy)
        await self._free()
        # only now: a cgroup that could not be emptied keeps its uid range out of use
        self._release()

    async def _free(self) -> None:
        """What the backend holds beyond the process and its cgroup (after both are gone)."""

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
