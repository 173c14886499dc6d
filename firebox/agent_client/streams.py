"""The replies of a request that streams: async iterators over one channel, each crediting the
agent back as its consumer takes a frame, so a slow HTTP client slows the agent down instead of
filling the daemon's memory."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from firebox import protocol
from firebox.agent_client.channel import _final
from firebox.agent_client.errors import AgentError, AgentGone, AgentTimeout, _raise_error
from firebox.protocol import Message

if TYPE_CHECKING:  # the client makes these streams: a run-time import would be a cycle
    from firebox.agent_client.channel import _Channel
    from firebox.agent_client.client import AgentClient


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


# a process's output frames by fd: its pipes, or its terminal (agent/terminals.py's PTY_FD)
_PROCESS_FDS = {1: "stdout", 2: "stderr", 3: "pty"}


class ProcessStream(_Reply):
    """Output of a started (or attached) process: ``async for fd, data in stream`` with fd
    "stdout" or "stderr" ("pty" for one on a terminal); afterwards ``exit`` holds the
    ProcessExit. ``detach()`` stops reading (the process runs on, and ``attach_process`` can
    listen to it again)."""

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
        if isinstance(msg, protocol.Data) and msg.fd in _PROCESS_FDS:
            return _PROCESS_FDS[msg.fd], payload
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
