"""One HTTP request to a sandbox's server, relayed over one agent connection.

The daemon's HTTP server (uvicorn) has parsed the client's request; this writes it anew to
the sandbox's server with h11 (clean framing: a request smuggled in conflicting lengths never
reaches the sandbox as two) and streams the answer back as it comes. Bodies stream both ways
with flow control end to end: the client's body is read only as the agent takes it, and the
server's answer is read from the agent only as the client takes it, so a slow browser holds
back its own connection and nothing else. Each request has its connection (``Connection:
close``): Server-Sent Events and long downloads are simply long answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import h11
from starlette.types import Receive, Scope, Send

from firebox.agent_client import AgentError, AgentGone, NetConnection
from firebox.server import telemetry
from firebox.server.ports import answers

WRITE_DEADLINE = 60.0  # seconds the sandbox may leave the request's body unread
# hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own: never passed on
HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
}

REFRAMED = (b"transfer-encoding", b"date")  # of an answer: uvicorn frames and dates it


async def relay(
    scope: Scope,
    receive: Receive,
    send: Send,
    conn: NetConnection,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
) -> None:
    """Relay the request of ``scope`` for ``target`` (its ``headers`` already cleaned of
    credentials) to ``conn`` and the answer back; closes ``conn``."""
    h = h11.Connection(h11.CLIENT)
    out = [(k, v) for k, v in headers if k.lower() not in HOP]
    if any(k.lower() == b"transfer-encoding" for k, _ in out):
        # the body is re-framed as chunked; a length beside it is what smuggling relies on
        out = [(k, v) for k, v in out if k.lower() not in (b"content-length", b"transfer-encoding")]
        out.append((b"transfer-encoding", b"chunked"))
    out.append((b"connection", b"close"))
    request = h11.Request(method=scope["method"], target=target, headers=out)
    responded = False
    try:
        await conn.write(h.send(request) or b"", WRITE_DEADLINE)
        upload = asyncio.create_task(_send_body(h, receive, conn))
        try:
            responded = await _answer(h, send, conn)
            if not responded:
                await _bad_gateway(send, "the sandbox's server closed the connection unanswered")
                responded = True
        finally:
            upload.cancel()
            with contextlib.suppress(BaseException):
                await upload
    except (AgentGone, AgentError, h11.RemoteProtocolError, TimeoutError) as e:
        if not responded:
            await _bad_gateway(send, f"the sandbox's server broke the connection: {e}")
        # else: the answer is cut short; the client sees its connection end early
    finally:
        conn.close()


async def _send_body(h: h11.Connection, receive: Receive, conn: NetConnection) -> None:
    """The client's body to the sandbox; then wait for the client to leave, which closes the
    connection (uvicorn drops what is sent to a client gone, so the answer's end alone would
    never come for an endless one such as Server-Sent Events)."""
    sending = True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close()  # the client left: the sandbox's server sees its connection close
            return
        if not sending:
            continue
        body = message.get("body", b"")
        if body:
            telemetry.PORT_BYTES.labels(direction="in").inc(len(body))
            await conn.write(h.send(h11.Data(data=body)) or b"", WRITE_DEADLINE)
        if not message.get("more_body", False):
            await conn.write(h.send(h11.EndOfMessage()) or b"", WRITE_DEADLINE)
            sending = False


async def _answer(h: h11.Connection, send: Send, conn: NetConnection) -> bool:
    """Stream the server's answer to the client; True once its head was sent."""
    started = False
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            h.receive_data(await conn.read())
            continue
        if isinstance(event, h11.InformationalResponse):
            continue  # 100 Continue and the like: uvicorn speaks for itself
        if isinstance(event, h11.Response):
            headers = [(k, v) for k, v in event.headers if k.lower() not in HOP]
            # uvicorn frames the answer itself (chunked unless a length is given) and dates it
            headers = [(k, v) for k, v in headers if k.lower() not in REFRAMED]
            await send(
                {"type": "http.response.start", "status": event.status_code, "headers": headers}
            )
            started = True
        elif isinstance(event, h11.Data):
            telemetry.PORT_BYTES.labels(direction="out").inc(len(event.data))
            await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            if started:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return started


async def _bad_gateway(send: Send, message: str) -> None:
    await answers.plain(send, 502, message)
