"""One WebSocket to a sandbox's server, relayed over one agent connection.

uvicorn speaks WebSocket with the client; this speaks it anew with the sandbox's server
(wsproto, as a client over the agent's connection) and passes whole messages between the two:
the sandbox never sees the client's frames, masks or extensions, only clean ones. Each side is
read only as the other takes what was read, so a slow end holds back this socket alone. A close
from either side closes the other with its code; the sandbox's kill or pause ends both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

from starlette.types import Receive, Scope, Send
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from firebox.agent_client import AgentError, AgentGone
from firebox.server import telemetry
from firebox.server.ports import answers

WRITE_DEADLINE = 60.0
MAX_MESSAGE = 16 << 20  # bytes of one message from the sandbox, assembled from its frames
GOING_AWAY = 1001


class ByteStream(Protocol):
    """What the relay speaks WebSocket over: an agent's connection to a port in a sandbox,
    or (the gateway's) a TCP connection to the node holding the sandbox."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes, timeout: float) -> None: ...
    def close(self) -> None: ...


async def relay(
    scope: Scope,
    receive: Receive,
    send: Send,
    conn: ByteStream,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
) -> None:
    """The client's ``websocket.connect`` has been received by the caller; opens the socket
    to the sandbox's server at ``target``, accepts the client's with its answer, and relays;
    closes ``conn``."""
    ws = WSConnection(ConnectionType.CLIENT)
    accepted_once = False
    host = dict(headers).get(b"host", b"localhost").decode("latin-1")
    passed = [
        (k, v)
        for k, v in headers
        if k.lower() not in (b"host", b"connection", b"upgrade")
        and not k.lower().startswith(b"sec-websocket-")
    ]
    try:
        await conn.write(
            ws.send(
                Request(
                    host=host,
                    target=target.decode("latin-1"),
                    subprotocols=list(scope.get("subprotocols", [])),
                    extra_headers=passed,
                )
            ),
            WRITE_DEADLINE,
        )
        accepted = await _handshake(ws, conn)
        if accepted is None:
            refused = "the sandbox's server refused the WebSocket handshake"
            await answers.refuse_websocket(scope, send, 502, refused)
            return
        reply: dict[str, object] = {"type": "websocket.accept"}
        if accepted.subprotocol:
            reply["subprotocol"] = accepted.subprotocol
        await send(reply)
        accepted_once = True
        await _both_ways(ws, receive, send, conn)
    except (
        AgentGone,
        AgentError,
        OSError,
        TimeoutError,
        RemoteProtocolError,
        LocalProtocolError,
    ) as e:
        with contextlib.suppress(Exception):
            if not accepted_once:
                broke = f"the sandbox's server broke the WebSocket handshake: {e}"
                await answers.refuse_websocket(scope, send, 502, broke)
            else:
                await send({"type": "websocket.close", "code": GOING_AWAY})
    finally:
        conn.close()


async def _handshake(ws: WSConnection, conn: ByteStream) -> AcceptConnection | None:
    while True:
        data = await conn.read()
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return event
            if isinstance(event, RejectConnection | RejectData):
                return None
        if not data:
            return None


async def _both_ways(ws: WSConnection, receive: Receive, send: Send, conn: ByteStream) -> None:
    """Until either side is done: the client left (its close is passed on), or the sandbox's
    server closed (its close is passed on) or went away."""
    tasks = [
        asyncio.create_task(_client_to_sandbox(ws, receive, conn)),
        asyncio.create_task(_sandbox_to_client(ws, send, conn)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # its failure is the relay's
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def _client_to_sandbox(ws: WSConnection, receive: Receive, conn: ByteStream) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code = int(message.get("code") or 1000)
            with contextlib.suppress(Exception):
                await conn.write(ws.send(CloseConnection(code=_sendable(code))), WRITE_DEADLINE)
            return
        if message["type"] != "websocket.receive":
            continue
        if message.get("bytes") is not None:
            out = ws.send(BytesMessage(data=message["bytes"]))
        else:
            out = ws.send(TextMessage(data=message.get("text") or ""))
        telemetry.PORT_BYTES.labels(direction="in").inc(len(out))
        await conn.write(out, WRITE_DEADLINE)


async def _sandbox_to_client(ws: WSConnection, send: Send, conn: ByteStream) -> None:
    parts: list[bytes | bytearray | str] = []
    size = 0
    while True:
        data = await conn.read()
        telemetry.PORT_BYTES.labels(direction="out").inc(len(data))
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, Ping):
                await conn.write(ws.send(event.response()), WRITE_DEADLINE)
            elif isinstance(event, CloseConnection):
                with contextlib.suppress(Exception):
                    await conn.write(ws.send(event.response()), WRITE_DEADLINE)
                await send({"type": "websocket.close", "code": event.code})
                return
            elif isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                size += len(event.data)
                if size > MAX_MESSAGE:
                    await send({"type": "websocket.close", "code": 1009})
                    return
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        await send({"type": "websocket.send", "text": "".join(map(str, parts))})
                    else:
                        joined = b"".join(p for p in parts if not isinstance(p, str))
                        await send({"type": "websocket.send", "bytes": joined})
                    parts, size = [], 0
        if not data:
            await send({"type": "websocket.close", "code": GOING_AWAY})
            return


def _sendable(code: int) -> int:
    # codes an endpoint may send (RFC 6455 §7.4): 1005/1006 are only ever observed
    return 1000 if code in (1005, 1006) or code < 1000 else code
