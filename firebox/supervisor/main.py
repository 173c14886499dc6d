"""A sandbox's supervisor: the small host process that holds the daemon's end of the sandbox's
agent channel, so that the sandbox outlives the daemon (containerd's shims and Firecracker's
jailer play this part for theirs).

The daemon starts supervisors ahead (a Python start costs ~40 ms here) and hands one a new
sandbox: its end of the agent channel (a socket pair's for a jail, the connection to QEMU's
virtio-serial socket for a microVM) and the read end of the pipe that the sandbox's host
process (bwrap, QEMU) writes its errors and console to. The supervisor then

- listens on a socket in the daemon's run directory (root's only) and relays frames between
  the agent and the one daemon connected to it, a whole frame at a time: a daemon that dies
  mid-frame leaves no half frame for the next one, and while none is connected what the
  agent writes is kept (up to a bound, then its writes wait): nothing is lost. The agent
  never sees its channel end, so it never ends its processes; a new daemon connects, says
  ``Adopt``, and goes on;
- keeps the last 8 KiB of that output in a file beside its socket, for the daemon's error
  messages (a bounded tail: a guest writing its console without end fills nothing);
- ends once the agent's channel and the output have both ended: the sandbox is gone.

Standard library and the protocol's framing only: it runs as ``python3 -I -S``, and nothing
of the daemon (keys, configuration) is in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import sys
import time
from collections import deque

from firebox.protocol.framing import FrameSplitter, ProtocolError

CONTROL_ENV = "FIREBOX_SUPERVISOR_FD"  # the socket the daemon hands the sandbox over on
TAIL_BYTES = 8192
TAIL_EVERY = 0.25  # seconds between rewrites of the tail file while output comes
AGENT_BACKLOG = 4 << 20  # frames from the agent held for a slow daemon before reading stops


class Supervisor:
    def __init__(self, agent: socket.socket, output: int | None, listen: str, tail: str) -> None:
        self.sel = selectors.DefaultSelector()
        self.agent = agent
        self.output = output
        self.tail_path = tail
        self.listen_path = listen
        self.tail = bytearray()
        self.tail_dirty = False
        self.tail_written = 0.0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        old = os.umask(0o077)
        try:
            self.listener.bind(listen)
        finally:
            os.umask(old)
        self.listener.listen(4)
        self.conn: socket.socket | None = None
        self.from_agent = FrameSplitter()
        self.from_daemon = FrameSplitter()
        self.to_daemon: deque[memoryview] = deque()  # whole frames; the first maybe begun
        self.to_daemon_bytes = 0
        self.sent_of_first = 0
        self.to_agent = bytearray()
        self.agent_open = True
        for s in (agent, self.listener):
            s.setblocking(False)
        if output is not None:
            os.set_blocking(output, False)
            self.sel.register(output, selectors.EVENT_READ, self._read_output)
        self.sel.register(self.listener, selectors.EVENT_READ, self._accept)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        while self.agent_open or self.output is not None:
            self._interest()
            for key, events in self.sel.select(timeout=TAIL_EVERY):
                key.data(events)
            if self.tail_dirty and time.monotonic() - self.tail_written >= TAIL_EVERY:
                self._write_tail()
        self._write_tail()

    def _interest(self) -> None:
        """What to wait for: the agent readable while a daemon listens and is keeping up,
        each side writable while something waits for it."""
        if self.agent_open:
            agent_events = 0
            # read on while no daemon is connected (up to the backlog): its end is seen
            if self.to_daemon_bytes < AGENT_BACKLOG:
                agent_events |= selectors.EVENT_READ
            if self.to_agent:
                agent_events |= selectors.EVENT_WRITE
            self._set(self.agent, agent_events, self._agent_ready)
        if self.conn is not None:
            # the daemon's frames wait while the agent is not taking them (credit bounds it)
            conn_events = selectors.EVENT_READ if len(self.to_agent) < AGENT_BACKLOG else 0
            if self.to_daemon:
                conn_events |= selectors.EVENT_WRITE
            self._set(self.conn, conn_events, self._conn_ready)

    def _set(self, sock: socket.socket, events: int, handler: object) -> None:
        try:
            key = self.sel.get_key(sock)
        except KeyError:
            if events:
                self.sel.register(sock, events, handler)
            return
        if not events:
            self.sel.unregister(sock)
        elif key.events != events:
            self.sel.modify(sock, events, handler)

    # -- the agent's side -------------------------------------------------------------------

    def _agent_ready(self, events: int) -> None:
        if not self.agent_open:  # a stale event of this round
            return
        if events & selectors.EVENT_READ:
            try:
                data = self.agent.recv(1 << 18)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._agent_gone()
                return
            if data:
                try:
                    frames = self.from_agent.feed(data)
                except ProtocolError:  # the agent broke the framing: it is not one any more
                    self._agent_gone()
                    return
                for frame in frames:
                    self.to_daemon.append(memoryview(frame))
                    self.to_daemon_bytes += len(frame)
                # now, not a round of the loop later: a round trip is a few frames each way
                self._send_to_daemon()
        if events & selectors.EVENT_WRITE:
            self._send_to_agent()

    def _send_to_agent(self) -> None:
        if not self.to_agent or not self.agent_open:
            return
        try:
            sent = self.agent.send(self.to_agent)
        except BlockingIOError:
            return
        except OSError:
            self._agent_gone()
            return
        del self.to_agent[:sent]

    def _agent_gone(self) -> None:
        """The agent's channel ended: the sandbox is gone. The daemon sees its end too."""
        self.agent_open = False
        self._set(self.agent, 0, None)
        self.agent.close()
        self.to_agent.clear()
        self._drop_conn()
        self.sel.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(OSError):  # nobody is to find it now
            os.unlink(self.listen_path)

    # -- the daemon's side ------------------------------------------------------------------

    def _accept(self, events: int) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        self._drop_conn()  # a new daemon replaces the one before (which is gone)
        conn.setblocking(False)
        self.conn = conn

    def _conn_ready(self, events: int) -> None:
        if self.conn is None:  # dropped earlier in this round (a stale event)
            return
        if events & selectors.EVENT_READ:
            try:
                data = self.conn.recv(1 << 18)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop_conn()
                return
            if data:
                try:
                    for frame in self.from_daemon.feed(data):
                        self.to_agent += frame
                except ProtocolError:
                    self._drop_conn()
                    return
                self._send_to_agent()
        if events & selectors.EVENT_WRITE:
            self._send_to_daemon()

    def _send_to_daemon(self) -> None:
        while self.to_daemon and self.conn is not None:
            first = self.to_daemon[0][self.sent_of_first :]
            try:
                sent = self.conn.send(first)
            except BlockingIOError:
                return
            except OSError:
                self._drop_conn()
                return
            self.sent_of_first += sent
            if sent < len(first):
                return
            self.to_daemon_bytes -= len(self.to_daemon.popleft())
            self.sent_of_first = 0

    def _drop_conn(self) -> None:
        """The daemon went (or another replaced it): what it half sent is dropped, and so is
        the rest of a frame it was half sent (the next one starts at a frame)."""
        if self.conn is None:
            return
        self._set(self.conn, 0, None)
        self.conn.close()
        self.conn = None
        self.from_daemon = FrameSplitter()
        if self.sent_of_first:
            self.to_daemon_bytes -= len(self.to_daemon.popleft())
            self.sent_of_first = 0

    # -- the host process's output ----------------------------------------------------------

    def _read_output(self, events: int) -> None:
        assert self.output is not None
        try:
            data = os.read(self.output, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # nothing new to write: the tail already holds all of it
            self.sel.unregister(self.output)
            os.close(self.output)
            self.output = None
            return
        self.tail += data
        del self.tail[:-TAIL_BYTES]
        self.tail_dirty = True

    def _write_tail(self) -> None:
        if not self.tail_dirty:
            return
        self.tail_dirty = False
        self.tail_written = time.monotonic()
        tmp = f"{self.tail_path}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, self.tail)
            finally:
                os.close(fd)
            os.replace(tmp, self.tail_path)
        except OSError:
            pass  # the run directory went with its daemon's cleanup: nobody to tell


def _handed_over(control: socket.socket) -> tuple[dict[str, str], list[int]]:
    """Wait for the daemon to hand a sandbox over: its settings and descriptors."""
    msg, fds, _, _ = socket.recv_fds(control, 65536, 4)
    if not msg:
        sys.exit(0)  # the daemon went before it needed this supervisor
    return json.loads(msg), list(fds)


def main() -> None:
    control_fd = int(os.environ[CONTROL_ENV])
    # Whatever the daemon's event loop let through (uvloop's spawn ignores close_fds) is not
    # ours to hold: only stdio and the control socket stay.
    os.closerange(3, control_fd)
    os.closerange(control_fd + 1, os.sysconf("SC_OPEN_MAX"))
    control = socket.socket(fileno=control_fd)
    settings, fds = _handed_over(control)
    agent = socket.socket(fileno=fds[0])
    output = fds[1] if len(fds) > 1 else None
    try:
        supervisor = Supervisor(agent, output, settings["listen"], settings["tail"])
    except OSError as e:
        control.sendall(f"error: {e}\n".encode())
        sys.exit(1)
    control.sendall(b"ok\n")
    control.close()
    supervisor.run()
