"""One interpreter process of a code context: its cells in, their output and outcome out.

A worker (born as launch.py says) has three pipes to us (see wire.py): commands in, messages
out, and its stdout/stderr. One pump thread per interpreter reads all of them and a pidfd:
messages and output go to the ``Cell`` that is running (nothing runs between cells, so what
arrives then is dropped), and the pidfd says the moment the process is gone, whoever else
still holds its pipes.

Output is forwarded as it comes (cell.py), with flow control all the way: a daemon that reads
slowly stops the pump, then the worker's pipe, then the cell's prints.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import threading
import time

from firebox import protocol
from firebox.agent import bash_worker, children, wire
from firebox.agent.cell import Cell, clean, text
from firebox.agent.errors import Fail, log
from firebox.agent.runtimes import TITLES

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    import subprocess
    from typing import Any

START_TIMEOUT = protocol.INTERPRETER_START_TIMEOUT
FLUSH_READS = 16  # pipe reads (of up to CHUNK) taken at the end of a cell


class Interpreter:
    """A worker process; ``cell`` is the cell it runs, if any."""

    def __init__(
        self,
        language: str,
        popen: subprocess.Popen[bytes],
        commands: int,
        messages: int,
        msg_fd_in_child: int,
    ) -> None:
        self.language = language
        self.popen = popen
        self.pid: int = popen.pid
        self._commands = commands  # our write end (bash: its stdin); -1 once closed
        # Written to in slices, never blocking: a worker that stops reading (busy with an
        # earlier cell's leftover work, or gone with a child holding the pipe) must not hold
        # a cell past its timeout, nor the lock a restart needs.
        os.set_blocking(commands, False)
        self._exited = False  # set by the pump as soon as the process is gone
        # Held to write or close it, so a write never lands on a reused descriptor number.
        self._wlock = threading.Lock()
        self._messages = messages
        self._msg_fd = msg_fd_in_child  # bash writes ``done`` there
        self._lock = threading.Lock()
        self.cell: Cell | None = None
        self.seq = 0
        self.ready = threading.Event()
        self.fatal: str | None = None
        self.dead: str | None = None  # why it ended, once it has
        self.kill_reason: str | None = None
        self._reseed = False  # reseed the worker's generators with the next cell

    # -- starting -------------------------------------------------------------------------

    def listen(self) -> None:
        """Start the pump thread (bash is then told where to report: its setup line)."""
        threading.Thread(target=self._pump, name=f"code-{self.pid}", daemon=True).start()
        if self.language == "bash":
            self._write(bash_worker.setup(self._msg_fd))

    def wait_ready(self, deadline: float | None = None) -> None:
        """Raise Fail("unavailable") unless the worker says ready by ``deadline`` (default:
        START_TIMEOUT from now)."""
        if deadline is None:
            deadline = time.monotonic() + START_TIMEOUT
        if not self.ready.wait(max(0.0, deadline - time.monotonic())) or self.dead is not None:
            if self.dead is None:
                self.kill(f"it did not start within {START_TIMEOUT:g} s")
            reason = self.fatal or self.dead or f"{TITLES[self.language]} did not start"
            raise Fail("unavailable", f"cannot start a {self.language} context: {reason}")

    # -- running --------------------------------------------------------------------------

    def start(self, cell: Cell, code: str, env: dict[str, str], silent: bool = False) -> None:
        """Hand ``cell`` to the worker; its outcome arrives through ``cell``."""
        with self._lock:
            if self.dead is not None:
                cell.die(self.dead, by_agent=self.kill_reason is not None)
                return
            self.cell = cell
        if self.language == "bash":
            line = bash_worker.run(cell.seq, code, env, self._msg_fd)
        else:
            request = {"k": wire.RUN, "seq": cell.seq, "code": code, "env": env}
            if silent:
                request["silent"] = True
            line = wire.encode(request)
            if self._reseed:
                self._reseed = False
                line = wire.encode({"k": wire.RESEED}) + line
        deadline = time.monotonic() + cell.timeout if cell.timeout is not None else None
        # a dead worker's broken pipe shows up as its death, via the pump
        if not self._write(line, deadline):
            self.kill(
                "it did not take the cell within the cell's timeout (still busy with an "
                "earlier cell's leftover work); its state is lost"
            )

    def reseed(self) -> None:
        """After a VM restore: the worker reseeds its random generators before its next cell
        (sent with that cell, in one write: a restored guest pays for every new path)."""
        if self.language == "python":
            self._reseed = True

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def interrupt(self) -> None:
        """SIGINT to the whole session, as a terminal's ^C: the worker and the cell's children."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGINT)

    def nudge(self, cell: Cell) -> None:
        """After an interrupt: bash drops the rest of the cell's line, ``done`` included."""
        if self.language == "bash":
            self._write(bash_worker.recover(cell.seq))

    def kill(self, reason: str) -> None:
        """SIGKILL the session; the pump reports the death with ``reason``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def _write(self, data: bytes, deadline: float | None = None) -> bool:
        """Whether all of ``data`` went out before ``deadline``; gives up early when the
        worker is gone or being killed (the pump then reports it)."""
        view = memoryview(data)
        with self._wlock:
            while view and self._commands >= 0:
                if self._exited or self.kill_reason is not None:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                try:
                    view = view[os.write(self._commands, view) :]
                except BlockingIOError:
                    poller = select.poll()
                    poller.register(self._commands, select.POLLOUT)
                    poller.poll(200)
                except OSError:
                    return True  # the worker is gone or going: the pump reports it
        return True

    def _close_commands(self) -> None:
        # Only once the process is gone: a write blocked on its full pipe has failed by then.
        with self._wlock:
            if self._commands >= 0:
                os.close(self._commands)
                self._commands = -1

    # -- the pump thread ------------------------------------------------------------------

    def _pump(self) -> None:
        popen = self.popen
        assert popen.stdout is not None and popen.stderr is not None
        out, err = popen.stdout.fileno(), popen.stderr.fileno()
        pipes = {self._messages: 0, out: 1, err: 2}
        decoders = {1: _decoder(), 2: _decoder(), 0: None}
        poller = select.poll()
        for fd in pipes:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        try:
            pidfd = os.pidfd_open(self.pid)
            poller.register(pidfd, select.POLLIN)
        except OSError:  # an old kernel: look at the process every so often
            pidfd = -1
        lines = _Lines()
        exited = False
        orphaned: float | None = None  # when the message pipe closed with the process alive
        try:
            while not exited:
                wait = None if pidfd >= 0 else 250
                if orphaned is not None:
                    wait = 100
                    # Usually it is exiting (os._exit closes the pipe first); one that lives
                    # on without its channel can never report a cell again.
                    if time.monotonic() - orphaned > 1.0:
                        self.kill(f"{TITLES[self.language]} closed its channel to the agent")
                events = poller.poll(wait)
                if pidfd < 0 and popen.poll() is not None:
                    exited = True
                for fd, _ in events:
                    if fd == pidfd:
                        exited = True
                    elif fd in pipes and not self._read(fd, pipes, decoders, lines):
                        poller.unregister(fd)
                        if pipes.pop(fd) == 0:
                            orphaned = time.monotonic()
            self._exited = True  # a write blocked on its pipe gives up now
            # Gone: take what its pipes still hold (without waiting for a child that kept
            # them), then report.
            for fd in list(pipes):
                while fd in pipes and self._read(fd, pipes, decoders, lines, final=True):
                    pass
        except Exception:  # a bug here must still end the cell and the process
            import traceback

            log(f"code context pump failed:\n{traceback.format_exc()}")
            self.kill("the agent lost track of it")
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            os.close(self._messages)
            popen.stdout.close()
            popen.stderr.close()
            code = popen.wait()
            children.forget(self.pid)
            self._close_commands()
            self._died(code)

    def _read(
        self,
        fd: int,
        pipes: dict[int, int],
        decoders: dict[int, Any],
        lines: _Lines,
        final: bool = False,
    ) -> bool:
        """Forward what ``fd`` holds now; False at its end (or, when ``final``, once empty)."""
        try:
            data = os.read(fd, protocol.CHUNK)
        except BlockingIOError:
            return not final
        except OSError as e:
            log(f"reading from a code context failed: {e}")
            data = b""
        kind = pipes[fd]
        if not data:
            if final:
                pipes.pop(fd, None)
            return False
        if kind == 0:
            for line in lines.feed(data):
                self._message(line, pipes, decoders)
        else:
            decoded = decoders[kind].decode(data)
            cell = self.cell
            if decoded and cell is not None:
                cell.output(kind, decoded)
        return True

    def _flush_output(self, pipes: dict[int, int], decoders: dict[int, Any]) -> None:
        """Before a cell ends: what its child processes wrote is already in the pipes. Read
        a bounded amount: a background process writing on and on must not hold the cell."""
        for fd, kind in list(pipes.items()):
            if kind == 0:
                continue
            for _ in range(FLUSH_READS):
                try:
                    data = os.read(fd, protocol.CHUNK)
                except OSError:  # BlockingIOError: nothing more for now
                    break
                if not data:
                    break
                decoded = decoders[kind].decode(data)
                if decoded and self.cell is not None:
                    self.cell.output(kind, decoded)

    def _message(self, line: bytes | None, pipes: dict[int, int], decoders: dict[int, Any]) -> None:
        cell = self.cell
        if line is None:  # a line over MAX_LINE was dropped
            if cell is not None:
                cell.output(2, f"firebox: output over {wire.MAX_LINE >> 20} MiB was dropped\n")
            return
        message = wire.decode(line)
        if message is None:
            return
        kind = message["k"]
        if kind == wire.READY:
            self.ready.set()
        elif kind == wire.FATAL:
            self.fatal = text(message.get("message"), 4000)
        elif cell is None:
            return  # between cells: nobody to tell
        elif kind == wire.STREAM:
            fd, printed = message.get("fd"), message.get("text")
            if fd in (1, 2) and isinstance(printed, str):
                cell.output(fd, clean(printed))
        elif kind == wire.RESULT:
            data, chart = message.get("data"), message.get("chart")
            if isinstance(data, dict) and data:
                chart = clean(chart) if isinstance(chart, dict) else None
                cell.result(clean(data), message.get("main") is True, chart, len(line))
        elif kind == wire.ERROR:
            cell.error(
                text(message.get("name"), 200) or "Error",
                text(message.get("value")),
                text(message.get("traceback")),
            )
        elif kind == wire.DONE and message.get("seq") == cell.seq:
            self._flush_output(pipes, decoders)
            count, status = message.get("count"), message.get("status")
            with self._lock:
                self.cell = None
            cell.finish(
                count if isinstance(count, int) else None,
                status if isinstance(status, int) else None,
            )

    def _died(self, code: int) -> None:
        """Tell the cell (and the context) why the process ended: the reason we killed it, or
        how it ended by itself."""
        title = TITLES[self.language]
        if self.kill_reason is not None:
            reason = self.kill_reason
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            reason = f"{title} was killed by {name}"
            if code == -signal.SIGKILL:
                reason += " (most likely the sandbox ran out of memory)"
        else:
            reason = f"{title} exited with status {code}"
        with self._lock:
            self.dead = reason
            cell, self.cell = self.cell, None
        self.ready.set()  # wakes a spawn still waiting for it
        if cell is not None:
            cell.die(reason, by_agent=self.kill_reason is not None)


def _decoder() -> Any:
    # Output arrives in arbitrary pieces: a character split between two reads stays whole.
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class _Lines:
    """Splits the message pipe into lines, dropping (as None) any longer than MAX_LINE."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = len(self._buf)  # only new bytes can hold the next newline: a long line
        self._buf += data  # arriving in pieces is scanned once, not once per piece
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                if len(self._buf) > wire.MAX_LINE:
                    self._buf.clear()
                    if not self._skipping:
                        self._skipping = True
                        out.append(None)
                return out
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            start = 0
            if self._skipping:
                self._skipping = False
            else:
                out.append(line)
