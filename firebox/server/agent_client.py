"""The daemon's end of the agent channel (see firebox.protocol), on asyncio.

One reader task reads frames and routes each to its channel's queue; callers open channels
(odd, increasing ids), send a request and consume the replies. Data is credited back to the
agent only as the consumer takes it, so a slow HTTP client slows the agent down instead of
filling the daemon's memory.

The agent runs beside untrusted code and is treated as untrusted too: every frame is checked
against the limits we granted (credit, queue length, header shape), and a violation ends the
connection (``AgentGone``) rather than growing a queue or crashing a request handler.

Exceptions::

    AgentError            the agent answered with an Error frame (.code in ERROR_CODES)
      AgentTimeout        ... or did not answer in time (code "timeout"; a TimeoutError)
    AgentGone             the connection is lost; every pending and later call raises it
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import AsyncIterable
from typing import Any, NoReturn

from firebox import protocol
from firebox.protocol import Message
from firebox.server import timing

__all__ = [
    "AgentClient",
    "AgentError",
    "AgentGone",
    "AgentTimeout",
    "FileDownload",
    "ProcessStream",
    "Watch",
]

MAX_MESSAGE = 4000  # characters of an agent's error message we pass on
# Frames a channel may queue beyond its credited window: the final message, a "started".
_UNCOUNTED_SLACK = 4
STREAM_LIMIT = protocol.STREAM_LIMIT


class AgentError(Exception):
    """An ``Error`` frame from the agent."""

    def __init__(self, code: str, message: str) -> None:
        if code not in protocol.ERROR_CODES:
            code = "internal"
        message = str(message)[:MAX_MESSAGE]
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AgentTimeout(AgentError, TimeoutError):
    """The agent did not answer in time; the request was cancelled on the agent's side."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class AgentGone(Exception):
    """The connection to the agent is lost (the sandbox died, or the agent broke protocol)."""


class _Channel:
    def __init__(self, cid: int) -> None:
        self.id = cid
        self.items: deque[tuple[Message, bytes]] = deque()
        self.wakeup = asyncio.Event()
        self.in_flight = 0  # counted frames (data, watch.event) received, not yet credited
        self.uncounted = 0  # other frames queued
        self.credits = protocol.WINDOW  # data frames we may still send (uploads)
        self.credit_event = asyncio.Event()
        self.finished = False  # the final message arrived
        self.gone: AgentGone | None = None

    async def ready(self) -> None:
        """Wait until a frame is queued; raises the loss of the connection."""
        while not self.items:
            if self.gone is not None:
                raise self.gone
            self.wakeup.clear()
            await self.wakeup.wait()

    async def next(self) -> tuple[Message, bytes]:
        await self.ready()
        item = self.items.popleft()
        if not _counted(item[0]):
            self.uncounted -= 1
        return item

    def stop(self, gone: AgentGone) -> None:
        self.gone = gone
        self.wakeup.set()
        self.credit_event.set()

    async def wait_credit(self, timeout: float, silence: str) -> None:
        """Wait for a credit (or any frame: ``credit_event`` fires for both) up to ``timeout``
        seconds; AgentTimeout(``silence``) past it."""
        self.credit_event.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.credit_event.wait()
        except TimeoutError:
            raise AgentTimeout(silence) from None


def _counted(msg: Message) -> bool:
    return isinstance(
        msg, protocol.Data | protocol.WatchEvent | protocol.CodeResult | protocol.CodeError
    )


def _final(msg: Message) -> bool:
    return isinstance(msg, protocol.Result | protocol.Error)


def _raise_error(msg: Message, request: str) -> NoReturn:
    if isinstance(msg, protocol.Error):
        raise AgentError(str(msg.code), str(msg.message))
    raise AgentError("internal", f"the agent sent {msg.T!r} in reply to {request!r}")


