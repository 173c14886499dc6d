"""One live microVM on the host: its jailed QEMU in its cgroup, its directory (overlay disk,
sockets) and its QMP connection."""

from __future__ import annotations

import asyncio
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
    ) -> None:
        # the guest's serial console and QEMU's own errors share QEMU's stdout
        assert proc.stdout is not None
        super().__init__(proc, cgroup, reader, writer, proc.stdout, release)
        self._dir = vm_dir
        self._qmp = qmp

    async def _free(self) -> None:
        self._qmp.close()
        await asyncio.to_thread(shutil.rmtree, self._dir, True)
