"""The jail's zygote: one process per template with the agent and IPython already imported,
from which each jail's agent (and its first python interpreter) is forked instead of started.

Starting the agent and IPython in every new jail costs ~0.3 s of CPU and ~45 MB that no two
jails share. A fork of a process that has done it costs a few milliseconds, and its pages stay
shared with the zygote until written.

The zygote runs the image's ``python3`` as the host's root, in a mount namespace of its own
showing the image read-only (the daemon starts it with bubblewrap, backends/jail/zygote.py), in
the host's other namespaces: it must be, to enter a jail's. It holds nothing of any jail and
reads nothing but the daemon's requests on its socket (SOCK_SEQPACKET). For each request
it forks a child that:

1. joins the jail's cgroups (before anything else, so all it ever does is counted there), and
   waits on its own socket pair with the daemon for the rest;
2. joins the jail's namespaces — user first, then IPC, UTS, network, cgroup, pid and mount,
   whose root becomes its root — all made by bubblewrap for a placeholder process, and set up
   completely before the daemon asks (the placeholder has said so);
3. becomes the jail's root (an unprivileged uid on the host) and forks into the jail's pid
   namespace;
4. becomes exactly what bubblewrap would have started as the agent: a session of its own, no
   descriptor but the channel and its stderr, the agent's capabilities and no other, no new
   privileges, the jail's seccomp filter and a clean environment;
5. runs the agent (``main.main(forked=True)``), which forks its default python interpreter before it
   starts a thread (launch.prefork).

Every step that fails ends the child with a message on its stderr, which the daemon reads; the
jail is then not started, never started half-confined.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AGENT_FD = 3  # where the agent finds its channel
MAX_FDS = 16
LINK_DEADLINE = 60.0  # seconds a fork waits for its jail to be set up before it gives up
# Joined in this order: the user namespace first, which gives the rights to join the others;
# the mount namespace last, since joining it changes what every path means.
NAMESPACES = ("user", "ipc", "uts", "net", "cgroup", "pid", "mnt")
_libc = ctypes.CDLL(None, use_errno=True)


def preload() -> None:
    """Import what every jail's agent and python interpreter will use."""
    from firebox.agent import (  # noqa: F401  (imported to be shared, not used here)
        charts,
        children,
        contexts,
        egress,
        files,
        interpreter,
        launch,
        main,
        process,
        python_output,
        python_shell,
        python_worker,
        runtimes,
        shell,
        spawner,
        watch,
    )

    python_worker.preload()


def serve() -> None:
    os.setgroups([])  # none of the host root's groups goes into a jail
    PR_SET_CHILD_SUBREAPER = 36
    # Each jail's agent is reparented here when its first fork exits: reaped by us, never left
    # to the host's init.
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # Reaped at once: a jail's agent that ended is a zombie of ours until then, and a zombie
    # keeps its cgroup from being removed.
    signal.signal(signal.SIGCHLD, lambda signum, frame: _reap())
    preload()
    gc.collect()
    gc.freeze()  # a collection in a child must not write to (and so copy) the shared objects
    control = socket.socket(fileno=int(os.environ["FIREBOX_ZYGOTE_FD"]))
    control.send(b'{"ready": true}')
    while True:
        _reap()
        ready, _, _ = select.select([control], [], [], 1.0)
        if not ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 65536, MAX_FDS)
        if not message:
            return  # the daemon is gone
        try:
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(control, request, fds)  # never returns
        except Exception as e:
            control.send(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode())
        else:
            control.send(json.dumps({"pid": pid}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(control: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote's reaper is not ours
        control.close()
        named = dict(zip(request["fds"], fds, strict=True))
        # Into the jail's cgroups first, while the daemon is still starting bubblewrap: a move
        # waits for an RCU grace period (cgroup v1), which the two moves then share.
        me = str(os.getpid()).encode()
        for key, fd in named.items():
            if key.startswith("cgroup"):
                os.write(fd, me)
                os.close(fd)
        # The rest comes once bubblewrap has set the jail up; nothing, if it failed.
        link = socket.socket(fileno=named["link"])
        link.settimeout(LINK_DEADLINE)
        message, more, _, _ = socket.recv_fds(link, 65536, MAX_FDS)
        if not message:
            os._exit(0)
        link.close()
        request = json.loads(message)
        named = dict(zip(request["fds"], more, strict=True))
        os.dup2(named["stderr"], 2)
        _enter(request, named)
    except BaseException as e:  # whatever it was, the child must not return into the loop
        why = f"firebox zygote: could not start the agent: {type(e).__name__}: {e}\n"
        os.write(2, why.encode())
        os._exit(70)


def _enter(request: dict[str, Any], named: dict[str, int]) -> None:
    for ns in NAMESPACES:
        if _libc.setns(named[f"ns:{ns}"], 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"joining the jail's {ns} namespace: {os.strerror(err)}")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    if os.fork() != 0:
        os._exit(0)  # the agent, forked into the jail's pid namespace, goes on alone
    _become_agent(request, named)


def _become_agent(request: dict[str, Any], named: dict[str, int]) -> None:
    from firebox.agent import main, privs

    os.setsid()
    with os.fdopen(named["seccomp"], "rb", closefd=False) as f:
        program = f.read()
    os.dup2(named["stderr"], 1)  # 2 is it already (_child)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(named["agent"], AGENT_FD)
    os.closerange(AGENT_FD + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    sys.setrecursionlimit(1000)  # a fresh interpreter's (importing IPython raised it to 3000)
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ["FIREBOX_AGENT_FD"] = str(AGENT_FD)
    privs.keep_only_caps(request["caps"])
    privs.load_seccomp_program(program, "the jail's seccomp filter")  # with no-new-privs
    main.main(forked=True)
    os._exit(0)