class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._channels: dict[int, _Channel] = {}
        self._next_id = 1
        self._gone: AgentGone | None = None
        self._hello: protocol.Hello | None = None
        self._hello_event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> AgentClient:
        """A client on a connected stream socket, with buffers sized for data frames."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
        return cls(reader, writer)

    # -- public API ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._gone is not None

    async def wait_hello(self, timeout: float) -> protocol.Hello:
        """The agent's hello; TimeoutError, AgentGone, or ProtocolError for a wrong version."""
        async with asyncio.timeout(timeout):
            await self._hello_event.wait()
        if self._hello is None:
            raise self._gone or AgentGone("the agent closed its channel before saying hello")
        if self._hello.version != protocol.PROTOCOL_VERSION:
            raise protocol.ProtocolError(
                f"the agent speaks protocol {self._hello.version!r}, this daemon "
                f"{protocol.PROTOCOL_VERSION}: rebuild the sandbox image"
            )
        return self._hello

    async def send_control(self, msg: Message) -> None:
        """Send a message on the control channel (``Configure``): no reply, and ahead of
        every request sent after it."""
        await self._send(protocol.CONTROL_CHANNEL, msg)

    async def call(self, msg: Message, timeout: float = 30, payload: bytes = b"") -> Any:
        """Send a one-shot request and return its ``Result.value``."""
        ch = self._open()
        try:
            await self._send(ch.id, msg, payload)
            reply, _ = await self._first(ch, msg, timeout)
        finally:
            self._abandon(ch)  # a no-op once the final message arrived
        if not isinstance(reply, protocol.Result):
            _raise_error(reply, msg.T)
        return reply.value

    @property
    def open_channels(self) -> int:
        """Requests and streams in flight: what this sandbox holds of the daemon's memory."""
        return len(self._channels)

    async def _open_stream(self, req: Message, timeout: float) -> tuple[_Channel, Message]:
        """Open a channel with ``req`` and take its first reply; the channel stays open for a
        stream unless this fails."""
        ch = self._open()
        try:
            await self._send(ch.id, req)
            reply, _ = await self._first(ch, req, timeout)
        except BaseException:
            self._abandon(ch)
            raise
        return ch, reply

    async def start_process(self, req: protocol.ProcessStart, timeout: float = 30) -> ProcessStream:
        """Start a process; returns once the agent reports it running."""
        ch, reply = await self._open_stream(req, timeout)
        if not isinstance(reply, protocol.ProcessStarted) or not isinstance(reply.pid, int):
            self._abandon(ch)
            _raise_error(reply, req.T)
        return ProcessStream(self, ch, reply.pid)

    async def run_code(self, req: protocol.CodeRun) -> CodeStream:
        """Start a cell; its output, results and end come through the returned stream."""
        ch = self._open()
        try:
            await self._send(ch.id, req)
        except BaseException:
            self._abandon(ch)
            raise
        return CodeStream(self, ch)

    async def send_stdin(self, pid: int, data: bytes = b"", eof: bool = False) -> None:
        """Write to a process's stdin (in frames of at most MAX_PAYLOAD), then maybe close it."""
        step = protocol.MAX_PAYLOAD
        pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            await self.call(protocol.ProcessStdin(pid=pid, eof=eof and last), payload=piece)

    async def signal(self, pid: int, sig: int) -> None:
        await self.call(protocol.ProcessSignal(pid=pid, signal=sig))

    async def list_processes(self) -> list[dict[str, Any]]:
        value = await self.call(protocol.ProcessList())
        if not isinstance(value, list) or not all(
            isinstance(p, dict) and isinstance(p.get("pid"), int) for p in value
        ):
            raise AgentError("internal", "the agent sent a malformed process list")
        return value

    def read_file(self, path: str, user: str = "user", timeout: float = 30) -> FileDownload:
        """The file's content as an async iterator of chunks (also an async context manager).

        The request goes out at the first ``__anext__``/``__aenter__``, which raises
        AgentError (``not_found``...) before any chunk is yielded.
        """
        return FileDownload(self, protocol.FileRead(path=path, user=user), timeout)

    async def write_file(
        self, path: str, user: str, chunks: AsyncIterable[bytes], timeout: float = 60
    ) -> dict[str, Any]:
        """Upload ``chunks`` to ``path``; returns the new file's EntryInfo dict.

        ``timeout`` bounds each wait for the agent (credit, the final answer), not the upload.
        """
        req = protocol.FileWrite(path=path, user=user)
        ch = self._open()
        try:
            await self._send(ch.id, req)
            async for chunk in chunks:
                for i in range(0, len(chunk), protocol.CHUNK):
                    await self._take_credit(ch, req, timeout)
                    await self._send(ch.id, protocol.Data(), bytes(chunk[i : i + protocol.CHUNK]))
            await self._send(ch.id, protocol.End())
            reply, _ = await self._first(ch, req, timeout)
        finally:
            self._abandon(ch)
        if not isinstance(reply, protocol.Result) or not isinstance(reply.value, dict):
            _raise_error(reply, req.T)
        return reply.value

    async def watch(self, path: str, user: str, recursive: bool, timeout: float = 30) -> Watch:
        """Watch a directory; returns once the watch is in place (changes from now are seen)."""
        req = protocol.WatchStart(path=path, user=user, recursive=recursive)
        ch, reply = await self._open_stream(req, timeout)
        if not isinstance(reply, protocol.WatchStarted):
            self._abandon(ch)
            _raise_error(reply, req.T)
        return Watch(self, ch)

    async def net_accept(self, port: int, timeout: float = 30) -> NetConnection:
        """Have the agent listen on its egress port (the first time) and hand over the next
        connection made to it; returns once it listens (``NetConnection.connected`` waits)."""
        req = protocol.NetAccept(port=port)
        ch, reply = await self._open_stream(req, timeout)
        if not isinstance(reply, protocol.NetListening):
            self._abandon(ch)
            _raise_error(reply, req.T)
        return NetConnection(self, ch)

    async def close(self) -> None:
        self._stop(AgentGone("the agent connection was closed by the daemon"))
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    # -- channels -------------------------------------------------------------------------

    def _open(self) -> _Channel:
        if self._gone is not None:
            raise self._gone
        cid = self._next_id
        while cid in self._channels:
            cid = cid + 2 if cid + 2 < 1 << 32 else 1
        self._next_id = cid + 2 if cid + 2 < 1 << 32 else 1
        ch = _Channel(cid)
        self._channels[cid] = ch
        return ch

    async def _first(self, ch: _Channel, req: Message, timeout: float) -> tuple[Message, bytes]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                return await ch.next()
        except TimeoutError:
            raise AgentTimeout(f"the agent did not answer {req.T} within {timeout:g} s") from None
        finally:
            timing.agent_waited(time.perf_counter() - started)

    def _abandon(self, ch: _Channel) -> None:
        """Stop listening on a channel; the agent stops (a process is only detached)."""
        if self._channels.pop(ch.id, None) is not None and not ch.finished:
            self._send_nowait(ch.id, protocol.Cancel())
        ch.items.clear()
        ch.stop(AgentGone("this request was cancelled"))

    def _consumed(self, ch: _Channel, msg: Message) -> None:
        """The consumer took a counted frame: give the agent its credit back."""
        if _counted(msg):
            ch.in_flight -= 1
            if not ch.finished and ch.id in self._channels:
                self._send_nowait(ch.id, protocol.Credit(n=1))

    async def _take_credit(self, ch: _Channel, req: Message, timeout: float) -> None:
        while ch.credits <= 0 or ch.items:
            if ch.items:  # the agent ended the upload early: that is its answer
                msg, _ = await ch.next()
                _raise_error(msg, req.T)
            if ch.gone is not None:
                raise ch.gone
            await ch.wait_credit(timeout, f"the agent took no data for {timeout:g} s")
        ch.credits -= 1

    # -- I/O ----------------------------------------------------------------------------------

    async def _send(self, cid: int, msg: Message, payload: bytes = b"") -> None:
        if self._gone is not None:
            raise self._gone
        try:
            frame = protocol.encode(cid, msg, payload)
        except protocol.ProtocolError as e:
            raise AgentError(
                "too_large", f"the request is too large for the sandbox's channel ({e})"
            ) from None
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as e:
            self._stop(AgentGone(f"writing to the agent failed: {e}"))
            raise self._gone or AgentGone(str(e)) from None

    def _send_nowait(self, cid: int, msg: Message) -> None:
        # Small control frames (credit, cancel) from sync code: the transport buffers them.
        if self._gone is None and not self._writer.is_closing():
            with contextlib.suppress(Exception):
                self._writer.write(protocol.encode(cid, msg))

    async def _read_loop(self) -> None:
        reason = "the agent closed its channel"
        try:
            while True:
                head = await self._reader.readexactly(protocol.FRAME_HEAD.size)
                cid, plen, hlen = protocol.decode_head(head)
                header = protocol.decode_header(await self._reader.readexactly(hlen))
                payload = await self._reader.readexactly(plen) if plen else b""
                self._route(cid, header, payload)
        except asyncio.IncompleteReadError:
            pass
        except protocol.ProtocolError as e:
            reason = f"the agent broke the protocol: {e}"
        except (ConnectionError, OSError) as e:
            reason = f"the agent connection failed: {e}"
        except asyncio.CancelledError:
            reason = "the agent connection was closed by the daemon"
        finally:
            self._stop(AgentGone(reason))

    def _route(self, cid: int, header: dict[str, Any], payload: bytes) -> None:
        if cid == protocol.CONTROL_CHANNEL:
            if header.get("t") == protocol.Hello.T and self._hello is None:
                hello = protocol.Hello.from_header(header)
                if not isinstance(hello.version, int):
                    raise protocol.ProtocolError("malformed hello")
                self._hello = hello
                self._hello_event.set()
            return
        ch = self._channels.get(cid)
        if ch is None:
            return  # late frames of a channel we gave up on
        try:
            msg = protocol.parse(header)
        except protocol.ProtocolError:
            return  # a newer agent's message type: readers ignore what they do not know
        if isinstance(msg, protocol.Credit):
            if not isinstance(msg.n, int) or not 0 < msg.n <= protocol.WINDOW:
                raise protocol.ProtocolError(f"bad credit {msg.n!r}")
            ch.credits = min(ch.credits + msg.n, protocol.WINDOW)
            ch.credit_event.set()
            return
        if _counted(msg):
            ch.in_flight += 1
            if ch.in_flight > protocol.WINDOW:
                raise protocol.ProtocolError(f"channel {cid}: data beyond the credit granted")
        else:
            ch.uncounted += 1
            if ch.uncounted > _UNCOUNTED_SLACK:
                raise protocol.ProtocolError(f"channel {cid}: too many unread replies")
        if _final(msg):
            ch.finished = True
            del self._channels[cid]
        ch.items.append((msg, payload))
        ch.wakeup.set()
        ch.credit_event.set()

    def _stop(self, gone: AgentGone) -> None:
        if self._gone is not None:
            return
        self._gone = gone
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            ch.stop(gone)
        self._hello_event.set()
        with contextlib.suppress(Exception):
            self._writer.close()


