"""Answers gathered from every node: lists of sandboxes, a template warmed everywhere, and the
dashboard's host overview and live list, which on one host are the daemon's own.

Each node answers for what it holds; the gateway joins the answers. A node that fails to
answer is left out of a list (its sandboxes are the ones a client would hear are lost); an
error every node gives alike (a bad key, a bad query) is passed on as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from firebox.server.cluster.nodes import Node
from firebox.server.gateway import forward
from firebox.server.gateway.directory import Directory

FIRST_WAIT = 3.0  # seconds the first list waits for every node's part of it
HEARTBEAT = 15.0  # seconds between comments on a quiet event stream (proxies keep it open)
JSON = b"application/json"


class Kept:
    """An answer kept whole instead of sent (a create's, to try another node if refused; a
    list's, to join it with the others)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.parts.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    async def replay(self, send: Send) -> None:
        body = self.body
        headers = [(k, v) for k, v in self.headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def unheard() -> Message:
    """The client's side, for an answer the gateway keeps whole before sending it: the body
    was read already, and the client's leaving matters only once the answer is sent."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


Join = Callable[[list[tuple[Node, Any]]], Any]


async def gather(
    d: Directory, nodes: list[Node], scope: Scope, send: Send, body: bytes | None, join: Join
) -> None:
    """Ask every one of ``nodes`` the same; answer with ``join`` of their JSON answers.
    NodeUnreachable when none answered (the gateway answers that in the edge's words)."""
    kept = [Kept() for _ in nodes]
    results = await asyncio.gather(
        *(
            forward.forward(scope, unheard, k.send, d.pool(n), body)
            for n, k in zip(nodes, kept, strict=True)
        ),
        return_exceptions=True,
    )
    answered = [(n, k) for n, k, s in zip(nodes, kept, results, strict=True) if isinstance(s, int)]
    failing = [k for _, k in answered if k.status >= 400]
    if failing:
        await failing[0].replay(send)  # a bad key or query: every node says the same
        return
    if not answered:
        raise forward.NodeUnreachable("no node answered")
    out = join([(n, json.loads(k.body or b"null")) for n, k in answered])
    await forward.answer(send, 200, json.dumps(out).encode(), JSON)


def join_lists(answers: list[tuple[Node, Any]]) -> list[Any]:
    return [item for _, items in answers for item in items]


def join_by_node(answers: list[tuple[Node, Any]]) -> dict[str, Any]:
    return {n.name: a for n, a in answers}


def join_overviews(answers: list[tuple[Node, Any]]) -> dict[str, Any]:
    """The dashboard's host panel for a cluster: sums, and each node's own."""
    first = answers[0][1]
    pool: dict[str, int] = {}
    for _, a in answers:
        for k, v in a.get("pool", {}).items():
            pool[k] = pool.get(k, 0) + v
    backends = sorted({a["backend"] for _, a in answers})
    return {
        **first,
        "backend": ", ".join(backends),
        "backend_reason": f"a cluster of {len(answers)} nodes",
        "consequence": "; ".join(
            f"{n.name}: {a['backend']} ({a['sandboxes']} sandboxes)" for n, a in answers
        ),
        "sandboxes": sum(a["sandboxes"] for _, a in answers),
        "max_sandboxes": sum(a["max_sandboxes"] for _, a in answers),
        "committed_mb": sum(a["committed_mb"] for _, a in answers),
        "max_memory_mb": sum(a["max_memory_mb"] for _, a in answers),
        "pool": pool,
        "nodes": {n.name: a for n, a in answers},
    }


async def events(
    d: Directory, nodes: list[Node], scope: Scope, receive: Receive, send: Send
) -> None:
    """The dashboard's live list: every node's event stream read at once, and one joined
    ``sandboxes`` event sent whenever any of them changes."""
    latest: dict[str, list[Any]] = {}
    changed = asyncio.Event()

    def reader(node: Node) -> Callable[[Message], Awaitable[None]]:
        pending = b""

        async def node_send(message: Message) -> None:
            nonlocal pending
            if message["type"] != "http.response.body":
                return
            pending += message.get("body", b"")
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                lines = event.split(b"\n")
                data = b"".join(line[6:] for line in lines if line.startswith(b"data: "))
                if b"event: sandboxes" in lines and data:
                    latest[node.name] = json.loads(data)
                    changed.set()

        return node_send

    streams = [
        asyncio.create_task(forward.forward(scope, unheard, reader(n), d.pool(n), b""))
        for n in nodes
    ]
    left = asyncio.create_task(_until_left(receive))
    whole_by = time.monotonic() + FIRST_WAIT
    try:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        while not left.done():
            waiting = asyncio.create_task(changed.wait())
            done, _ = await asyncio.wait(
                {waiting, left}, timeout=HEARTBEAT, return_when="FIRST_COMPLETED"
            )
            waiting.cancel()
            if left.done():
                break
            if changed.is_set() and len(latest) < len(nodes) and time.monotonic() < whole_by:
                await asyncio.sleep(0.05)  # the first list is every node's, or it waits a bit
                continue
            if changed.is_set():
                changed.clear()
                rows = [row for name in sorted(latest) for row in latest[name]]
                chunk = f"event: sandboxes\ndata: {json.dumps(rows, sort_keys=True)}\n\n"
            else:
                chunk = ": still here\n\n"
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        for task in [*streams, left]:
            task.cancel()
        for task in [*streams, left]:
            with contextlib.suppress(BaseException):
                await task


async def _until_left(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
