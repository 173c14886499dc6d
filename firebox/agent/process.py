"""Processes the daemon starts: spawn as a user, stream output, report the exit, reap.

Every process leads its own session and process group (``start_new_session``), so a signal,
a timeout or the agent's shutdown reaches everything it forked. Users are switched by
subprocess itself (``user=``/``group=``/``extra_groups=``), never by a ``preexec_fn``, which
is unsafe in a threaded program.

Each process has one thread that pumps both its pipes into ``data`` frames and then waits for
it (``Popen.wait``); sending blocks on credit, so a process that writes faster than the
daemon's client reads is stopped by its full pipe, not buffered here. Timeouts share one
thread. When the agent is the sandbox's
pid 1 or a child subreaper, orphans are reparented to it, and a reaper thread collects them
without ever waiting for a pid that a Popen owns (which would lose that process's status).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import resource
import select
import signal
import subprocess
import threading
import time

from firebox import protocol
from firebox.agent import privs, shell, spawner, users
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, from_os, log

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import IO, Any

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIPE_SIZE = protocol.CHUNK  # fewer, fuller data frames from a fast writer
KILL_GRACE = 2.0  # seconds to wait for pipes to close after a timeout kill


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], info: protocol.ProcessInfo) -> None:
        self.popen = popen
        self.info = info
        self.stdin_lock = threading.Lock()


_procs: dict[int, Proc] = {}
# Held across Popen() and registration, and by the reaper before it reaps a pid: a pid is
# either known to be a Popen's (the reaper leaves it) or not a Popen's at all.
_spawn_lock = threading.Lock()
_tracked: set[int] = set()
_spawned = threading.Event()


def user_ids(user: users.User) -> dict[str, Any]:
    """Popen arguments that switch to ``user``; none when we already are that user."""
    if os.getuid() == os.geteuid() == user.uid and os.getgid() == os.getegid() == user.gid:
        return {}
    if os.geteuid() != 0:
        raise Fail(
            "permission_denied",
            f"the agent runs as uid {os.geteuid()} and cannot start processes as {user.name!r}",
        )
    ids: dict[str, Any] = {"user": user.uid, "group": user.gid}
    if privs.setgroups_allowed():
        ids["extra_groups"] = []
    return ids


def workdir(user: users.User, path: str | None) -> str:
    """The absolute working directory for ``path`` (default: the user's home), checked as the
    user: chdir happens in the child before it switches to them, so the check must not."""
    cwd = users.resolve(user, path) if path else user.home
    with privs.as_user(user.uid, user.gid, user.name):
        try:
            os.stat(os.path.join(cwd, "."))
        except OSError as e:
            raise from_os(e, f"working directory {cwd}", user.name) from None
    return cwd


def base_env(user: users.User, cwd: str) -> dict[str, str]:
    """The environment everything started for ``user`` begins with: nothing of the agent's,
    and the egress proxy's variables once the sandbox has one."""
    from firebox.agent import egress

    return {
        "PATH": BASE_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PWD": cwd,
        **egress.proxy_env(),
    }


# The sandbox's open-files limit (RLIMIT_NOFILE, soft and hard) for everything the agent
# starts (protocol.Configure; 0 until then); the agent keeps its own, larger one, so a
# sandbox's processes cannot starve it.
_open_files = 0


def open_files() -> int:
    return _open_files


def set_open_files(n: int) -> None:
    """From now on, and for what was started before (the default python interpreter)."""
    global _open_files
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        _open_files = n
        with _spawn_lock:
            started = list(_tracked)
        for pid in started:
            _limit_files(pid)


# What the agent starts is the OOM killer's first choice at the sandbox's memory limit, never
# the agent (which in a jail cannot lower its own score: that takes a host privilege).
CHILD_OOM_SCORE_ADJ = "500"


def _limit(pid: int) -> None:
    _limit_files(pid)
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(CHILD_OOM_SCORE_ADJ)
    except OSError as e:
        log(f"cannot raise the OOM score of {pid}: {e}")


def _limit_files(pid: int) -> None:
    # Set from outside right after the start: a child exec'ing its program cannot have run
    # any of the user's code yet, and what it starts inherits the limit. The hard limit is
    # lowered too, so the process cannot raise it back.
    if _open_files:
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_files, _open_files))
        except (OSError, ValueError) as e:
            log(f"cannot set the open-files limit of {pid}: {e}")