class _Reply:
    """An async iterator over one channel's replies, which it credits back as it goes."""

    def __init__(self, client: AgentClient, ch: _Channel | None) -> None:
        self._client = client
        self._ch = ch
        self._ended = ch is None

    async def _next(self) -> tuple[Message, bytes] | None:
        """The next non-final frame, or None after a Result; raises for an Error."""
        if self._ended or self._ch is None:
            return None
        msg, payload = await self._ch.next()
        if _final(msg):
            self._ended = True
            if isinstance(msg, protocol.Error):
                _raise_error(msg, "")
            self._result(msg)
            return None
        self._client._consumed(self._ch, msg)
        return msg, payload

    def _result(self, msg: Message) -> None:
        pass

    def _detach(self) -> None:
        if not self._ended and self._ch is not None:
            self._ended = True
            self._client._abandon(self._ch)

    def __del__(self) -> None:
        # Dropped unfinished (an HTTP client went away mid-stream): without a cancel the
        # agent would wait for credit forever.
        with contextlib.suppress(Exception):
            self._detach()


class ProcessStream(_Reply):
    """Output of a started process: ``async for fd, data in stream`` with fd "stdout" or
    "stderr"; afterwards ``exit`` holds the ProcessExit. ``detach()`` stops reading (the
    process runs on)."""

    def __init__(self, client: AgentClient, ch: _Channel, pid: int) -> None:
        super().__init__(client, ch)
        self.pid = pid
        self.exit: protocol.ProcessExit | None = None

    def __aiter__(self) -> ProcessStream:
        return self

    async def __anext__(self) -> tuple[str, bytes]:
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        msg, payload = item
        if isinstance(msg, protocol.Data) and msg.fd in (1, 2):
            return ("stdout" if msg.fd == 1 else "stderr"), payload
        raise AgentError("internal", f"unexpected {msg.T!r} frame on a process stream")

    def _result(self, msg: Message) -> None:
        v = getattr(msg, "value", None)
        if not (
            isinstance(v, dict)
            and isinstance(v.get("exit_code"), int)
            and isinstance(v.get("signal"), int | None)
            and isinstance(v.get("timed_out", False), bool)
        ):
            raise AgentError("internal", f"malformed process exit {v!r}")
        oom = v.get("kernel_oom_kills")
        self.exit = protocol.ProcessExit(
            v["exit_code"],
            v.get("signal"),
            v.get("timed_out", False),
            oom if isinstance(oom, int) else None,
            v.get("output_truncated") is True,
            v.get("disk_full") is True,
        )

    async def detach(self) -> None:
        self._detach()

    async def __aenter__(self) -> ProcessStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._detach()


