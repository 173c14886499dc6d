"""A sandbox's python interpreters forked from a warm one, not each started from nothing.

Starting ``python3`` and importing IPython (and, in the microVM's template, numpy, pandas and
matplotlib) takes ~0.3 s of CPU natively and ~9 s under software emulation, and each such
interpreter holds its own copy of all of it: a 512 MB microVM ran out of memory at its fifth
python context. So the agent starts a *fork server* per sandbox user, when that user's python
interpreter is first needed (in the microVM's template, before the snapshot): ``python3`` with
IPython and the template's warm imports loaded, one thread, nothing of the user's code. Each
interpreter is then a fork of it, which shares those pages until it writes them and is ready
in milliseconds.

The fork server is started as any of the user's processes is (children.spawn): as the user,
with no capability, in a session of its own. So it can give its forks nothing the user's own
code could not have; a user who tampers with it tampers with their own interpreters. It reads
nothing but the agent's requests on a socket pair (SOCK_SEQPACKET): one JSON message with the
worker's stdout, stderr, command and message pipes attached. For each it forks twice: the
middle process exits at once, so the worker is reparented to the agent (a child subreaper),
which waits for it and reads its exit status as for any interpreter it started. The worker
then becomes what an interpreter started for the user would be (``python_worker.become``).

Anything wrong with the fork server (an image without IPython, a server that died) leaves
interpreters to start the ordinary way (launch.start).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from typing import Any

    from firebox.agent import users

MAX_MESSAGE = 1 << 16  # a request: the user, working directory and environment
FDS = 4  # stdout, stderr, commands, messages
NAME = "python-forks"  # in ps and /proc/<pid>/comm
BOOT = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from firebox.agent.forkserver import serve; serve(sys.argv[1:])"
)


# -- the agent's side ---------------------------------------------------------------------------


class Unavailable(Exception):
    """The fork server could not start or went away: start the interpreter instead."""


class Gone(Unavailable):
    """The fork server died (it may have been killed just before): a new one may do."""


class Impossible(Unavailable):
    """No fork server can run here (no python, no IPython, not a subreaper): not tried again."""


def fork(user: users.User, cwd: str, env: dict[str, str], fds: list[int], deadline: float) -> int:
    """The pid of a new python worker for ``user`` (its stdout, stderr, commands and messages
    are ``fds``), a child of this process; raises Unavailable when it is to be started."""
    try:
        return get(user, deadline).fork(cwd, env, fds, deadline)
    except Gone:
        return get(user, deadline).fork(cwd, env, fds, deadline)  # a fresh server, once


class ForkServer:
    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int, sock: socket.socket) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = pidfd  # names it for good: its pid may be another's once it is reaped
        self.sock = sock
        self._lock = threading.Lock()  # one request at a time on the socket

    def alive(self) -> bool:
        if self.pidfd >= 0:
            return not select.select([self.pidfd], [], [], 0)[0]
        # No pidfd (gVisor's kernel has none): between requests the server writes nothing, so
        # a readable socket is its end closed, by its exit
        return self.sock.fileno() >= 0 and not select.select([self.sock], [], [], 0)[0]

    def fork(self, cwd: str, env: dict[str, str], fds: list[int], deadline: float) -> int:
        """The pid of a new python worker (stdout, stderr, commands and messages are
        ``fds``); reparented to this process by the time it is returned."""
        from firebox.agent import children

        request = {"cwd": cwd, "env": env, "open_files": children.open_files()}
        with self._lock:
            try:
                socket.send_fds(self.sock, [json.dumps(request).encode()], fds)
                reply = _receive(self.sock, deadline)
            except (OSError, Unavailable) as e:  # its answer could come late: never reused
                self.stop()
                raise Gone(f"the fork server went away ({e})") from None
        if "pid" not in reply:
            raise Unavailable(f"the fork server could not fork: {reply.get('error')}")
        pid = int(reply["pid"])
        children.track(pid)
        return pid

    def stop(self) -> None:
        """Kill it and close our ends; the orphan reaper reaps it."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            os.close(self.pidfd)
            self.pidfd = -1
        elif self.alive():  # its socket still open: it has not exited, so its pid is its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        # The orphan reaper reaps it: Popen must never wait for (or, collected, poll) a pid
        # that may by then be another process's.
        self.popen.returncode = -signal.SIGKILL
        self.sock.close()


_servers: dict[str, ForkServer] = {}  # by user name
_unavailable: str | None = None  # why none can start here, once known: not tried again
_start_lock = threading.Lock()


