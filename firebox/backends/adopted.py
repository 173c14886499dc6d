"""A sandbox's host process (bwrap, QEMU) as a daemon that did not start it holds it: after a
restart it is nobody's child here, so it is watched through a pidfd, which pins it (a reused
pid can never be signalled by mistake) and becomes readable when it exits.

``start_time`` (field 22 of /proc/<pid>/stat, in clock ticks since boot) is recorded when the
sandbox starts and checked when it is adopted: a pid alone could name another process by now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Protocol


class HeldProcess(Protocol):
    """What a running sandbox needs of its host process (asyncio's Process has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()  # noqa: SIM115
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields follow its last ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


class AdoptedProcess:
    """A process started by an earlier daemon, Popen-shaped. Its exit status is its parent's
    to read (init's): an exited one reports -1."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._on_exit)

    @classmethod
    def of(cls, pid: int, started: int) -> AdoptedProcess | None:
        """The process ``pid`` if it is still the one that started at ``started``."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        if start_time(pid) != started:  # checked after pinning it: the answer cannot change
            os.close(pidfd)
            return None
        return cls(pid, pidfd)

    @property
    def pid(self) -> int:
        return self._pid

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self.returncode = -1
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        return -1

    def send_signal(self, sig: int) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
