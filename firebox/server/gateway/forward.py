"""One request, forwarded to the node that serves it, and its answer streamed back.

The gateway's HTTP server (uvicorn) has parsed the client's request; it is written anew to
the node with h11 and the node's answer is read with h11 and given back to uvicorn as it
comes, so bodies stream both ways with flow control end to end (a slow client holds back its
own request and nothing else) and a request smuggled in conflicting lengths never reaches a
node as two.

Connections to a node are kept open and reused: a command's round trip through the gateway
then costs parsing and one loopback or LAN hop, not a TCP handshake and a new connection
for the node's server. A kept connection may have been closed by the node meanwhile (its
idle timeout), which shows only when its answer never comes: a request whose body is small
is read whole first, so that it can be sent again on a fresh connection; a larger one
streams on a fresh connection of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import h11
from starlette.types import Receive, Scope, Send

from firebox.server.ports import http_relay

CONNECT_SECONDS = 5.0
WRITE_SECONDS = 60.0  # a node may leave a request's body unread this long
IDLE_SECONDS = 3.0  # a kept connection idle longer is not reused (uvicorn closes at 5 s)
KEPT = 32  # connections kept per node
REPLAYABLE = 64 << 10  # bodies up to this are read whole first (and can be sent again)
# hop-by-hop headers, as the port proxy drops them; and the framing, which h11 writes anew
HOP = http_relay.HOP | {b"transfer-encoding"}


class NodeUnreachable(Exception):
    """The node did not take the request (nothing of it reached the node's sandboxes)."""


class Upstream:
    """One connection to a node; also what the WebSocket relay speaks over (its
    ``ByteStream``: ``read``, ``write``, ``close``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        self.reused = False

    async def write(self, data: bytes, timeout: float = WRITE_SECONDS) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def read(self) -> bytes:
        return await self.reader.read(65536)

    async def next_event(self) -> object:
        while True:
            event = self.h.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h.receive_data(await self.read())

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Kept connections to one node (``host:port``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[Upstream] = []

    async def take(self, fresh: bool = False) -> Upstream:
        now = time.monotonic()
        while self._idle and not fresh:
            up = self._idle.pop()
            if now - up.idle_since < IDLE_SECONDS and not up.reader.at_eof():
                up.reused = True
                return up
            up.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_SECONDS
            )
        except (OSError, TimeoutError) as e:
            raise NodeUnreachable(f"cannot connect to {self.host}:{self.port}: {e}") from None
        return Upstream(reader, writer)

    def give(self, up: Upstream) -> None:
        """Keep ``up`` if its exchange ended cleanly, else close it."""
        if up.h.our_state is h11.DONE and up.h.their_state is h11.DONE and len(self._idle) < KEPT:
            up.h.start_next_cycle()
            up.idle_since = time.monotonic()
            self._idle.append(up)
        else:
            up.close()

    def close(self) -> None:
        for up in self._idle:
            up.close()
        self._idle.clear()


def _length(scope: Scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            return int(v)
    return None


def _chunked(scope: Scope) -> bool:
    return any(k == b"transfer-encoding" for k, _ in scope["headers"])


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes; None past it (what was read is lost:
    call only when the length is known to be within it)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client left")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            return None
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    pool: Pool,
    body: bytes | None = None,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> int:
    """Forward the request of ``scope`` to ``pool``'s node and stream the answer back; the
    answer's status. ``body``: the request's body when the caller has read it already.
    Raises NodeUnreachable when the node took none of it (the caller answers)."""
    length = _length(scope)
    if body is None and not _chunked(scope) and (length or 0) <= REPLAYABLE:
        body = await read_body(receive, REPLAYABLE)
    headers = [(k, v) for k, v in scope["headers"] if k not in HOP and k != b"content-length"]
    headers.extend(extra)
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    target = scope.get("raw_path") or scope["path"].encode()
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    request = h11.Request(method=scope["method"], target=target, headers=headers)
    for attempt in (0, 1):
        up = await pool.take(fresh=body is None or attempt == 1)
        try:
            return await _exchange(up, pool, request, body, receive, send)
        except _Stale:
            up.close()
            if body is None or attempt == 1:
                raise NodeUnreachable("the node closed the connection unanswered") from None
    raise AssertionError("unreachable")


class _Stale(Exception):
    """A kept connection the node had closed: nothing was answered on it."""


async def _exchange(
    up: Upstream, pool: Pool, request: h11.Request, body: bytes | None,
    receive: Receive, send: Send,
) -> int:  # fmt: skip
    started = False
    watcher: asyncio.Task[bool] | None = None
    try:
        try:
            data = up.h.send(request) or b""
            if body is not None:
                data += (up.h.send(h11.Data(data=body)) if body else b"") or b""
                data += up.h.send(h11.EndOfMessage()) or b""
            await up.write(data)
        except (OSError, TimeoutError) as e:
            if up.reused:
                raise _Stale() from None
            raise NodeUnreachable(f"the node's connection broke: {e}") from None
        # the client's body (if it streams), then its leaving, which ends a long answer
        watcher = asyncio.create_task(_client(up, receive, streaming=body is None))
        status = 0
        while True:
            try:
                event = await up.next_event()
            except (OSError, h11.RemoteProtocolError) as e:
                if _left(watcher):
                    return status  # the client left, and its answer with it
                if not started and up.reused:
                    raise _Stale() from None
                if not started:
                    raise NodeUnreachable(f"the node's connection broke: {e}") from None
                raise
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k, v) for k, v in event.headers if k.lower() not in HOP]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                started = True
            elif isinstance(event, h11.Data):
                await send(
                    {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                )
            elif isinstance(event, h11.EndOfMessage):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                break
            elif isinstance(event, h11.ConnectionClosed):
                if _left(watcher):
                    return status  # the client left, and its answer with it
                if not started and up.reused:
                    raise _Stale()
                if not started:
                    raise NodeUnreachable("the node closed the connection unanswered")
                raise ConnectionResetError("the node's answer was cut short")
        watcher.cancel()
        pool.give(up)  # kept only if the client's body was all sent too
        return status
    except BaseException:
        if watcher is not None:
            watcher.cancel()
        up.close()
        raise


def _left(watcher: asyncio.Task[bool]) -> bool:
    """Whether the client has left (its answer is then cut short, and nobody's error)."""
    return (
        watcher.done()
        and not watcher.cancelled()
        and watcher.exception() is None
        and watcher.result()
    )


async def _client(up: Upstream, receive: Receive, streaming: bool) -> bool:
    """Send a streamed body to the node, then wait for the client to leave: that closes the
    node's connection, which ends an answer that never ends by itself (Server-Sent Events).
    True once the client left."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            up.close()
            return True
        if not streaming:
            continue
        chunk = message.get("body", b"")
        if chunk:
            await up.write(up.h.send(h11.Data(data=chunk)) or b"")
        if not message.get("more_body", False):
            await up.write(up.h.send(h11.EndOfMessage()) or b"")
            streaming = False


async def answer(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
