"""The multiplexer: one reader task reads frames and routes each to its channel's queue;
callers open channels (odd, increasing ids), send a request and take its answer here, or its
replies through a stream (``streams``). ``_route`` holds every frame to the limits we granted;
what breaks them ends the connection (the package's docstring says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterable
from contextvars import ContextVar
from typing import Any

from firebox import protocol
from firebox.agent_client.channel import _Channel, _counted, _final
from firebox.agent_client.errors import AgentError, AgentGone, AgentTimeout, _raise_error
from firebox.agent_client.streams import (
    CodeStream,
    FileDownload,
    NetConnection,
    ProcessStream,
    Watch,
)
from firebox.protocol import Message

# Frames a channel may queue beyond its credited window: the final message, a "started".
_UNCOUNTED_SLACK = 4
STREAM_LIMIT = protocol.STREAM_LIMIT

# Where the seconds spent waiting for the agent's first reply to each request go: a list set
# for the current context (the daemon's Server-Timing middleware sets one per HTTP request,
# which the tasks it starts inherit), or None to keep no count. A context variable, so that
# this layer reports its waits without importing the server that reads them.
agent_waits: ContextVar[list[float] | None] = ContextVar("agent_waits", default=None)


class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._channels: dict[int, _Channel] = {}
        self._next_id = 1
        self._gone: AgentGone | None = None
        self._hello: protocol.Hello | None = None
        self._hello_event = asyncio.Event()
        self._quiesced = asyncio.Event()
        self._holding: asyncio.Event | None = None  # set: writes wait (``hold``)
        self._pending: list[bytes] = []  # small frames written while held
        # when a frame last came from the agent: its liveness (server/liveness.py)
        self.last_heard = time.monotonic()
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

    @property
    def greeted(self) -> bool:
        """Whether the agent's hello has come on this connection."""
        return self._hello is not None

    async def adopt(self, timeout: float) -> protocol.Hello:
        """Take the sandbox over from a daemon that is gone (``protocol.Adopt``): returns
        once the agent has let go of that daemon's channels and said hello."""
        await self.send_control(protocol.Adopt())
        return await self.wait_hello(timeout)

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

    async def attach_process(self, pid: int, timeout: float = 30) -> ProcessStream:
        """Listen to a running process from now on: its later output, then its exit, as the
        stream of ``start_process`` gives them. AgentError ``not_found`` for a pid the agent
        did not start or whose output is over. Any number may listen at once; ``detach()``
        stops this one listening (the process runs on)."""
        req = protocol.ProcessAttach(pid=pid)
        ch, reply = await self._open_stream(req, timeout)
        if not isinstance(reply, protocol.ProcessStarted) or reply.pid != pid:
            self._abandon(ch)
            _raise_error(reply, req.T)
        return ProcessStream(self, ch, pid)

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

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        """Resize the terminal of a process started with ``pty``."""
        await self.call(protocol.ProcessResize(pid=pid, cols=cols, rows=rows))

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
        self,
        path: str,
        user: str,
        chunks: AsyncIterable[bytes],
        timeout: float = 60,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Upload ``chunks`` to ``path``; returns the new file's EntryInfo dict. ``metadata``
        (E2B's) replaces what the file had.

        ``timeout`` bounds each wait for the agent (credit, the final answer), not the upload.
        """
        req = protocol.FileWrite(path=path, user=user, metadata=metadata or None)
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

    async def net_connect(self, port: int, timeout: float = 15) -> NetConnection:
        """A connection to ``port`` on the sandbox's own loopback (its server's), made by the
        agent; raises AgentError ``connection_refused`` when nothing listens there."""
        req = protocol.NetConnect(port=port)
        ch, reply = await self._open_stream(req, timeout)
        if not isinstance(reply, protocol.NetConnected):
            self._abandon(ch)
            _raise_error(reply, req.T)
        return NetConnection(self, ch)

    def interrupt(self, gone: AgentGone) -> None:
        """End every request and stream in flight with ``gone`` and have the agent stop
        sending on each (a pause): the connection stays, new requests may follow."""
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            if not ch.finished:  # detached, not cancelled: a cell in it runs on
                self._send_nowait(ch.id, protocol.Detach())
            ch.items.clear()
            ch.stop(gone)

    async def hold(self, timeout: float) -> None:
        """Write nothing more (requests wait; credits are kept) and have the agent do the
        same (``quiesce``): the stream is at a frame boundary both ways while a running VM's
        memory is saved. ``release`` lets both go on."""
        self._holding = asyncio.Event()
        try:
            await self.quiesce(timeout)
        except BaseException:
            self._release_writes()
            raise

    async def release(self) -> None:
        """After ``hold``: the agent writes again (``Resume`` with the clock only: it keeps
        its identity and its channels), then so do we."""
        try:
            frame = protocol.encode(
                protocol.CONTROL_CHANNEL, protocol.Resume(time_ns=time.time_ns())
            )
            self._writer.write(frame)
        except (ConnectionError, OSError, RuntimeError) as e:
            self._stop(AgentGone(f"writing to the agent failed: {e}"))
        self._release_writes()

    def _release_writes(self) -> None:
        holding, self._holding = self._holding, None
        pending, self._pending = self._pending, []
        if self._gone is None:
            for frame in pending:
                with contextlib.suppress(Exception):
                    self._writer.write(frame)
        if holding is not None:
            holding.set()

    async def quiesce(self, timeout: float) -> None:
        """Have the agent stop writing (``protocol.Quiesce``) and wait for its last frame:
        the stream is then at a frame boundary both ways, as a VM's saved memory needs."""
        self._quiesced.clear()
        await self.send_control(protocol.Quiesce())
        async with asyncio.timeout(timeout):
            await self._quiesced.wait()
        if self._gone is not None:
            raise self._gone

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
            waits = agent_waits.get()
            if waits is not None:
                waits.append(time.perf_counter() - started)

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
        while self._holding is not None and cid != protocol.CONTROL_CHANNEL and not self._gone:
            await self._holding.wait()
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
                if self._holding is not None:
                    self._pending.append(protocol.encode(cid, msg))
                else:
                    self._writer.write(protocol.encode(cid, msg))

    async def _read_loop(self) -> None:
        reason = "the agent closed its channel"
        try:
            while True:
                head = await self._reader.readexactly(protocol.FRAME_HEAD.size)
                cid, plen, hlen = protocol.decode_head(head)
                header = protocol.decode_header(await self._reader.readexactly(hlen))
                payload = await self._reader.readexactly(plen) if plen else b""
                self.last_heard = time.monotonic()
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
            if header.get("t") == protocol.Quiesced.T:
                self._quiesced.set()
            elif header.get("t") == protocol.Hello.T and self._hello is None:
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
        self._quiesced.set()
        if self._holding is not None:
            self._holding.set()  # writers waiting on a hold meet the end instead
        with contextlib.suppress(Exception):
            self._writer.close()