def get(user: users.User, deadline: float) -> ForkServer:
    """``user``'s fork server, started (or restarted, if it died) now if need be; raises
    Unavailable when there is none to be had by ``deadline``."""
    global _unavailable
    from firebox.agent import privs

    with _start_lock:
        if _unavailable is None and not privs.is_subreaper():
            _unavailable = "the agent is not a subreaper: it could not wait for a forked worker"
        if _unavailable is not None:
            raise Impossible(_unavailable)
        server = _servers.pop(user.name, None)
        if server is not None and server.alive():
            _servers[user.name] = server
            return server
        if server is not None:
            server.stop()
        try:
            server = _start(user, deadline)
        except Impossible as e:
            _unavailable = str(e)
            raise
        _servers[user.name] = server
        return server


def _start(user: users.User, deadline: float) -> ForkServer:
    from firebox.agent import children, runtimes
    from firebox.agent.errors import log

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [runtimes.PYTHON, "-c", BOOT, runtimes.LIB, str(theirs.fileno())]
    argv.append(runtimes.WARM_IMPORTS)
    try:
        popen = children.spawn(
            argv,
            user,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            cwd="/",
            env=runtimes.python_env(user, "/"),
        )
    except OSError as e:
        ours.close()
        raise Impossible(f"cannot start {runtimes.PYTHON}: {e.strerror or e}") from None
    finally:
        theirs.close()
    try:
        pidfd = os.pidfd_open(popen.pid)  # before forget: not reaped yet, so it is still ours
    except OSError:
        pidfd = -1  # watched through its socket instead (ForkServer.alive)
    # Left to the orphan reaper when it dies (no thread of ours waits for it): a zombie that
    # only the next context start would reap would keep the reaper from every other one.
    children.forget(popen.pid)
    server = ForkServer(popen, pidfd, ours)
    try:
        reply = _receive(ours, deadline)
    except (OSError, Unavailable) as e:
        server.stop()
        raise Unavailable(f"the fork server did not start: {e}") from None
    if not reply.get("ready"):
        server.stop()
        raise Impossible(f"the fork server cannot serve: {reply.get('error')}")
    log(f"python fork server {server.pid} for {user.name} ready")
    return server


def _receive(sock: socket.socket, deadline: float) -> dict[str, Any]:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(left * 1000):
        raise Unavailable("timed out waiting for the fork server")
    data = sock.recv(MAX_MESSAGE)
    if not data:
        raise OSError("the fork server closed its socket")
    reply: dict[str, Any] = json.loads(data)
    return reply


# -- the fork server itself ---------------------------------------------------------------------


def serve(argv: list[str]) -> None:
    """``python3 -c BOOT lib fd warm-imports``: load, say ready, fork workers until the agent
    closes its end."""
    from firebox.agent import privs, python_worker

    privs.set_name(NAME)  # its forks name themselves python3 again (python_worker.become)
    sock = socket.socket(fileno=int(argv[1]))
    python_worker.preload()
    if not python_worker.preloaded():
        sock.send(json.dumps({"error": "IPython cannot be imported"}).encode())
        os._exit(1)
    python_worker.warm_up([m for m in argv[2].split(",") if m] if len(argv) > 2 else [])
    gc.freeze()  # what is loaded now stays shared with every fork: no collection writes it
    sock.send(json.dumps({"ready": True}).encode())
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, FDS)
        except OSError:
            break
        if not data:
            break  # the agent is gone
        try:
            if len(fds) != FDS:
                raise ValueError(f"{len(fds)} descriptors, not {FDS}")
            reply: dict[str, Any] = {"pid": _fork(json.loads(data), fds, sock.fileno())}
        except Exception as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(reply).encode())
    sys.exit(0)


def _fork(request: dict[str, Any], fds: list[int], sock: int) -> int:
    """Fork, and fork again: the worker's pid once its parent has exited (it then belongs to
    the agent, the nearest subreaper)."""
    from firebox.agent import python_worker, runtimes

    out, err, cmd, msg = fds
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - exits
        try:
            os.close(pid_r)
            os.close(sock)
            worker = os.fork()
            if worker == 0:
                try:
                    os.close(pid_w)
                    python_worker.become(
                        os.getuid(),
                        os.getgid(),
                        False,  # the groups the agent gave this server's user
                        request["cwd"],
                        request["env"],
                        [out, err, cmd, msg],
                        request["open_files"],
                        runtimes.python_args(cmd, msg),
                    )
                except BaseException:  # on its stderr, which the agent reports
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(70)
            os.write(pid_w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    with os.fdopen(pid_r, "rb") as f:
        written = f.read()
    os.waitpid(middle, 0)  # reparenting is done before the parent learns of the exit
    if not written:
        raise OSError("the fork failed")
    return int(written)
