"""The daemon's side of a template's zygote (the process itself is firebox/agent/zygote.py).

A zygote is the image's ``python3`` with the agent and IPython imported, run as the host's
root by bubblewrap in a mount namespace showing the image read-only, in the host's other
namespaces. A jail started with it is bubblewrap holding every namespace for a placeholder
(``HOLDER``), into which the zygote forks the agent: see backend.py and agent/zygote.py.

If the zygote cannot start (an image without python3, a host where bubblewrap may not run as
root), the jail backend starts each agent itself as before; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
from pathlib import Path

from firebox.backends.agent_files import GUEST_LIB
from firebox.backends.base import BackendError
from firebox.backends.jail.bwrap import AGENT_CAPS, GUEST_PATH
from firebox.confine import seccomp
from firebox.confine.cgroups import CgroupSet

log = logging.getLogger("firebox.jail")

ZYGOTE_COMMAND = [
    "/usr/bin/python3",
    "-I",
    "-c",
    f"import sys; sys.path.insert(0, {GUEST_LIB!r}); from firebox.agent.zygote import serve; "
    "serve()",
]
READY_DEADLINE = 60.0  # seconds to import the agent and IPython (under load, emulated disks)
REQUEST_DEADLINE = 10.0  # seconds for the zygote to fork for one request


# What bubblewrap runs in a jail whose agent comes from the zygote: a placeholder that holds
# the namespaces and says once, on its stdout (a pipe to the daemon), that bubblewrap has set
# them up: bubblewrap only execs its command once every mount, the seccomp filter and the
# capability drop are in place. dash, not bash: a third of the start-up.
HOLDER = ["/bin/sh", "-c", "echo; exec /bin/sleep infinity"]


class Zygote:
    def __init__(self, rootfs: Path, agent_lib: Path) -> None:
        self.rootfs = rootfs
        self.agent_lib = agent_lib
        self.proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self.failed: str | None = None
        self.was_ready = False  # it started once (a zygote that never could is not retried)

    @property
    def ready(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.failed is None

    async def start(self) -> None:
        """Start it and wait until it has imported everything; on failure ``failed`` says why
        (and the backend starts agents itself)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            "bwrap",
            *("--ro-bind", str(self.rootfs), "/"),
            *("--ro-bind", str(self.agent_lib), GUEST_LIB),
            *("--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"),
            # it must keep the host root's capabilities to join the jails' namespaces; it
            # runs no code but the image's python and the agent's
            *("--cap-add", "ALL"),
            *("--die-with-parent", "--new-session", "--clearenv"),
            *("--setenv", "PATH", GUEST_PATH, "--setenv", "LANG", "C.UTF-8"),
            *("--setenv", "FIREBOX_BACKEND", "jail"),
            *("--setenv", "FIREBOX_ZYGOTE_FD", str(theirs.fileno())),
            "--",
            *ZYGOTE_COMMAND,
        ]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                cwd="/",
                start_new_session=True,
            )
        except OSError as e:
            self.failed = f"could not start bubblewrap: {e}"
            ours.close()
            return
        finally:
            theirs.close()
        self._sock = ours
        try:
            reply = await asyncio.to_thread(self._receive, READY_DEADLINE)
        except (OSError, ValueError) as e:
            reply = {"error": str(e)}
        if reply.get("ready") is not True:
            self.failed = f"the zygote did not get ready: {reply.get('error', reply)}"
            await self.close()
        else:
            self.was_ready = True

    def _receive(self, deadline: float) -> dict[str, object]:
        assert self._sock is not None
        self._sock.settimeout(deadline)
        data = self._sock.recv(65536)
        if not data:
            raise OSError("the zygote exited")
        reply = json.loads(data)
        if not isinstance(reply, dict):
            raise ValueError(f"unexpected answer {reply!r}")
        return reply

    async def fork_agent(self, cgroup: CgroupSet, env: dict[str, str]) -> AgentFork:
        """Have the zygote fork a jail's agent-to-be, which joins ``cgroup`` at once and
        waits for the rest (``AgentFork.hand_over``), then runs with ``env`` (bwrap.py
        ``agent_env``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds: dict[str, int] = {}
        try:
            for i, path in enumerate(cgroup.paths):
                fds[f"cgroup:{i}"] = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
            fds["link"] = theirs.fileno()
            async with self._lock:
                if not self.ready or self._sock is None:
                    raise BackendError(f"the zygote is not running ({self.failed or 'exited'})")
                body = json.dumps({"fds": list(fds)}).encode()
                sock = self._sock

                def exchange() -> dict[str, object]:
                    sock.settimeout(REQUEST_DEADLINE)
                    socket.send_fds(sock, [body], list(fds.values()))
                    return self._receive(REQUEST_DEADLINE)

                # The thread sends our descriptors: it must be done with them before they are
                # closed, and with the socket before the next request, even if we are
                # cancelled.
                done = asyncio.ensure_future(asyncio.to_thread(exchange))
                try:
                    reply = await asyncio.shield(done)
                except asyncio.CancelledError:
                    await asyncio.wait([done])
                    raise
                except (OSError, ValueError) as e:
                    self.failed = f"the zygote stopped answering: {e}"
                    raise BackendError(self.failed) from e
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            for key, fd in fds.items():
                if key != "link":
                    os.close(fd)
        pid = reply.get("pid")
        if not isinstance(pid, int):
            ours.close()
            raise BackendError(f"the zygote could not fork an agent: {reply.get('error')}")
        return AgentFork(pid, ours, env)

    async def close(self) -> None:
        """Stop it by its pid (the agents it forked live on in their jails)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


class AgentFork:
    """A zygote's fork waiting in a jail's cgroups for the rest of what it needs."""

    def __init__(self, pid: int, link: socket.socket, env: dict[str, str]) -> None:
        self.pid = pid  # the host pid of the zygote's fork (the agent is its child)
        self._link = link
        self._env = env  # the agent's environment, as bwrap would have set it

    def hand_over(self, child_pid: int, agent: socket.socket, stderr: int) -> None:
        """Once bubblewrap has set the jail up, send the fork the jail's descriptors: it joins
        the jail of bubblewrap's ``child_pid`` and becomes the agent on ``agent``
        (agent/zygote.py)."""
        fds = namespace_fds(child_pid)
        try:
            fds["seccomp"] = seccomp.write_filter_fd()
            fds["agent"] = agent.fileno()
            fds["stderr"] = stderr
            request = {"env": self._env, "caps": list(AGENT_CAPS), "fds": list(fds)}
            self._link.settimeout(REQUEST_DEADLINE)  # one small message: it never waits
            socket.send_fds(self._link, [json.dumps(request).encode()], list(fds.values()))
        except OSError as e:
            raise BackendError(f"the zygote's fork did not take the jail: {e}") from e
        finally:
            for key, fd in fds.items():
                if key not in ("agent", "stderr"):
                    os.close(fd)

    def close(self) -> None:
        """Done with it: if it never got the jail, it sees the link close and exits."""
        self._link.close()


def namespace_fds(pid: int) -> dict[str, int]:
    """Descriptors of every namespace of ``pid`` (bubblewrap's first process in a jail), as
    agent/zygote.py joins them."""
    fds: dict[str, int] = {}
    try:
        for ns in ("user", "ipc", "uts", "net", "cgroup", "pid", "mnt"):
            fds[f"ns:{ns}"] = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds
