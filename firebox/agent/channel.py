"""The agent's end of the framed channel (see firebox.protocol): frames in, frames out.

One reader (the main thread) reads frames and routes them; request handlers run in their own
threads and write frames under one lock, so a frame is never interleaved with another. The
reader never blocks on a handler: credits and cancels only flip state and wake waiters, and
uploaded data is queued (its amount is bounded by the credit we grant, one frame at a time).

Per channel a ``Stream`` holds the flow-control state: a sender of ``data``/``watch.event``
frames blocks in ``send_counted`` until the daemon has returned credit, so a slow HTTP client
back-pressures a process's pipe instead of filling the agent's memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from firebox import protocol
from firebox.agent.errors import log
from firebox.protocol import Message


class Conn:
    """The byte stream: a connected socket, or a character device (virtio-serial)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # BufferedReader.read(n) loops until n bytes or EOF: a frame part in one call.
        self._rfile = open(fd, "rb", buffering=1 << 18, closefd=False)  # noqa: SIM115
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self.dead = False
        self._held = False  # the write lock is kept by the reader thread (hold)

    # -- reading (main thread only) --------------------------------------------------------

    def _read_exact(self, n: int, start: bool = False) -> bytes | None:
        data = self._rfile.read(n)
        if len(data) == n:
            return data
        if start and not data:
            return None
        raise protocol.ProtocolError("the channel ended in the middle of a frame")

    def read_frame(self) -> protocol.Frame | None:
        """The next frame, or None at end of stream."""
        head = self._read_exact(protocol.FRAME_HEAD.size, start=True)
        if head is None:
            return None
        channel, plen, hlen = protocol.decode_head(head)
        header = protocol.decode_header(self._read_exact(hlen) or b"")
        payload = (self._read_exact(plen) or b"") if plen else b""
        return protocol.Frame(channel, header, payload)

    # -- writing (any thread) -------------------------------------------------------------

    def send(self, channel: int, msg: Message, payload: bytes = b"") -> None:
        self.write(protocol.encode(channel, msg, payload))

    def hold(self, last: bytes) -> None:
        """Write ``last`` and then nothing more until ``release`` (a VM about to be paused):
        every other writer waits on the lock, which the reader thread keeps."""
        if self._held:
            return
        self._wlock.acquire()
        self._held = True
        self._write_locked(last)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._wlock.release()

    def write(self, frame: bytes) -> None:
        """Write one encoded frame; after the peer is gone this is a no-op (the reader sees
        EOF and ends the agent)."""
        if self._held and threading.current_thread() is threading.main_thread():
            # the reader holds the lock for a pause and must keep reading (for the Resume):
            # the daemon sends nothing meanwhile, so nothing is lost that it waits for
            log("dropping a reply written while the channel is held for a pause")
            return
        with self._wlock:
            self._write_locked(frame)

    def _write_locked(self, frame: bytes) -> None:
        if self.dead:
            return
        view = memoryview(frame)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            self.dead = True
            log(f"the channel broke while writing: {e}")

    # -- streams ---------------------------------------------------------------------------

    def open(self, channel: int) -> Stream:
        stream = Stream(self, channel)
        with self._lock:
            self._streams[channel] = stream
        return stream

    def get(self, channel: int) -> Stream | None:
        with self._lock:
            return self._streams.get(channel)

    def detach_all(self) -> None:
        """Every open channel detached (``Stream.detach``): a new daemon took over."""
        with self._lock:
            streams = list(self._streams.values())
        for stream in streams:
            stream.detach()

    def forget(self, channel: int) -> None:
        with self._lock:
            self._streams.pop(channel, None)


class Stream:
    """One channel's state, shared by the reader thread and the handler's threads."""

    def __init__(self, conn: Conn, channel: int) -> None:
        self.conn = conn
        self.channel = channel
        self._cond = threading.Condition(threading.Lock())
        # Held while checking ``done`` and writing, so nothing follows the final message.
        self._send_lock = threading.Lock()
        self._credits = protocol.WINDOW
        self._inbox: deque[tuple[Message, bytes]] = deque()
        self._hooks: list[Callable[[], None]] = []
        self.cancelled = False
        self.done = False

    # -- called by the reader thread -------------------------------------------------------

    def add_credit(self, n: int) -> None:
        with self._cond:
            self._credits += n
            self._cond.notify_all()

    def put(self, msg: Message, payload: bytes) -> None:
        with self._cond:
            self._inbox.append((msg, payload))
            self._cond.notify_all()

    def cancel(self) -> None:
        """The daemon gave up on this channel: wake every waiter, run the hooks, answer."""
        with self._cond:
            if self.cancelled:
                return
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
            self._cond.notify_all()
        for hook in hooks:
            try:
                hook()
            except Exception as e:  # a hook only wakes a thread; never let it stop the reader
                log(f"cancel hook failed on channel {self.channel}: {e!r}")
        # The final reply goes from a thread of its own: the reader must never wait for the
        # write lock, which a handler may hold while the socket is full.
        try:
            threading.Thread(target=self.finish, args=(protocol.Result(),), daemon=True).start()
        except RuntimeError:  # no thread to be had (the process limit): answer from here
            self.finish(protocol.Result())

    def detach(self) -> None:
        """The daemon stopped listening (a pause): send nothing more, and wake whoever waits
        for credit or data, without the cancel hooks (a cell runs on to its end)."""
        with self._send_lock:
            self.done = True
            self.conn.forget(self.channel)
        with self._cond:
            self._cond.notify_all()

    # -- called by handler threads --------------------------------------------------------

    def on_cancel(self, hook: Callable[[], None]) -> None:
        with self._cond:
            if not self.cancelled:
                self._hooks.append(hook)
                return
        hook()

    def send(self, msg: Message, payload: bytes = b"") -> bool:
        """Send a frame that costs no credit; False when the channel is already closed."""
        with self._send_lock:
            if self.done:
                return False
            self.conn.send(self.channel, msg, payload)
            return True

    def send_counted(self, msg: Message, payload: bytes = b"") -> bool:
        """Send a ``data``/``watch.event`` frame once a credit is free.

        Blocks while the daemon has not consumed what we sent. Returns False, at once, when
        the channel was cancelled or closed: the caller stops (or discards what it reads).
        """
        with self._cond:
            while self._credits <= 0 and not (self.cancelled or self.done or self.conn.dead):
                self._cond.wait()
            if self.cancelled or self.done or self.conn.dead:
                return False
            self._credits -= 1
        return self.send(msg, payload)

    def receive(self) -> tuple[Message, bytes] | None:
        """The next uploaded frame (``data`` or ``end``); None once the channel is cancelled."""
        with self._cond:
            while not self._inbox and not (self.cancelled or self.done or self.conn.dead):
                self._cond.wait()
            if self.cancelled or self.done or self.conn.dead:
                return None
            return self._inbox.popleft()

    def grant(self, n: int = 1) -> None:
        """Tell the daemon we consumed ``n`` uploaded frames: it may send ``n`` more."""
        self.send(protocol.Credit(n=n))

    def finish(self, msg: Message) -> bool:
        """Send the channel's final message (first one wins) and forget the channel."""
        try:
            frame = protocol.encode(self.channel, msg)
        except protocol.ProtocolError as e:  # a result too large for one header
            error = protocol.Error(code="invalid", message=f"the reply is too large: {e}")
            frame = protocol.encode(self.channel, error)
        with self._send_lock:
            if self.done:
                return False
            self.done = True
            self.conn.forget(self.channel)
            self.conn.write(frame)
        with self._cond:
            self._cond.notify_all()
        return True
