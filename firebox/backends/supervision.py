"""Handing sandboxes to their supervisors (firebox/supervisor/main.py says what one does).

A Python start costs ~40 ms here, so one supervisor waits ready ahead of the next sandbox and
another is started as soon as it is taken: a start only sends it two descriptors. Each listens
in the owner's run directory (root's only, under /run: gone at a reboot, as the supervisors
are), where a daemon, this one or the next, connects to its sandbox's agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from firebox.backends.agent_files import stage_host
from firebox.backends.base import BackendError
from firebox.confine import cgroups
from firebox.images.cache import image_root
from firebox.protocol import STREAM_LIMIT

log = logging.getLogger("firebox.supervision")

HANDOVER_DEADLINE = 10.0  # for a supervisor to start (a loaded host) and take a sandbox
CONNECT_DEADLINE = 5.0
FORGET_DEADLINE = 3.0  # for a supervisor to end once its sandbox has (its channel and output)
CONTROL_ENV = "FIREBOX_SUPERVISOR_FD"  # as firebox/supervisor/main.py reads it


@dataclass(frozen=True)
class Supervised:
    """Where a sandbox's supervisor is: its socket, its output's tail, its pid."""

    socket: Path
    tail: Path
    pid: int

    def tail_text(self) -> str:
        try:
            return self.tail.read_bytes().decode(errors="replace").strip()
        except OSError:
            return ""

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The agent's channel, through the supervisor; BackendError if it is gone."""
        try:
            async with asyncio.timeout(CONNECT_DEADLINE):
                return await asyncio.open_unix_connection(str(self.socket), limit=STREAM_LIMIT)
        except (OSError, TimeoutError) as e:
            raise BackendError(f"the sandbox's supervisor is gone ({e})") from None

    async def forget(self) -> None:
        """The sandbox is gone: its socket (if left) and output's tail go too, once its
        supervisor has ended (else it could write the tail again after)."""
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)
            try:
                loop = asyncio.get_running_loop()
                ended = asyncio.Event()
                loop.add_reader(pidfd, ended.set)
                try:
                    async with asyncio.timeout(FORGET_DEADLINE):
                        await ended.wait()
                except TimeoutError:
                    pass
                finally:
                    loop.remove_reader(pidfd)
            finally:
                os.close(pidfd)
        for path in (self.socket, self.tail):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def as_dict(self) -> dict[str, object]:
        return {"socket": str(self.socket), "tail": str(self.tail), "pid": self.pid}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Supervised:
        return cls(Path(str(d["socket"])), Path(str(d["tail"])), int(str(d["pid"])))


@dataclass
class _Ready:
    proc: asyncio.subprocess.Process
    control: socket.socket


class Supervisors:
    def __init__(self, run_dir: Path, cgroup_parent: str | None = None) -> None:
        self.run_dir = run_dir
        self.cgroup_parent = cgroup_parent  # where they are held (cgroups.hold_supervisor)
        self._unheld = ""  # why they could not be, said once
        self._ready: _Ready | None = None
        self._starting: asyncio.Task[_Ready] | None = None
        self._lib: Path | None = None

    async def supervise(
        self, sandbox_id: str, agent: socket.socket, output: int | None
    ) -> tuple[Supervised, asyncio.StreamReader, asyncio.StreamWriter]:
        """Hand ``sandbox_id``'s end of its agent channel and its output to a supervisor, and
        connect to the agent through it. ``agent`` and ``output`` are the supervisor's after
        this (closed here either way)."""
        try:
            ready = await self._take()
            supervised = await self._hand_over(ready, sandbox_id, agent, output)
        finally:
            agent.close()
            if output is not None:
                os.close(output)
        reader, writer = await supervised.connect()
        return supervised, reader, writer

    async def _take(self) -> _Ready:
        ready, self._ready = self._ready, None
        if ready is None or ready.proc.returncode is not None:
            if self._starting is not None:  # the one being started ahead: ours now
                task, self._starting = self._starting, None
                ready = await task
            else:
                ready = await self._start()
        self._ahead()
        return ready

    def _ahead(self) -> None:
        """Start the next one now, off the path of the start that took this one."""
        if self._ready is None and self._starting is None:
            task = asyncio.ensure_future(self._start())
            self._starting = task

            def done(t: asyncio.Task[_Ready]) -> None:
                if self._starting is t:
                    self._starting = None
                    if not t.cancelled() and t.exception() is None:
                        self._ready = t.result()

            task.add_done_callback(done)

    async def _start(self) -> _Ready:
        if self._lib is None:
            self._lib = await asyncio.to_thread(stage_host, image_root())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        code = (
            f"import sys; sys.path.insert(0, {str(self._lib)!r}); "
            "from firebox.supervisor.main import main; main()"
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                code,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={CONTROL_ENV: str(theirs.fileno()), "PATH": "/usr/bin:/bin"},
                cwd="/",
                # its own session: a signal to the daemon's group (^C, a service stop's
                # SIGTERM to the daemon) never reaches it
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        if self.cgroup_parent is not None:
            try:
                await asyncio.to_thread(cgroups.hold_supervisor, proc.pid, self.cgroup_parent)
            except (OSError, ValueError) as e:  # it runs on, in the daemon's cgroup
                if not self._unheld:
                    self._unheld = str(e)
                    log.warning("supervisors stay in the daemon's cgroup: %s", e)
        return _Ready(proc, ours)

    async def _hand_over(
        self, ready: _Ready, sandbox_id: str, agent: socket.socket, output: int | None
    ) -> Supervised:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        supervised = Supervised(
            self.run_dir / f"{sandbox_id}.sock", self.run_dir / f"{sandbox_id}.tail", ready.proc.pid
        )
        settings = json.dumps({"listen": str(supervised.socket), "tail": str(supervised.tail)})
        fds = [agent.fileno()] + ([output] if output is not None else [])
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HANDOVER_DEADLINE):
                socket.send_fds(ready.control, [settings.encode()], fds)  # small: never blocks
                reply = await loop.sock_recv(ready.control, 4096)
        except (OSError, TimeoutError) as e:
            ready.proc.kill()
            raise BackendError(f"could not hand the sandbox to its supervisor: {e}") from None
        finally:
            ready.control.close()
        if reply.strip() != b"ok":
            said = reply.decode(errors="replace").strip() or "it exited"
            raise BackendError(f"the sandbox's supervisor could not take it: {said}")
        return supervised

    def sweep(self, keep: frozenset[str]) -> int:
        """Remove what supervisors of sandboxes not in ``keep`` left in the run directory (a
        sandbox that died while no daemon ran leaves its output's tail); how many files."""
        removed = 0
        for path in self.run_dir.iterdir() if self.run_dir.is_dir() else ():
            if path.suffix in (".sock", ".tail") and path.stem not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    async def close(self) -> None:
        """Stop the supervisors waiting for a sandbox (those holding one run on); the run
        directory goes if none is left in it."""
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
            self._starting = None
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.control.close()  # its end of file: it exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.proc.wait(), 5)
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()
