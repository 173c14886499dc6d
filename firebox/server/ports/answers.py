"""The port proxy's own answers: short plain text that says what happened and what to do
(a browser shows it as it is), never a page of the sandbox's."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Scope, Send


async def plain(
    send: Send,
    status: int,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    kind: str = "http",
) -> None:
    """``kind`` "websocket": the answer to a WebSocket handshake refused (the server's
    ``websocket.http.response`` extension), which a client sees as that HTTP status."""
    prefix = "websocket.http" if kind == "websocket" else "http"
    body = (message.rstrip() + "\n").encode()
    await send(
        {
            "type": f"{prefix}.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": f"{prefix}.response.body", "body": body, "more_body": False})


async def refuse_websocket(scope: Scope, send: Send, status: int, message: str) -> None:
    """Refuse a WebSocket handshake (its ``websocket.connect`` received) with an HTTP
    answer where the server can, else with a close, which clients see as a 403."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await plain(send, status, message, kind="websocket")
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
