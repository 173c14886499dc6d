"""How a jail's agent comes into it, once bubblewrap has made the jail: exec'd by bubblewrap
(``Exec``), or forked by the template's zygote and handed the jail (``Forked``, zygote.py).

Either way the backend runs the same steps (backend.py); an entry says what bubblewrap runs,
which descriptors and pipes it gets, what happens once the ids are mapped, and where the
agent's and bubblewrap's errors are read.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence

from firebox.backends.base import BackendError
from firebox.backends.jail.start_pipes import read_until
from firebox.backends.jail.zygote import HOLDER, AgentFork


class Exec:
    """bubblewrap execs the agent, which inherits its end of the channel."""

    holder: list[str] | None = None  # bwrap runs the agent itself

    def __init__(self, agent: socket.socket) -> None:
        self.agent = agent  # the agent's end of the channel
        # bwrap's and the agent's errors, on one pipe: ours to read (a supervisor's, later)
        self._err_r, self.stderr = os.pipe()

    def pass_fds(self) -> Sequence[int]:
        return (self.agent.fileno(),)

    stdout: int = subprocess.DEVNULL

    def spawned(self) -> None:
        """bubblewrap has its own copies of what it was passed."""
        os.close(self.stderr)
        self.stderr = -1

    async def enter(self, child_pid: int) -> None:
        """Nothing to do: bubblewrap execs the agent once the ids are mapped."""

    def output(self) -> int:
        """The errors' pipe, for the supervisor (ours no more)."""
        fd, self._err_r = self._err_r, -1
        return fd

    def said(self) -> str:
        """What bwrap wrote so far (it failed)."""
        return _available(self._err_r)

    def close(self) -> None:
        """Our copies of what was passed on (the spawn has its own)."""
        for fd in (self._err_r, self.stderr):
            if fd >= 0:
                os.close(fd)
        self._err_r = self.stderr = -1


class Forked:
    """The zygote's fork waits in the jail's cgroups (``AgentFork``); bubblewrap runs a
    placeholder that says on its stdout when the jail is set up, then the fork is handed the
    jail's namespaces and the channel, and becomes the agent."""

    holder: list[str] | None = HOLDER

    def __init__(self, fork: AgentFork, agent: socket.socket) -> None:
        self.fork = fork
        self.agent = agent
        self._ready_r, self.stdout = os.pipe()  # the placeholder's "set up" line
        # one stderr for bwrap and the agent (a socket pair, read as the channel is)
        self._err: socket.socket | None
        self._err, theirs = socket.socketpair()
        self.stderr = theirs.detach()

    def pass_fds(self) -> Sequence[int]:
        return ()

    def spawned(self) -> None:
        os.close(self.stdout)  # bwrap has its own: its line, or EOF if it dies, reaches us
        self.stdout = -1

    async def enter(self, child_pid: int) -> None:
        said = await read_until(self._ready_r, b"\n", "set the jail up")
        if not said:
            raise BackendError("bwrap stopped before it set the jail up")
        self.fork.hand_over(child_pid, self.agent, self.stderr)

    def output(self) -> int:
        err, self._err = self._err, None
        assert err is not None
        err.shutdown(socket.SHUT_WR)
        return err.detach()

    def said(self) -> str:
        return _available(self._err.fileno()) if self._err is not None else ""

    def close(self) -> None:
        for fd in (self._ready_r, self.stdout, self.stderr):
            if fd >= 0:
                os.close(fd)
        self._ready_r = self.stdout = self.stderr = -1
        if self._err is not None:
            self._err.close()
        self.fork.close()


Entry = Exec | Forked


def _available(fd: int, limit: int = 4096) -> str:
    """What can be read from ``fd`` now, without waiting."""
    if fd < 0:
        return ""
    try:
        os.set_blocking(fd, False)
        return os.read(fd, limit).decode(errors="replace").strip()
    except OSError:
        return ""
