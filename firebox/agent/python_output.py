"""A python worker's output: what it prints, and the one thread that writes its message pipe.

``sys.stdout``/``sys.stderr`` are replaced by writers that buffer briefly and send ``stream``
messages, so prints and rich results (python_shell.py) reach the agent in the order they
happened; fd 1 and 2 stay pipes the agent forwards too (child processes, C code).

Every write to the message pipe happens in one writer thread: a KeyboardInterrupt (the agent's
timeout) is only ever raised in the main thread, so it can never cut a message in half.
"""

from __future__ import annotations

import os
import queue
import threading
import time

from firebox.agent import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FLUSH_DELAY = 0.02  # seconds printed text may wait to be sent with more


class Outbox:
    """The message pipe, written by one thread only (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # Bounded: a cell printing faster than the daemon reads blocks in ``put`` (where a
        # KeyboardInterrupt still reaches it) instead of growing this process's memory.
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self.streams = Streams(self.queue)
        threading.Thread(target=self._write, name="firebox-outbox", daemon=True).start()
        threading.Thread(target=self.streams.tick, name="firebox-flush", daemon=True).start()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message after the text printed before it."""
        line = wire.encode(message)
        with self.streams.lock:
            self.streams.flush()
            self.queue.put(line)

    def flush(self) -> None:
        """Send the text printed so far and wait until it is written (``print(flush=True)``
        before ``os._exit`` must still reach the user)."""
        self.streams.flush()
        self.queue.join()

    def drain(self) -> None:
        """Wait until everything queued is written (before exiting)."""
        with self.streams.lock:
            self.streams.flush()
            self.queue.put(None)
        self.queue.join()

    def _write(self) -> None:
        while True:
            line = self.queue.get()
            if line is None:
                self.queue.task_done()
                return
            view = memoryview(line)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                os._exit(1)  # the agent is gone: nobody is left to run cells for
            self.queue.task_done()


class Streams:
    """Text printed to sys.stdout/sys.stderr, in order, waiting to be sent.

    Taking the pieces and queueing them happen under one lock, as does queueing any other
    message after a flush: the queue's order is the order things were printed and shown.
    """

    def __init__(self, out: queue.Queue[bytes | None]) -> None:
        self._out = out
        # Reentrant: a signal handler may print while the main thread is inside ``write``.
        self.lock = threading.RLock()
        # Runs of writes to one fd, joined only when sent: a print loop makes many tiny writes.
        self._pieces: list[tuple[int, list[str]]] = []
        self._size = 0
        self._pending = threading.Event()

    def write(self, fd: int, text: str) -> None:
        with self.lock:
            if self._pieces and self._pieces[-1][0] == fd:
                self._pieces[-1][1].append(text)
            else:
                self._pieces.append((fd, [text]))
            self._size += len(text)
            if self._size >= wire.STREAM_CHUNK:
                self.flush()
        self._pending.set()

    def flush(self) -> None:
        with self.lock:
            pieces, self._pieces, self._size = self._pieces, [], 0
            for fd, parts in pieces:
                text = "".join(parts)
                for i in range(0, len(text), wire.STREAM_CHUNK):
                    chunk = text[i : i + wire.STREAM_CHUNK]
                    self._out.put(wire.encode({"k": wire.STREAM, "fd": fd, "text": chunk}))

    def tick(self) -> None:
        """Send text that waited FLUSH_DELAY; sleeps while nothing is printed (an idle
        sandbox must not wake up every few milliseconds)."""
        while True:
            self._pending.wait()
            time.sleep(FLUSH_DELAY)
            self._pending.clear()
            self.flush()


class Writer:
    """What user code sees as sys.stdout / sys.stderr."""

    encoding = "utf-8"
    errors = "replace"
    line_buffering = False

    def __init__(self, outbox: Outbox, fd: int) -> None:
        self._outbox = outbox
        self._fd = fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            self._outbox.streams.write(self._fd, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._outbox.flush()

    def fileno(self) -> int:
        # The real descriptor: subprocess.run(stdout=sys.stdout) and faulthandler write there,
        # and the agent forwards it as this stream too.
        return self._fd

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def close(self) -> None:
        pass
