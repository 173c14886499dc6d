"""One live microVM on the host: its QEMU process, cgroup and directory, shaped like Popen."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from firebox.backends.base import RunningSandbox
from firebox.backends.jail import cgroups
from firebox.backends.microvm import qemu


class MicroVMSandbox(RunningSandbox):
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        vm_dir: Path,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        qmp: qemu.Qmp | None,
        release: Callable[[], None],
    ) -> None:
        self._proc = proc
        self._cgroup = cgroup
        self._dir = vm_dir
        self.reader = reader
        self.writer = writer
        self._qmp = qmp
        self._release = release
        self._console = bytearray()
        self._console_task = asyncio.create_task(self._drain_console())
        self._cleaned = False

    async def _drain_console(self) -> None:
        # The guest's serial console and QEMU's own errors: the tail is kept for messages,
        # bounded so a chatty guest cannot grow the daemon's memory.
        assert self._proc.stdout is not None
        while chunk := await self._proc.stdout.read(65536):
            self._console += chunk
            del self._console[:-8192]

    def diagnostics(self) -> str:
        return self._console.decode(errors="replace").strip()

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
        self.send_signal(signal.SIGKILL)
        if self._qmp is not None:
            self._qmp.close()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._console_task, 1.0)
        await asyncio.to_thread(self._cgroup.destroy)
        await asyncio.to_thread(shutil.rmtree, self._dir, True)
        self._release()  # only now: its uid may be handed out again

    def limit_events(self) -> dict[str, int]:
        try:
            mem = self._cgroup.memory_events()
            return {"oom_kill": int(mem.get("oom_kill", 0)), "pids_max": self._cgroup.pids_events()}
        except OSError:
            return {}