class CodeStream(_Reply):
    """What a cell produces, as it comes: ``async for event in stream`` yields ``("stdout" |
    "stderr", text)``, ``("result", CodeResult)`` or ``("error", CodeError)``; afterwards
    ``done`` holds the CodeDone. ``detach()`` stops reading and interrupts the cell (an
    abandoned endless loop must not hold its context)."""

    def __init__(self, client: AgentClient, ch: _Channel) -> None:
        super().__init__(client, ch)
        self.done: protocol.CodeDone | None = None

    def __aiter__(self) -> CodeStream:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        msg, payload = item
        if isinstance(msg, protocol.Data) and msg.fd in (1, 2):
            return ("stdout" if msg.fd == 1 else "stderr"), payload.decode("utf-8", "replace")
        if isinstance(msg, protocol.CodeResult) and isinstance(msg.data, dict):
            return "result", msg
        if isinstance(msg, protocol.CodeError):
            return "error", msg
        raise AgentError("internal", f"unexpected {msg.T!r} frame on a code stream")

    def _result(self, msg: Message) -> None:
        v = getattr(msg, "value", None)
        if not isinstance(v, dict):
            raise AgentError("internal", f"malformed end of a cell {v!r}")
        count = v.get("execution_count")
        reason = v.get("reason")
        self.done = protocol.CodeDone(
            execution_count=count if isinstance(count, int) else None,
            timed_out=v.get("timed_out") is True,
            restarted=v.get("restarted") is True,
            reason=reason if isinstance(reason, str) else None,
            output_truncated=v.get("output_truncated") is True,
        )

    async def detach(self) -> None:
        self._detach()


