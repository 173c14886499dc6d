"""Commands the daemon starts (``process.*``): stream their output, report the exit.

Each command is started as any process of the agent's is (children.py: as its user, in a
session of its own, with the sandbox's limits). The thread of its ``process.start`` request
pumps both its pipes into ``data`` frames for every channel listening (process_output.py: the
starting one, and those of ``process.attach``) and then waits for it (``Popen.wait``);
sending blocks on credit, so a process that writes faster than the daemon's clients read is
stopped by its full pipe, not buffered here. Timeouts share one thread.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import subprocess
import threading
import time

from firebox import protocol
from firebox.agent import children, shell, terminals, users
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, from_os
from firebox.agent.process_output import Listeners, pump

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import Any


class Proc:
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        info: protocol.ProcessInfo,
        stream: Stream,
        pty: int | None = None,
    ) -> None:
        self.popen = popen
        self.info = info
        self.stdin_lock = threading.Lock()
        self.listeners = Listeners(popen.pid, stream)
        self.pty = pty  # the terminal's master, for a command on one (terminals.py)


# The commands running now, by pid; kept under children's spawn lock.
_procs: dict[int, Proc] = {}


def _check_str_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise Fail("invalid", f"{what} must be a non-empty list of strings")
    return [str(a) for a in value]


def start(stream: Stream, msg: protocol.ProcessStart, payload: bytes) -> dict[str, Any] | None:
    if (msg.argv is None) == (msg.cmd is None):
        raise Fail("invalid", "give exactly one of argv or cmd")
    if msg.cmd is not None:
        if not isinstance(msg.cmd, str):
            raise Fail("invalid", "cmd must be a string")
        argv = shell.bash_argv(msg.cmd)
    else:
        argv = _check_str_list(msg.argv, "argv")
    if not isinstance(msg.envs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in msg.envs.items()
    ):
        raise Fail("invalid", "envs must map strings to strings")
    timeout = msg.timeout
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise Fail("invalid", f"timeout must be a positive number of seconds, not {timeout!r}")
    user = users.lookup(msg.user)
    cwd = children.workdir(user, msg.cwd)
    env = {**children.base_env(user, cwd), **msg.envs}
    info = protocol.ProcessInfo(
        pid=0, cmd=msg.cmd, argv=msg.argv, cwd=cwd, user=user.name, tag=msg.tag, envs=msg.envs
    )
    options: dict[str, Any] = {
        "stdin": subprocess.PIPE if msg.stdin else subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "cwd": cwd,
    }
    popen = None
    if msg.pty is not None:
        return _start_on_terminal(stream, msg, argv, user, env, info, cwd, timeout)
    if msg.cmd is not None:
        # a plain command line skips bash (shell.py); whatever fails that way goes to bash,
        # which then answers as it always does
        direct_env = dict(env)
        direct = shell.direct_argv(msg.cmd, direct_env)
        if direct is not None:
            with contextlib.suppress(OSError):
                popen = children.spawn(direct, user, env=direct_env, **options)
    if popen is None:
        try:
            popen = children.spawn(argv, user, env=env, **options)
        except OSError as e:
            raise from_os(e, f"cannot run {argv[0]!r}", user.name) from None
    info.pid = popen.pid
    return _serve(stream, Proc(popen, info, stream), timeout, msg.output_limit)


def _serve(
    stream: Stream, proc: Proc, timeout: float | None, limit: object
) -> dict[str, Any] | None:
    """Run a started command to its end, known by its pid meanwhile (attach, stdin, kill)."""
    with children.spawn_lock:
        _procs[proc.popen.pid] = proc
    try:
        return _run(stream, proc, timeout, output_limit(limit))
    finally:
        with children.spawn_lock:
            _procs.pop(proc.popen.pid, None)
        if not proc.listeners.over:  # _run failed: attached channels must not wait forever
            proc.listeners.finish(None)


def _start_on_terminal(
    stream: Stream,
    msg: protocol.ProcessStart,
    argv: list[str],
    user: users.User,
    env: dict[str, str],
    info: protocol.ProcessInfo,
    cwd: str,
    timeout: float | None,
) -> dict[str, Any] | None:
    """``start`` for a command on a new terminal (terminals.py): its output and the exit as
    for a plain one, the terminal's output as one stream."""
    cols, rows = terminals.size(msg.pty)
    master, slave = terminals.open_pair(cols, rows)
    with contextlib.suppress(OSError):  # the user's terminal, as a login's would be
        os.fchown(slave, user.uid, -1)
    env.setdefault("TERM", "xterm-256color")
    try:
        popen = children.spawn(
            terminals.controlling(argv),
            user,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
        )
    except OSError as e:
        os.close(master)
        raise from_os(e, f"cannot run {argv[0]!r}", user.name) from None
    finally:
        os.close(slave)  # the command holds it now: its exit is the terminal's end
    popen.stdout = open(master, "rb", buffering=0)  # noqa: SIM115 (closed by pump)
    popen.stdin = open(os.dup(master), "wb", buffering=0)  # noqa: SIM115 (closed by _run)
    info.pid = popen.pid
    return _serve(stream, Proc(popen, info, stream, pty=master), timeout, msg.output_limit)


def resize(stream: Stream, msg: protocol.ProcessResize, payload: bytes) -> None:
    proc = _find(msg.pid)
    if proc.pty is None:
        raise Fail("invalid", f"process {msg.pid} has no terminal to resize (start it with pty)")
    cols, rows = terminals.size({"cols": msg.cols, "rows": msg.rows})
    with proc.stdin_lock:  # the master stays open while the lock is held (_run closes it so)
        if proc.popen.stdin is None or proc.popen.stdin.closed:
            raise Fail("not_found", f"process {msg.pid} has exited")
        terminals.resize(proc.popen.stdin.fileno(), cols, rows)