_AGENT_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def spawn(argv: list[str], user: users.User, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a process as ``user`` in a session of its own, known to the orphan reaper (which
    must leave its exit status to us). Callers ``popen.wait()`` and then ``forget`` it."""
    ids = user_ids(user)
    popen["start_new_session"] = True
    with _spawn_lock:
        child = None
        if ids:  # another user: vfork from that user's spawner thread (spawner.py)
            child = spawner.popen(argv, user.uid, user.gid, "extra_groups" in ids, popen)
        if child is None:
            child = subprocess.Popen(argv, **popen, **ids)
        _tracked.add(child.pid)
        _limit(child.pid)
        if _AGENT_NICE < 0:  # the agent runs ahead of user code (a microVM); its children not
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, child.pid, 0)
    _spawned.set()
    return child


def track(pid: int) -> None:
    """A child this process forked itself (no Popen): the reaper must leave it to its owner,
    which ``forget``s it once waited for."""
    with _spawn_lock:
        _tracked.add(pid)


def forget(pid: int) -> None:
    """``pid`` (spawned above) was waited for: the reaper may see that pid again, reused."""
    with _spawn_lock:
        _tracked.discard(pid)


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
    cwd = workdir(user, msg.cwd)
    env = {**base_env(user, cwd), **msg.envs}
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
    if msg.cmd is not None:
        # a plain command line skips bash (shell.py); whatever fails that way goes to bash,
        # which then answers as it always does
        direct_env = dict(env)
        direct = shell.direct_argv(msg.cmd, direct_env)
        if direct is not None:
            with contextlib.suppress(OSError):
                popen = spawn(direct, user, env=direct_env, **options)
    if popen is None:
        try:
            popen = spawn(argv, user, env=env, **options)
        except OSError as e:
            raise from_os(e, f"cannot run {argv[0]!r}", user.name) from None
    info.pid = popen.pid
    proc = Proc(popen, info)
    with _spawn_lock:
        _procs[popen.pid] = proc
    try:
        return _run(stream, proc, timeout, output_limit(msg.output_limit))
    finally:
        with _spawn_lock:
            _procs.pop(popen.pid, None)


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


TRUNCATED = "\n[firebox: output truncated at {limit} bytes; the rest was discarded]\n"


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
        truncated = _pump(stream, popen, deadline, limit)
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
    return protocol.as_dict(exit)


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
        forget(popen.pid)
    return popen.returncode


def _pump(
    stream: Stream, popen: subprocess.Popen[bytes], deadline: _Deadline | None, limit: int | None
) -> bool:
    """Forward stdout and stderr as they come, from this one thread, until both close; True
    if the output went past ``limit`` bytes and its rest was discarded.

    Sending blocks on credit, so a process that writes faster than the daemon's client reads
    is stopped by its full pipe, not buffered here. After a cancel (the client went away) or
    past the limit the pipes are still drained, so the process never blocks; its output goes
    nowhere.
    """
    left = limit
    truncated = False
    assert popen.stdout is not None and popen.stderr is not None
    pipes: dict[int, tuple[int, IO[bytes]]] = {
        popen.stdout.fileno(): (1, popen.stdout),
        popen.stderr.fileno(): (2, popen.stderr),
    }
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
    live = True
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
                    _reap(popen)
                    poller.unregister(pidfd)
                    continue
                try:
                    data = os.read(raw, protocol.CHUNK)
                except OSError as e:
                    log(f"reading fd {raw} of process {popen.pid} failed: {e}")
                    data = b""
                if not data:
                    poller.unregister(raw)
                    # through its file object, which would otherwise close the number again
                    pipes.pop(raw)[1].close()
                elif live and not truncated:
                    if left is not None:
                        if len(data) >= left:
                            truncated = True
                            data = data[:left]
                        left -= len(data)
                    if data:
                        live = stream.send_counted(protocol.Data(fd=pipes[raw][0]), data)
                    if truncated and live:
                        marker = TRUNCATED.format(limit=limit).encode()
                        live = stream.send_counted(protocol.Data(fd=2), marker)
    finally:
        for _, pipe in pipes.values():
            pipe.close()
        if pidfd >= 0:
            os.close(pidfd)
    return truncated


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _find(pid: object) -> Proc:
    with _spawn_lock:
        proc = _procs.get(pid) if isinstance(pid, int) else None
    if proc is None:
        raise Fail("not_found", f"no process with pid {pid!r} started by the agent is running")
    return proc


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
    with _spawn_lock:
        return [protocol.as_dict(p.info) for p in _procs.values()]


def kill_all() -> None:
    """SIGKILL every process group we started: the daemon is gone, nobody will read them."""
    with _spawn_lock:
        pids = list(_procs)
    for pid in pids:
        _killpg(pid, signal.SIGKILL)


def start_reaper() -> None:
    if privs.is_subreaper():
        threading.Thread(target=_reap_orphans, name="reaper", daemon=True).start()


def _reap_orphans() -> None:
    while True:
        # Cleared before looking, so a spawn between "no children" and the wait still wakes us.
        _spawned.clear()
        try:
            # WNOWAIT: look without reaping, so a Popen's child is left to its Popen.
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            _spawned.wait()
            continue
        if found is None:
            continue
        with _spawn_lock:
            if found.si_pid not in _tracked:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(found.si_pid, os.WNOHANG)
                continue
        # A Popen's zombie: its waiting thread reaps it within moments; look again after.
        time.sleep(0.005)
