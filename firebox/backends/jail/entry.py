"""How a jail's agent comes into it, once bubblewrap has made the jail: exec'd by bubblewrap
(``Exec``), or forked by the template's zygote and handed the jail (``Forked``, zygote.py).

Either way the backend runs the same steps (backend.py); an entry says what bubblewrap runs,
which descriptors and pipes it gets, what happens once the ids are mapped, and where the
agent's and bubblewrap's errors are read.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Sequence

from firebox.backends.base import BackendError
from firebox.backends.jail.start_pipes import read_until
from firebox.backends.jail.zygote import HOLDER, AgentFork
from firebox.protocol import STREAM_LIMIT


class Exec:
    """bubblewrap execs the agent, which inherits its end of the channel."""

    holder: list[str] | None = None  # bwrap runs the agent itself

    def __init__(self, agent: socket.socket) -> None:
        self.agent = agent  # the agent's end of the channel

    def pass_fds(self) -> Sequence[int]:
        return (self.agent.fileno(),)

    stdout: int = subprocess.DEVNULL
    stderr: int = subprocess.PIPE  # bwrap's and the agent's, on one pipe

    def spawned(self) -> None:
        """bubblewrap has its own copies of what it was passed."""

    async def enter(self, child_pid: int) -> None:
        """Nothing to do: bubblewrap execs the agent once the ids are mapped."""

    async def output(self, proc: asyncio.subprocess.Process) -> asyncio.StreamReader:
        assert proc.stderr is not None
        return proc.stderr

    def close(self) -> None:
        """Our copies of what was passed on (the spawn has its own)."""


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

    async def output(self, proc: asyncio.subprocess.Process) -> asyncio.StreamReader:
        err, self._err = self._err, None
        assert err is not None
        err.shutdown(socket.SHUT_WR)
        reader, _ = await asyncio.open_connection(sock=err, limit=STREAM_LIMIT)
        return reader

    def close(self) -> None:
        for fd in (self._ready_r, self.stdout, self.stderr):
            if fd >= 0:
                os.close(fd)
        self._ready_r = self.stdout = self.stderr = -1
        if self._err is not None:
            self._err.close()
        self.fork.close()


Entry = Exec | Forked
