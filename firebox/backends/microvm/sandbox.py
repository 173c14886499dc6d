"""One live microVM on the host: its jailed QEMU in its cgroup, its directory (overlay disk,
sockets) and its QMP connection. Paused, it is only that directory: its disk, and the state
its pause wrote (all of its RAM and its devices), from which ``resume`` starts a new QEMU."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox.backends.adopted import HeldProcess
from firebox.backends.base import BackendError, SandboxSpec
from firebox.backends.confined import ConfinedSandbox
from firebox.backends.microvm import qemu
from firebox.backends.supervision import Supervised
from firebox.confine import cgroups

log = logging.getLogger("firebox.microvm")

PAUSE_DEADLINE = 120.0  # to write a VM's RAM to disk: ~1 s per 300 MB here
STATE_FILE = "paused.state"  # all of a paused VM, as its QEMU saved it (a migration stream)
# the same, made by a helper QEMU once the pause has returned (saved.rebake): its RAM as a file
# the woken QEMU maps copy-on-write and lazily (a stream is copied whole: ~0.5 s more here),
# and its devices alone
BAKED_MEM = "paused.mem"
BAKED_DEV = "paused.dev"


@dataclass(frozen=True)
class Waking:
    """What waking a paused VM needs: its QEMU's shape (RAM of its own, not the template's
    file), the snapshot entry its disk's backing file is in, and the backend's wake."""

    vm: qemu.VmConfig
    entry: Path
    spec: SandboxSpec
    wake: Callable[[MicroVMSandbox, Waking], Awaitable[None]]
    bake: Callable[[MicroVMSandbox, Waking], Awaitable[None]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "vm", dataclasses.replace(self.vm, mem_path=""))


class _NoProcess:
    """The host process of a VM asleep on disk: none, as if it had exited."""

    pid = 0
    returncode = 0

    async def wait(self) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass

    def kill(self) -> None:
        pass


class MicroVMSandbox(ConfinedSandbox):
    pause_keeps = "disk"

    def __init__(
        self,
        proc: HeldProcess,
        cgroup: cgroups.CgroupSet,
        vm_dir: Path,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        qmp: qemu.Qmp | None,
        supervised: Supervised,
        slot: int,
        release: Callable[[], None],
        backing: Path | None = None,
        disk_bytes: int | None = None,
        waking: Waking | None = None,
    ) -> None:
        super().__init__(proc, cgroup, reader, writer, supervised, slot, release)
        self._dir = vm_dir
        self._qmp = qmp
        self._backing = backing  # the snapshot's rw.img, under this VM's overlay
        self._disk_bytes = disk_bytes
        self._waking = waking
        self._paused = False
        self._leases: list[int] = []  # a snapshot entry an adopted VM's disk is backed by
        self._baking: asyncio.Task[None] | None = None

    @classmethod
    async def asleep(
        cls,
        vm_dir: Path,
        waking: Waking,
        backing: Path | None,
        disk_bytes: int | None,
        cgroup: cgroups.CgroupSet,
    ) -> MicroVMSandbox:
        """A VM paused by an earlier daemon: its directory only, no QEMU and no channel,
        until ``resume`` wakes it."""
        ours, theirs = socket.socketpair()
        theirs.close()  # a channel that has ended: the agent is asleep on disk
        reader, writer = await asyncio.open_connection(sock=ours)
        run_dir = vm_dir.parent  # any path: nothing listens for an asleep VM
        supervised = Supervised(run_dir / "none.sock", run_dir / "none.tail", 0)
        sandbox = cls(
            _NoProcess(),
            cgroup,
            vm_dir,
            reader,
            writer,
            None,
            supervised,
            -1,
            release=lambda: None,
            backing=backing,
            disk_bytes=disk_bytes,
            waking=waking,
        )
        sandbox._paused = True
        return sandbox

    def keep_lease(self, fd: int) -> None:
        """Hold ``fd`` (a lease on the snapshot its disk is backed by) until it is freed."""
        self._leases.append(fd)

    @property
    def waking(self) -> Waking | None:
        return self._waking

    @property
    def qmp(self) -> qemu.Qmp | None:
        return self._qmp

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def state_file(self) -> Path:
        return self._dir / STATE_FILE

    def _disk(self) -> tuple[int | None, int | None]:
        # The host cannot see the guest's ext4, only the blocks its disk holds: the overlay's
        # (what this VM wrote since the snapshot, less what the guest discarded) and the
        # snapshot disk's beneath it. A block rewritten since counts in both, so this is an
        # upper bound of what the guest's files take, capped at the disk's size.
        if self._backing is None or self._disk_bytes is None:
            return None, self._disk_bytes
        held = sum(os.stat(p).st_blocks * 512 for p in (self._dir / "rw.qcow2", self._backing))
        return min(held, self._disk_bytes), self._disk_bytes

    def paused_bytes(self) -> int:
        """What the paused VM holds on disk beyond the snapshot: its saved state and overlay."""
        return sum(
            p.stat().st_blocks * 512
            for p in (self.state_file, self.baked_mem, self.baked_dev, self._dir / "rw.qcow2")
            if p.exists()
        )

    @property
    def baked_mem(self) -> Path:
        return self._dir / BAKED_MEM

    @property
    def baked_dev(self) -> Path:
        return self._dir / BAKED_DEV

    @property
    def _baked_part(self) -> Path:
        return self._dir / (BAKED_DEV + ".part")

    def baked(self) -> bool:
        """Whether its pause has been made into a RAM file (resumes map it lazily)."""
        return self.baked_mem.exists() and self.baked_dev.exists()

    async def _bake(self) -> None:
        assert self._waking is not None
        try:
            await self._waking.bake(self, self._waking)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the stream stays: a resume loads it whole
            log.warning("could not bake the paused VM %s: %s", self._dir.name, e)
            for path in (self.baked_mem, self.baked_dev):
                path.unlink(missing_ok=True)

    async def pause(self) -> None:
        """Write the VM's RAM and devices to its directory and end its QEMU; its disk stays.
        The agent's channel must be quiet first (``AgentClient.quiesce``). On failure the VM
        runs on as before."""
        if self._waking is None:
            raise BackendError("this VM cannot be paused (it was not restored from a snapshot)")
        qmp = self._qmp
        assert qmp is not None
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await qemu.save_state(qmp, fd, PAUSE_DEADLINE)
            # on disk before QEMU goes, and its name too: a paused VM survives a power loss
            await asyncio.to_thread(_sync, fd, self._dir)
        except BaseException:
            with contextlib.suppress(Exception):
                await qmp.execute("migrate_cancel")
                await qmp.execute("cont")
            self.state_file.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        await self._stop_holder()
        qmp.close()
        self._paused = True
        self._baking = asyncio.create_task(self._bake())

    async def resume(self) -> None:
        assert self._waking is not None
        if self._baking is not None:
            if not self._baking.done():  # its stream loads sooner than the bake would end
                self._baking.cancel()
            with contextlib.suppress(BaseException):
                await self._baking
            self._baking = None
        await self._waking.wake(self, self._waking)
        # the RAM lives in QEMU again (a baked RAM file stays only as long as QEMU maps it),
        # and whatever a bake cut short left goes too
        for path in (self.state_file, self.baked_mem, self.baked_dev, self._baked_part):
            path.unlink(missing_ok=True)

    def woken(
        self,
        proc: HeldProcess,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        qmp: qemu.Qmp,
        supervised: Supervised,
        slot: int,
        release: Callable[[], None],
    ) -> None:
        self._qmp = qmp
        self._paused = False
        self._rebind(proc, cgroup, reader, writer, supervised, slot, release)

    def held(self) -> dict[str, Any]:
        waking = self._waking
        return {
            **super().held(),
            "dir": str(self._dir),
            "paused": self._paused,
            "backing": str(self._backing) if self._backing else None,
            "disk_bytes": self._disk_bytes,
            "entry": str(waking.entry) if waking else None,
            "vm": waking.vm.as_dict() if waking else None,
        }

    async def _free(self) -> None:
        if self._baking is not None:
            self._baking.cancel()  # its helper QEMU ends with it
            with contextlib.suppress(BaseException):
                await self._baking
        if self._qmp is not None:
            self._qmp.close()
        for fd in self._leases:
            with contextlib.suppress(OSError):
                os.close(fd)
        await asyncio.to_thread(shutil.rmtree, self._dir, True)


def _sync(fd: int, directory: Path) -> None:
    os.fsync(fd)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
