"""The agent's entry point: open the channel, drop what must not be inherited, say hello, serve.

Inside a sandbox this runs as
``python3 -I -S -c "...; from firebox.agent.main import main; main()"`` with a ``firebox``
package that holds only ``protocol.py`` and ``agent/``: import nothing else from firebox.

The channel is an inherited, connected stream socket (fd ``FIREBOX_AGENT_FD``, default 3) or
a device opened by path (``FIREBOX_AGENT_PATH``, virtio-serial in a VM). The main thread reads
frames; each request runs in a thread of its own, so a slow one (a process's output, an
upload) never holds up another. When the channel ends, the daemon is gone: every process group
we started is killed and the agent exits.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
from collections.abc import Callable

from firebox import protocol
from firebox.agent import privs, users
from firebox.agent.channel import Conn, Stream
from firebox.agent.errors import Fail, from_os, log

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import Any

    from firebox.agent.interpreter import Interpreter

    Handler = Callable[[Stream, Any, bytes], Any]


# Frames that belong to an open channel; on a channel we no longer know they are late and
# harmless (a credit for a stream that just ended), never a new request.
_STREAM_TYPES = {"credit", "cancel", "detach", "data", "end"}


# Request threads kept even when idle: they serve requests after user code has taken every pid
# the sandbox may have (a fork bomb must not cost the owner control of the sandbox).
WORKER_FLOOR = 4


def _handlers() -> dict[type[protocol.Message], Handler]:
    # Imported after hello is sent: the daemon's first request is usually still on its way.
    from firebox.agent import contexts, egress, files, ports, process, watch

    return {
        protocol.ProcessStart: process.start,
        protocol.ProcessAttach: process.attach,
        protocol.ProcessStdin: process.stdin,
        protocol.ProcessSignal: process.kill,
        protocol.ProcessResize: process.resize,
        protocol.ProcessList: process.list_,
        protocol.FileRead: files.read,
        protocol.FileWrite: files.write,
        protocol.FileList: files.list_,
        protocol.FileStat: files.stat_,
        protocol.FileRemove: files.remove,
        protocol.FileRename: files.rename,
        protocol.FileMakeDir: files.make_dir,
        protocol.WatchStart: watch.watch,
        protocol.ContextCreate: contexts.create,
        protocol.ContextList: contexts.list_,
        protocol.ContextRestart: contexts.restart,
        protocol.ContextRemove: contexts.remove,
        protocol.CodeRun: contexts.run,
        protocol.NetAccept: egress.accept,
        protocol.NetConnect: ports.connect,
    }


def _run(handler: Handler, stream: Stream, msg: protocol.Message, payload: bytes) -> None:
    """Run one request to its final message; no failure of a request ends the agent."""
    try:
        value = handler(stream, msg, payload)
    except Fail as e:
        stream.finish(protocol.Error(code=e.code, message=e.message))
    except OSError as e:
        f = from_os(e)
        stream.finish(protocol.Error(code=f.code, message=f.message))
    except RecursionError:  # os.makedirs and friends recurse once per path component
        stream.finish(protocol.Error(code="invalid", message=f"{msg.T}: the path is too deep"))
    except Exception as e:
        import traceback  # only on this rare path: it costs a millisecond at startup

        log(f"{msg.T} failed:\n{traceback.format_exc()}")
        stream.finish(protocol.Error(code="internal", message=f"{msg.T}: {type(e).__name__}: {e}"))
    else:
        stream.finish(protocol.Result(value=value))


def serve(conn: Conn, handlers: dict[type[protocol.Message], Handler]) -> None:
    from firebox.agent import contexts
    from firebox.agent.workers import Workers

    workers = Workers(floor=WORKER_FLOOR)
    workers.start()
    while True:
        frame = conn.read_frame()
        if frame is None:
            return
        kind = frame.type
        stream = conn.get(frame.channel)
        if stream is not None:
            _route(stream, kind, frame)
            continue
        if frame.channel == protocol.CONTROL_CHANNEL:
            if kind == protocol.Resume.T:
                conn.release()  # held since a pause's Quiesce, if there was one
                _resume(conn, protocol.parse(frame.header))
            elif kind == protocol.Adopt.T:
                conn.release()  # a pause the daemon before did not finish
                conn.detach_all()
                conn.send(protocol.CONTROL_CHANNEL, _hello())
            elif kind == protocol.Quiesce.T:
                conn.hold(protocol.encode(protocol.CONTROL_CHANNEL, protocol.Quiesced()))
            elif kind == protocol.Configure.T:
                _configure(protocol.parse(frame.header))
            continue
        if kind in _STREAM_TYPES:
            continue
        stream = conn.open(frame.channel)
        try:
            msg = protocol.parse(frame.header)
        except protocol.ProtocolError as e:
            stream.finish(protocol.Error(code="invalid", message=str(e)))
            continue
        if isinstance(msg, protocol.Ping):
            stream.finish(protocol.Result())  # answered here: no thread for a round trip
            continue
        handler = handlers.get(type(msg))
        if handler is None:
            stream.finish(protocol.Error(code="invalid", message=f"{kind!r} is not a request"))
            continue
        if isinstance(msg, protocol.CodeRun):  # its place among its context's cells: now
            contexts.arrived(stream, msg)
        try:
            workers.submit(_run, handler, stream, msg, frame.payload)
        except RuntimeError:  # every thread busy and no pid left for another
            if isinstance(msg, protocol.CodeRun):
                contexts.not_run(stream)
            stream.finish(
                protocol.Error(
                    code="busy",
                    message="the sandbox is at its process limit; kill some of its processes",
                )
            )


def _resume(conn: Conn, msg: protocol.Message) -> None:
    """A restored VM: fresh randomness and identity, then hello again (see resume.py)."""
    from firebox.agent import resume

    if isinstance(msg, protocol.Resume):
        if msg.entropy:
            # a clone (of a template, or of a running sandbox's snapshot): what was open in
            # the saved memory belongs to the sandbox it was saved from
            conn.detach_all()
        resume.apply(msg)
    conn.send(protocol.CONTROL_CHANNEL, _hello())


def _configure(msg: protocol.Message) -> None:
    """The sandbox's limits, before any request is read (limits.py)."""
    from firebox.agent import limits

    if isinstance(msg, protocol.Configure):
        limits.configure(msg)


