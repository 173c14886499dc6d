"""A command's output: read from its pipes by one thread and sent to every channel listening.

The channel that started a command listens from the start; ``process.attach`` channels join
while it runs and hear what it writes from then on. Sending blocks on each listener's credit,
so the slowest listener paces the process (its pipe fills), as a lone listener always has; a
listener that cancels is dropped. With nobody listening the pipes are still drained and the
output discarded: the process never blocks on a reader that went away.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import subprocess
import threading
import time

from firebox import protocol
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, log
from firebox.agent.terminals import PTY_FD

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any, Protocol

    class Deadline(Protocol):
        fired: threading.Event


PIPE_SIZE = protocol.CHUNK  # fewer, fuller data frames from a fast writer
KILL_GRACE = 2.0  # seconds to wait for pipes to close after a timeout kill
TRUNCATED = "\n[firebox: output truncated at {limit} bytes; the rest was discarded]\n"


class Listeners:
    """The channels a command's output goes to, and its exit once the output is over."""

    def __init__(self, pid: int, first: Stream) -> None:
        self.pid = pid
        self._cond = threading.Condition(threading.Lock())
        self._streams: list[Stream] = [first]
        self.exit: dict[str, Any] | None = None  # set once the output is over and it is reaped
        self.over = False

    def send(self, fd: int, data: bytes) -> None:
        with self._cond:
            streams = list(self._streams)
        for stream in streams:
            if not stream.send_counted(protocol.Data(fd=fd), data):
                with self._cond, contextlib.suppress(ValueError):
                    self._streams.remove(stream)

    def attach(self, stream: Stream) -> dict[str, Any] | None:
        """Add ``stream`` and block until the process's exit (returned: the channel's result)
        or the stream's cancel (None). Its ``ProcessStarted`` goes out before it may get any
        output; what the process wrote before then is not repeated."""
        stream.send(protocol.ProcessStarted(pid=self.pid))
        stream.on_cancel(self._wake)
        with self._cond:
            if not self.over:
                self._streams.append(stream)
            while not self.over and not stream.cancelled:
                self._cond.wait()
            with contextlib.suppress(ValueError):
                self._streams.remove(stream)
            if self.over and self.exit is None:
                raise Fail("internal", f"reading process {self.pid} failed; see the agent's log")
            return self.exit

    def finish(self, exit: dict[str, Any] | None) -> None:
        """The output is over and the process reaped: every attached channel ends with ``exit``
        (None: reading it failed, and they end with an error)."""
        with self._cond:
            self.over = True
            self.exit = exit
            self._cond.notify_all()

    def _wake(self) -> None:
        # Runs on the agent's reader thread (a cancel): the lock is only ever held briefly.
        with self._cond:
            self._cond.notify_all()


def pump(
    listeners: Listeners,
    popen: subprocess.Popen[bytes],
    deadline: Deadline | None,
    limit: int | None,
    reap: Callable[[subprocess.Popen[bytes]], int],
) -> bool:
    """Forward stdout and stderr as they come, from this one thread, until both close; True
    if the output went past ``limit`` bytes and its rest was discarded. ``reap(popen)`` is
    called the moment the process exits (its pipes may stay open in what it started).

    Past the limit the pipes are still drained, so the process never blocks; its output goes
    nowhere.
    """
    left = limit
    truncated = False
    assert popen.stdout is not None
    if popen.stderr is None:  # a terminal (terminals.py): its output is one stream
        pipes: dict[int, tuple[int, IO[bytes]]] = {popen.stdout.fileno(): (PTY_FD, popen.stdout)}
    else:
        pipes = {popen.stdout.fileno(): (1, popen.stdout), popen.stderr.fileno(): (2, popen.stderr)}
    poller = select.poll()
    for raw in pipes:
        # Over the system's pipe-max-size this fails: the default size works, in smaller frames.
        with contextlib.suppress(OSError):
            fcntl.fcntl(raw, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        poller.register(raw, select.POLLIN)
    # The process is reaped the moment it exits, though what it started may hold its pipes for
    # long: while a zombie of ours waits, the orphan reaper can reap no other dead process, and
    # each one counts against the sandbox's process limit.
    try:
        pidfd = os.pidfd_open(popen.pid)
        poller.register(pidfd, select.POLLIN)
    except OSError:  # an old kernel: reaped once its pipes close
        pidfd = -1
    grace_end: float | None = None
    try:
        while pipes:
            if grace_end is None and deadline is not None and deadline.fired.is_set():
                # A child that left the process group may hold the pipes open: after a timeout
                # kill, stop waiting for them once the grace is over.
                grace_end = time.monotonic() + KILL_GRACE
            wait = 500 if grace_end is None else max(0.0, grace_end - time.monotonic()) * 1000
            events = poller.poll(wait)
            if not events:
                if grace_end is not None and time.monotonic() >= grace_end:
                    log(f"process {popen.pid}: output still open after the timeout kill")
                    return truncated
                continue
            for raw, _ in events:
                if raw == pidfd:
                    reap(popen)
                    poller.unregister(pidfd)
                    continue
                try:
                    data = os.read(raw, protocol.CHUNK)
                except OSError as e:
                    if e.errno != errno.EIO:  # EIO: a terminal whose every user has exited
                        log(f"reading fd {raw} of process {popen.pid} failed: {e}")
                    data = b""
                if not data:
                    poller.unregister(raw)
                    # through its file object, which would otherwise close the number again
                    pipes.pop(raw)[1].close()
                elif not truncated:
                    if left is not None:
                        if len(data) >= left:
                            truncated = True
                            data = data[:left]
                        left -= len(data)
                    if data:
                        listeners.send(pipes[raw][0], data)
                    if truncated:
                        listeners.send(2, TRUNCATED.format(limit=limit).encode())
    finally:
        for _, pipe in pipes.values():
            pipe.close()
        if pidfd >= 0:
            os.close(pidfd)
    return truncated