class FileDownload(_Reply):
    """Chunks of a file being read; after the end, ``size`` is the byte count."""

    def __init__(self, client: AgentClient, req: protocol.FileRead, timeout: float) -> None:
        super().__init__(client, None)
        self._ended = False
        self._req = req
        self._timeout = timeout
        self.size: int | None = None

    async def _start(self) -> None:
        client = self._client
        ch = client._open()
        self._ch = ch
        try:
            await client._send(ch.id, self._req)
            # Only wait for the first frame here; _next then takes it like any other, so a
            # missing file raises before the first chunk.
            async with asyncio.timeout(self._timeout):
                await ch.ready()
        except TimeoutError:
            self._detach()
            raise AgentTimeout(
                f"the agent did not answer file.read within {self._timeout:g} s"
            ) from None
        except BaseException:
            self._detach()
            raise
        if isinstance(ch.items[0][0], protocol.Error):
            await self._next()  # raises it

    def __aiter__(self) -> FileDownload:
        return self

    async def __anext__(self) -> bytes:
        if self._ch is None and not self._ended:
            await self._start()
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        msg, payload = item
        if not isinstance(msg, protocol.Data):
            raise AgentError("internal", f"unexpected {msg.T!r} frame in a file read")
        return payload

    def _result(self, msg: Message) -> None:
        v = getattr(msg, "value", None)
        self.size = v if isinstance(v, int) else None

    async def __aenter__(self) -> FileDownload:
        if self._ch is None and not self._ended:
            await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._detach()

    async def aclose(self) -> None:
        self._detach()