def _hello() -> protocol.Hello:
    return protocol.Hello(agent_pid=os.getpid(), backend=os.environ.get("FIREBOX_BACKEND", ""))


def _route(stream: Stream, kind: str, frame: protocol.Frame) -> None:
    if kind == "credit":
        n = frame.header.get("n", 1)
        if isinstance(n, int) and 0 < n <= protocol.WINDOW:
            stream.add_credit(n)
    elif kind == "cancel":
        stream.cancel()
    elif kind == "detach":
        stream.detach()
    elif kind in ("data", "end"):
        stream.put(protocol.parse(frame.header), frame.payload)
    else:
        log(f"ignoring a {kind!r} frame on busy channel {frame.channel}")


def _open_channel() -> int:
    path = os.environ.get("FIREBOX_AGENT_PATH")
    if path:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    else:
        fd = int(os.environ.get("FIREBOX_AGENT_FD", "3"))
        os.set_inheritable(fd, False)  # nothing we start may talk to the daemon
    if fd < 3:
        # gVisor hands the channel over as stdin: moved above stdio, so that no pipe of ours
        # and no child's dup2 onto 0 can ever be it
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        fd = moved
    _fill_stdio()
    return fd


def _fill_stdio() -> None:
    """/dev/null on any of 0, 1, 2 left closed (runsc passes no stdout when it is stderr's
    pipe): else the next pipe made here would take that number, and a worker that dup2s its
    own stdout there would lose it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _close_strays(keep: int) -> None:
    """Close every inherited descriptor but stdio and the channel: whatever the host side
    leaked into the spawn (an event loop that ignores close_fds, bwrap's own pipes) must not
    sit in the agent, where a bug could hand it to user code."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


AGENT_NAME = "firebox-agent"  # its comm, as ps shows it (a fork's would be the zygote's)
AGENT_NICE = -5


def _own_kernel() -> None:
    """In a microVM the agent is root of its own kernel: it runs a little ahead of user code
    for the CPU (what it starts is reset to nice 0) with its pages kept in RAM, so a guest busy
    or short of memory still answers the daemon's heartbeat."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, AGENT_NICE)
        privs.lock_memory()
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")  # the guest's OOM killer takes user code, never the agent
    except OSError as e:
        log(f"could not raise the agent's priority, lock its memory or shield it: {e}")


def _prefork() -> Interpreter | None:
    """In a fork of the zygote (everything imported already, one thread): the default python
    interpreter forked now, before any thread starts (its limits come with Configure)."""
    from firebox.agent import launch

    try:
        return launch.prefork(users.lookup("user"))
    except (Fail, OSError) as e:
        log(f"could not fork the default python interpreter, starting one instead: {e}")
        return None


# Signals a shell ignores in what it starts in the background (SIGINT, SIGQUIT) or nohup
# ignores (SIGHUP).
INHERITED_IGNORES = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)


def _caught(signum: int, frame: object) -> None:
    """Nothing of the sandbox may signal the agent; what does (a stray ^C) is let go."""


def _catch_inherited_ignores() -> None:
    """What a sandbox's processes start with must not depend on how the daemon was started: a
    daemon run by nohup or from a shell's background ignores these, an ignored signal stays
    ignored across exec, and so a command's or a bash cell's processes could not be
    interrupted (the timeout's ^C did nothing). A caught signal is reset to its default
    across exec: the agent catches them."""
    for sig in INHERITED_IGNORES:
        signal.signal(sig, _caught)


def warm_login_shell() -> None:
    """Run a login shell once before the template's snapshot: E2B's SDKs run every command as
    ``bash -l -c``, and under emulation a clone's first one read bash and the profiles from
    disk (~250 ms); now they are in the snapshot's page cache."""
    try:
        subprocess.run(
            ["/bin/bash", "-l", "-c", "true"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:  # a template without bash: nothing to warm
        log(f"could not warm a login shell: {e}")


def main(forked: bool = False) -> None:
    """Serve the daemon; ``forked`` when this process is a fork of the jail's zygote (which has
    confined it as bwrap would have: zygote.py), not a program bwrap started."""
    _catch_inherited_ignores()
    fd = _open_channel()
    _close_strays(fd)
    privs.set_name(AGENT_NAME)
    privs.harden(root_keeps_caps=os.environ.get("FIREBOX_BUILD") == "1")
    if os.environ.get("FIREBOX_BACKEND") == "microvm":
        _own_kernel()
    seccomp = os.environ.get("FIREBOX_SECCOMP")
    if seccomp:  # a microVM: nothing outside the guest loads the filter for us
        try:
            privs.load_seccomp(seccomp)
        except OSError as e:
            log(f"refusing to serve without the seccomp filter: {e}")
            os._exit(70)
    os.umask(0o022)
    users.prepare_home()
    preforked = _prefork() if forked else None
    conn = Conn(fd)
    conn.send(protocol.CONTROL_CHANNEL, _hello())
    handlers = _handlers()
    from firebox.agent import children, contexts, process

    try:
        privs.become_subreaper()
    except OSError as e:  # python workers are then started, not forked (forkserver.py)
        log(f"could not become a child subreaper: {e}")
    children.start_reaper()
    if os.environ.get("FIREBOX_BACKEND") == "microvm":
        # Imported and prepared now, so that it is already in the template's snapshot: a
        # restored clone resumes without paying for imports under emulation.
        from firebox.agent import limits, resume

        resume.prepare()
        limits.prepare()
        threading.Thread(target=warm_login_shell, name="warm-bash", daemon=True).start()
    elif os.environ.get("FIREBOX_BACKEND") == "gvisor":
        from firebox.agent import limits, resume  # a restored checkpoint resumes as a clone

        resume.prepare()
        try:
            limits.enter_gvisor_cgroup()
        except OSError as e:
            log(f"could not enter the sandbox's pids cgroup: {e}")
        limits.prepare()
        # gVisor's kernel lets a process of the same uid read another's /proc files unless
        # it is not dumpable (it has no check that the reader's capabilities cover the
        # target's, as Linux has): root inside must not see into the agent
        try:
            privs.set_dumpable(False)
        except OSError as e:
            log(f"could not make the agent undumpable: {e}")

    # IPython takes ~0.25 s of CPU to start: do it now, off the first run_code's path.
    contexts.prestart(preforked)
    try:
        serve(conn, handlers)
    except protocol.ProtocolError as e:
        log(f"the daemon broke the protocol, stopping: {e}")
    finally:
        process.kill_all()
        contexts.kill_all()
        # Handler threads may be blocked on credit or on a pipe; nothing is left to wait for.
        os._exit(0)