class _Deadlines:
    """One thread for every process's timeout, started on first use: a thread per command
    would cost more than the command itself for short ones."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._cv = threading.Condition()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def add(self, seconds: float, pgid: int) -> _Deadline:
        entry = _Deadline(pgid)
        with self._cv:
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + seconds, self._seq, entry))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="deadlines", daemon=True)
                self._thread.start()
            self._cv.notify()
        return entry

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                when, _, entry = self._heap[0]
                if entry.cancelled:
                    heapq.heappop(self._heap)
                    continue
                delay = when - time.monotonic()
                if delay > 0:
                    self._cv.wait(delay)
                    continue
                heapq.heappop(self._heap)
            entry.fire()


class _Deadline:
    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.cancelled = False
        self.fired = threading.Event()

    def fire(self) -> None:
        self.fired.set()
        _killpg(self.pgid, signal.SIGKILL)


_deadlines = _Deadlines()


def output_limit(value: object) -> int | None:
    """A request's ``output_limit`` (commands' and cells'), checked."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Fail("invalid", f"output_limit must be a positive number of bytes, not {value!r}")
    return value


def _run(stream: Stream, proc: Proc, timeout: float | None, limit: int | None) -> dict[str, Any]:
    popen = proc.popen
    stream.send(protocol.ProcessStarted(pid=popen.pid))
    deadline = _deadlines.add(timeout, popen.pid) if timeout is not None else None
    try:
        # The result follows all the output: pipes first, then the exit status.
        truncated = pump(proc.listeners, popen, deadline, limit, _reap)
        code = _reap(popen)
    finally:
        if deadline is not None:
            deadline.cancelled = True
        with proc.stdin_lock:
            if popen.stdin is not None:
                popen.stdin.close()
    sig = -code if code < 0 else None
    timed_out = deadline is not None and deadline.fired.is_set()
    exit = protocol.ProcessExit(
        exit_code=128 + sig if sig is not None else code,
        signal=sig,
        timed_out=timed_out,
        kernel_oom_kills=kernel_oom_kills() if sig == signal.SIGKILL else None,
        output_truncated=truncated,
        disk_full=code != 0 and disk_full(),
    )
    value = protocol.as_dict(exit)
    proc.listeners.finish(value)
    return value


# Where the sandbox's writes go (each is capped by the sandbox's disk limit).
WRITABLE = ("/home/user", "/tmp")
_DISK_SLACK = 64 * 1024  # less than this left for a user is full for practical purposes


def disk_full() -> bool:
    """Whether a writable filesystem has no room or no inodes left for the user."""
    for path in WRITABLE:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        if st.f_bavail * st.f_frsize < _DISK_SLACK or (st.f_files and st.f_favail == 0):
            return True
    return False


def kernel_oom_kills() -> int | None:
    """The guest kernel's OOM kill count, in a microVM (in a jail it would be the host's)."""
    if os.environ.get("FIREBOX_BACKEND") != "microvm":
        return None
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reap(popen: subprocess.Popen[bytes]) -> int:
    """Wait for ``popen`` (reaping it) and give its pid back to the orphan reaper, once."""
    if popen.returncode is None:
        popen.wait()
        children.forget(popen.pid)
    return popen.returncode


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _find(pid: object) -> Proc:
    with children.spawn_lock:
        proc = _procs.get(pid) if isinstance(pid, int) else None
    if proc is None:
        raise Fail("not_found", f"no process with pid {pid!r} started by the agent is running")
    return proc


def attach(stream: Stream, msg: protocol.ProcessAttach, payload: bytes) -> dict[str, Any] | None:
    """Listen to a running command from now on (process_output.Listeners.attach); the channel's
    result is its exit, as for the channel that started it."""
    return _find(msg.pid).listeners.attach(stream)


def stdin(stream: Stream, msg: protocol.ProcessStdin, payload: bytes) -> None:
    proc = _find(msg.pid)
    with proc.stdin_lock:
        pipe = proc.popen.stdin
        if pipe is None:
            raise Fail("invalid", f"process {msg.pid} was started without stdin (set stdin)")
        if pipe.closed:
            if payload:
                raise Fail("invalid", f"stdin of process {msg.pid} is already closed")
            return
        fd = pipe.fileno()
        os.set_blocking(fd, False)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        view = memoryview(payload)
        while view:
            # Wait in slices: a process that never reads must not pin this thread past a
            # cancel from the daemon (its call timed out).
            if stream.cancelled:
                return
            if not poller.poll(250):
                continue
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                pipe.close()
                raise Fail("invalid", f"process {msg.pid} closed its stdin") from None
        if msg.eof:
            pipe.close()


def kill(stream: Stream, msg: protocol.ProcessSignal, payload: bytes) -> None:
    proc = _find(msg.pid)
    if not isinstance(msg.signal, int) or not 0 < msg.signal < signal.NSIG:
        raise Fail("invalid", f"{msg.signal!r} is not a signal number")
    try:
        os.killpg(proc.popen.pid, msg.signal)
    except ProcessLookupError:
        raise Fail("not_found", f"process {msg.pid} has exited") from None


def list_(stream: Stream, msg: protocol.ProcessList, payload: bytes) -> list[dict[str, Any]]:
    with children.spawn_lock:
        return [protocol.as_dict(p.info) for p in _procs.values()]


def kill_all() -> None:
    """SIGKILL every process group we started: the daemon is gone, nobody will read them."""
    with children.spawn_lock:
        pids = list(_procs)
    for pid in pids:
        _killpg(pid, signal.SIGKILL)
