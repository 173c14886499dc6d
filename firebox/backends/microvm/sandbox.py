"""One live microVM on the host: its jailed QEMU in its cgroup, its directory (overlay disk,
sockets) and its QMP connection."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from firebox.backends.confined import ConfinedSandbox
from firebox.backends.microvm import qemu
from firebox.confine import cgroups


class MicroVMSandbox(ConfinedSandbox):
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        vm_dir: Path,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        qmp: qemu.Qmp,
        release: Callable[[], None],
        backing: Path | None = None,
        disk_bytes: int | None = None,
    ) -> None:
        # the guest's serial console and QEMU's own errors share QEMU's stdout
        assert proc.stdout is not None
        super().__init__(proc, cgroup, reader, writer, proc.stdout, release)
        self._dir = vm_dir
        self._qmp = qmp
        self._backing = backing  # the snapshot's rw.img, under this VM's overlay
        self._disk_bytes = disk_bytes

    def _disk(self) -> tuple[int | None, int | None]:
        # The host cannot see the guest's ext4, only the blocks its disk holds: the overlay's
        # (what this VM wrote since the snapshot, less what the guest discarded) and the
        # snapshot disk's beneath it. A block rewritten since counts in both, so this is an
        # upper bound of what the guest's files take, capped at the disk's size.
        if self._backing is None or self._disk_bytes is None:
            return None, self._disk_bytes
        held = sum(os.stat(p).st_blocks * 512 for p in (self._dir / "rw.qcow2", self._backing))
        return min(held, self._disk_bytes), self._disk_bytes

    async def _free(self) -> None:
        self._qmp.close()
        await asyncio.to_thread(shutil.rmtree, self._dir, True)
