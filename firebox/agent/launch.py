"""How a code context's worker is born: started, or forked from a warm python.

A worker is python_worker.py, the node program of js_worker.py, or bash as bash_worker.py
drives it, run as the sandbox user in a session of its own, with three pipes to the agent (see
wire.py): commands in, messages out, and its stdout/stderr. A python one is forked from the
sandbox's fork server (forkserver.py) when it has one, and started when it has not; an agent
forked from the jail's zygote forks its default python worker itself (``prefork``). However
it was born, it is then an ``Interpreter`` (interpreter.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

from firebox.agent import bash_worker, children, js_worker, users
from firebox.agent.errors import Fail, from_os, log
from firebox.agent.interpreter import START_TIMEOUT, Interpreter
from firebox.agent.runtimes import (
    BASH,
    MISSING,
    NODE,
    PYTHON,
    PYTHON_BOOT,
    python_args,
    python_env,
)

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from collections.abc import Callable


def start(language: str, user: users.User, cwd: str) -> Interpreter:
    """Start a worker and wait until it is ready; Fail("unavailable") with the reason if
    it cannot start. A python worker is forked from the sandbox's fork server when it
    has one (forkserver.py), and started when it has not."""
    deadline = time.monotonic() + START_TIMEOUT
    if language == "python":
        interp = _from_forkserver(user, cwd, deadline)
        if interp is not None:
            interp.wait_ready(deadline)
            return interp
    cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    env = python_env(user, cwd) if language == "python" else children.base_env(user, cwd)
    stdin: int = subprocess.DEVNULL
    if language == "python":
        argv = [PYTHON, "-c", PYTHON_BOOT, *python_args(cmd_r, msg_w)]
        keep: tuple[int, ...] = (cmd_r, msg_w)
        path = PYTHON
    elif language in ("javascript", "typescript"):
        # The program fits in the pipe's buffer: written whole before node starts.
        program_r, program_w = os.pipe2(os.O_CLOEXEC)
        os.write(program_w, js_worker.PROGRAM.encode())
        os.close(program_w)
        argv = js_worker.argv(NODE, program_r, cmd_r, msg_w, typescript=language == "typescript")
        keep = (program_r, cmd_r, msg_w)
        path = NODE
    else:
        argv = bash_worker.argv(BASH)
        stdin = cmd_r  # an interactive shell reads its commands on stdin
        keep = (msg_w,)
        path = BASH
    try:
        popen = children.spawn(
            argv,
            user,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=keep,
            cwd=cwd,
            env=env,
        )
    except OSError as e:
        for fd in {cmd_r, cmd_w, msg_r, msg_w, *keep}:
            os.close(fd)
        if e.filename == cwd:  # removed since it was checked
            raise from_os(e, f"working directory {cwd}", user.name) from None
        if isinstance(e, FileNotFoundError):
            raise Fail("unavailable", MISSING[language].format(path=path)) from None
        raise Fail("unavailable", f"cannot start {path}: {e.strerror or e}") from None
    for fd in {cmd_r, msg_w, *keep}:  # the child's ends (msg_w's number is the child's too)
        os.close(fd)
    interp = Interpreter(language, popen, cmd_w, msg_r, msg_w)
    interp.listen()
    interp.wait_ready(deadline)
    return interp


def prefork(user: users.User) -> Interpreter | None:
    """The default python context's worker forked from this process, if it has IPython
    imported (an agent forked from the jail's zygote, zygote.py): a few ms, where
    starting python and importing IPython takes ~0.3 s. Call it before any thread starts.
    Its readiness is waited for as a started one's is (contexts.prestart)."""
    from firebox.agent import python_worker

    if not python_worker.preloaded():
        return None
    cwd = user.home
    env = python_env(user, cwd)
    ids = children.user_ids(user)

    def fork(fds: list[int]) -> int:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child becomes the worker or exits
            try:
                python_worker.become(
                    user.uid,
                    user.gid,
                    "extra_groups" in ids,
                    cwd,
                    env,
                    fds,
                    children.open_files(),
                    python_args(fds[2], fds[3]),
                )
            finally:
                os._exit(70)
        children.track(pid)
        return pid

    return _forked(fork)


def _from_forkserver(user: users.User, cwd: str, deadline: float) -> Interpreter | None:
    """A python worker forked by the fork server, or None to start one instead."""
    from firebox.agent import forkserver

    env = python_env(user, cwd)
    try:
        return _forked(lambda fds: forkserver.fork(user, cwd, env, fds, deadline))
    except forkserver.Unavailable as e:
        log(f"starting a python interpreter, not forking one: {e}")
        return None


def _forked(fork: Callable[[list[int]], int]) -> Interpreter:
    """A python worker made by ``fork``, which is given its stdout, stderr, command and
    message pipes and returns its pid (a child of this process)."""
    cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
    msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = fork([out_w, err_w, cmd_r, msg_w])
    except BaseException:
        for fd in (cmd_w, msg_r, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (cmd_r, msg_w, out_w, err_w):  # the worker's ends
            os.close(fd)
    interp = Interpreter("python", Forked(pid, out_r, err_r), cmd_w, msg_r, msg_w)  # type: ignore[arg-type]
    interp.listen()
    return interp


class Forked:
    """What an Interpreter uses of a Popen, for a forked worker (``prefork``, the fork
    server): a child of this process all the same."""

    def __init__(self, pid: int, out: int, err: int) -> None:
        self.pid = pid
        self.stdout = os.fdopen(out, "rb", buffering=0)
        self.stderr = os.fdopen(err, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped by someone else: its status is lost
                self.returncode = -1
        return self.returncode