class Watch(_Reply):
    """``async for event in watch`` yields protocol.WatchEvent; ``await cancel()`` stops it."""

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> protocol.WatchEvent:
        item = await self._next()
        if item is None:
            raise StopAsyncIteration
        msg, _ = item
        if not isinstance(msg, protocol.WatchEvent) or not isinstance(msg.name, str):
            raise AgentError("internal", f"unexpected {msg.T!r} frame on a watch")
        return msg

    async def cancel(self) -> None:
        self._detach()


class NetConnection(_Reply):
    """One connection a sandbox made to its egress port, as a byte stream both ways."""

    async def connected(self) -> None:
        """Wait for the connection (there is no deadline: a sandbox connects when it will)."""
        item = await self._next()
        if item is None or not isinstance(item[0], protocol.NetConnected):
            raise AgentError("internal", "the agent ended an egress accept without a connection")

    async def read(self) -> bytes:
        """The next bytes the sandbox's client sent; b"" at its end (half-close or close)."""
        item = await self._next()
        if item is None:
            return b""
        msg, payload = item
        if isinstance(msg, protocol.End):
            return b""
        if isinstance(msg, protocol.Data):
            return payload
        raise AgentError("internal", f"unexpected {msg.T!r} frame on an egress connection")

    async def write(self, data: bytes, timeout: float) -> None:
        """Send bytes to the sandbox's client as its agent takes them: ``timeout`` bounds each
        wait for credit (a client that stops reading)."""
        ch = self._ch
        assert ch is not None
        for i in range(0, len(data), protocol.CHUNK):
            while ch.credits <= 0:
                if ch.gone is not None or ch.finished:
                    raise ch.gone or AgentGone("the egress connection was closed")
                await ch.wait_credit(timeout, f"the sandbox read nothing for {timeout:g} s")
            ch.credits -= 1
            await self._client._send(ch.id, protocol.Data(), data[i : i + protocol.CHUNK])

    async def write_eof(self) -> None:
        if self._ch is not None and not self._ch.finished:
            await self._client._send(self._ch.id, protocol.End())

    async def finish(self, timeout: float) -> None:
        """After both halves ended: wait (up to ``timeout``) for the agent to have delivered
        everything and closed its side, then close. A cancel instead would drop what the
        agent has not yet written to the sandbox's socket (a refusal's answer, say)."""
        with contextlib.suppress(AgentGone, AgentError, TimeoutError):
            async with asyncio.timeout(timeout):
                while await self._next() is not None:
                    pass
        self._detach()

    def close(self) -> None:
        """Close the connection at once (the agent shuts the sandbox's socket)."""
        self._detach()
