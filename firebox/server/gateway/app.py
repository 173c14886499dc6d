"""The gateway's ASGI application: each request to the node that serves it (routing.py),
forwarded with its body and answer streaming (forward.py); creates placed on a node
(server/cluster/placement.py); lists gathered from every node.

The gateway holds no state of its own: what it knows is read from the cluster's database
(directory.py), so any number of gateways may run, and one restarted loses nothing. It never
decides who may do what: every request reaches a node, which checks its key against the
shared registry as a single daemon does. The one answer the gateway gives itself about a
sandbox, that it was lost with its node, is given only to its owner's key; anyone else gets
the node's own "not found".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from starlette.types import Receive, Scope, Send

from firebox.server.auth import hash_key, key_of
from firebox.server.cluster.nodes import Node
from firebox.server.cluster.placement import candidates
from firebox.server.gateway import forward, gathered, telemetry
from firebox.server.gateway.directory import Directory
from firebox.server.gateway.routing import Route, route
from firebox.server.ports import ws_relay
from firebox.server.registry import KeyRecord
from firebox.version import __version__

log = logging.getLogger("firebox.gateway")

MAX_CREATE_BODY = 1 << 20
PLACE_SECONDS = 120.0  # a place taken for a create is freed after this, if never released
REFUSALS = (429, 503)  # a node's admission refusal: the next candidate is tried
JSON = b"application/json"


class Gateway:
    def __init__(self, directory: Directory, domain: str) -> None:
        self.directory = directory
        self.domain = domain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        headers = dict(scope["headers"])
        r = route(scope.get("method", "GET"), scope["path"], headers, self.domain)
        telemetry.REQUESTS.labels(route=r.kind).inc()
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send, r)
            elif r.kind == "sandbox":
                await self._sandbox(scope, receive, send, r)
            elif r.kind == "create":
                await self._create(scope, receive, send, r)
            elif r.kind in ("list", "warm", "overview", "events"):
                await self._everywhere(scope, receive, send, r)
            elif r.kind == "snapshot":
                await self._snapshot(scope, receive, send, r)
            elif r.kind == "health":
                await self._health(scope, send)
            elif r.kind == "metrics":
                await self._metrics(scope, send, r)
            elif r.kind == "keyed":
                node = self.directory.sticky(key_of(_text_headers(scope)) or "")
                await self._to(node, scope, receive, send, r)
            else:
                await self._to(self.directory.any_node(), scope, receive, send, r)
        except forward.NodeUnreachable as e:
            await _error(send, r, "unavailable", f"{e}; try again", 502)
        except ConnectionResetError:
            pass  # the client left, or a node's answer was cut short: nothing to answer

    # one node

    async def _to(
        self, node: Node | None, scope: Scope, receive: Receive, send: Send, r: Route,
        body: bytes | None = None,
    ) -> int:  # fmt: skip
        if node is None:
            await _error(send, r, "unavailable", _no_node(self.directory), 503)
            return 503
        return await forward.forward(scope, receive, send, self.directory.pool(node), body)

    async def _sandbox(self, scope: Scope, receive: Receive, send: Send, r: Route) -> None:
        place = await self.directory.locate(r.sandbox_id)
        if place is None:  # nobody's: any node answers "not found" in its edge's words
            await self._to(self.directory.any_node(), scope, receive, send, r)
            return
        node = self.directory.nodes.get(place.node)
        if node is None or node.state == "lost" or node.lease_left <= 0:
            if await self._owner(scope, place.owner):
                why = (
                    f"sandbox {r.sandbox_id} was lost: its node {place.node!r} stopped "
                    "answering (its lease ran out); it comes back if the node does, else "
                    "create another"
                )
                # E2B's SDKs know 404 as "not found" (a 410 would be an unknown error)
                await _error(send, r, "sandbox_lost", why, 404 if r.edge == "e2b" else 410)
            else:
                await self._to(self.directory.any_node(), scope, receive, send, r)
            return
        await self._to(node, scope, receive, send, r)

    async def _key(self, scope: Scope) -> KeyRecord | None:
        """The key the request shows, if the cluster knows it (the gateway asks only to word
        its own answers; the node decides what the key may do)."""
        key = key_of(_text_headers(scope))
        if not key:
            return None
        return await asyncio.to_thread(self.directory.registry.key_by_hash, hash_key(key))

    async def _owner(self, scope: Scope, owner: str) -> bool:
        record = await self._key(scope)
        return record is not None and record.id == owner

    async def _snapshot(self, scope: Scope, receive: Receive, send: Send, r: Route) -> None:
        record = await self._key(scope)
        name = await self.directory.snapshot_node(record.id, r.ref) if record else None
        node = self.directory.nodes.get(name) if name else None
        await self._to(node or self.directory.any_node(), scope, receive, send, r)

    # a create

    async def _create(self, scope: Scope, receive: Receive, send: Send, r: Route) -> None:
        body = await forward.read_body(receive, MAX_CREATE_BODY)
        if body is None:
            await _error(send, r, "too_large", "a create's body is 1 MiB at most", 413)
            return
        try:
            asked = json.loads(body or b"{}")
        except ValueError:
            asked = {}
        asked = asked if isinstance(asked, dict) else {}
        template = str(asked.get("template") or asked.get("templateID") or "")
        snapshot = asked.get("snapshot") if r.edge == "firebox" else asked.get("templateID")
        if snapshot:  # a snapshot starts on the node that keeps it
            caller = await self._key(scope)
            name = await self.directory.snapshot_node(caller.id, str(snapshot)) if caller else None
            if name is not None:
                await self._to(self.directory.nodes.get(name), scope, receive, send, r, body)
                return
        nodes = self.directory.nodes_table
        refused: gathered.Kept | None = None
        running = await asyncio.to_thread(nodes.running_counts)
        for node in candidates(list(self.directory.nodes.values()), template, running):
            place = await asyncio.to_thread(nodes.reserve, node.name, PLACE_SECONDS)
            if place is None:
                continue  # full, or no longer active: the next
            kept = gathered.Kept()
            pool = self.directory.pool(node)
            try:
                status = await forward.forward(scope, gathered.unheard, kept.send, pool, body)
            except forward.NodeUnreachable as e:
                log.warning("create: node %s did not answer (%s); trying another", node.name, e)
                continue
            finally:
                await asyncio.to_thread(nodes.release, place)
            if status in REFUSALS:
                refused = kept
                continue
            telemetry.PLACEMENTS.labels(outcome="placed").inc()
            await kept.replay(send)
            return
        if refused is not None:
            telemetry.PLACEMENTS.labels(outcome="refused").inc()
            await refused.replay(send)
            return
        telemetry.PLACEMENTS.labels(outcome="no_place").inc()
        await _error(send, r, "unavailable", _no_place(self.directory), 503)

    # every node

    async def _everywhere(self, scope: Scope, receive: Receive, send: Send, r: Route) -> None:
        """A list of sandboxes (every node's joined), a template warmed on every node, the
        dashboard's overview and live list."""
        body = await forward.read_body(receive, MAX_CREATE_BODY)
        nodes = [n for n in self.directory.live() if r.kind != "warm" or n.state == "active"]
        if not nodes:
            await _error(send, r, "unavailable", _no_node(self.directory), 503)
        elif r.kind == "events":
            await gathered.events(self.directory, nodes, scope, receive, send)
        else:
            join = {
                "list": gathered.join_lists,
                "warm": gathered.join_by_node,
                "overview": gathered.join_overviews,
            }[r.kind]
            await gathered.gather(self.directory, nodes, scope, send, body, join)

    # the gateway's own

    async def _health(self, scope: Scope, send: Send) -> None:
        """Up while the database answers; the nodes by state, and by name for the admin key
        (a node's name is the host's: not for anyone who can reach the gateway)."""
        d = self.directory
        ok = d.reachable
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "version": __version__,
            "role": "gateway",
            "nodes": dict(Counter(n.state for n in d.nodes.values())),
        }
        if await self._admin(scope):
            body["nodes"] = {n.name: n.state for n in d.nodes.values()}
        await forward.answer(send, 200 if ok else 503, json.dumps(body).encode(), JSON)

    async def _admin(self, scope: Scope) -> bool:
        record = await self._key(scope)
        return record is not None and record.admin

    async def _metrics(self, scope: Scope, send: Send, r: Route) -> None:
        if not await self._admin(scope):
            await _error(send, r, "forbidden", "the gateway's metrics need the admin key", 403)
            return
        body = telemetry.scrape()
        await forward.answer(send, 200, body, telemetry.CONTENT_TYPE.encode())

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, r: Route) -> None:
        """A WebSocket (to a port of a sandbox, or E2B's): spoken anew to the node."""
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        node: Node | None = None
        if r.kind == "sandbox":
            place = await self.directory.locate(r.sandbox_id)
            node = self.directory.nodes.get(place.node) if place else None
        node = node or self.directory.any_node()
        if node is None:
            await send({"type": "websocket.close", "code": 1013})
            return
        pool = self.directory.pool(node)
        try:
            up = await pool.take(fresh=True)
        except forward.NodeUnreachable:
            await send({"type": "websocket.close", "code": 1013})
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        await ws_relay.relay(scope, receive, send, up, target, scope["headers"])


def _text_headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _no_node(d: Directory) -> str:
    if not d.reachable:
        return "the gateway cannot reach the cluster's database; try again shortly"
    return "no node of the cluster is up; try again shortly (see `firebox node list`)"


def _no_place(d: Directory) -> str:
    states = ", ".join(f"{n.name} {n.state}" for n in d.nodes.values()) or "none"
    return (
        f"no node can take a sandbox now (nodes: {states}): all are full, draining or lost; "
        "try again shortly, or end sandboxes you no longer need"
    )


async def _error(send: Send, r: Route, code: str, message: str, status: int) -> None:
    """An answer of the gateway's own, in the shape of the edge the request came to."""
    if r.edge == "port":
        await forward.answer(send, status, message.encode(), b"text/plain; charset=utf-8")
        return
    if r.edge == "e2b":
        body: dict[str, Any] = {"code": status, "message": message}
    else:
        body = {"error": {"code": code, "message": message}}
    await forward.answer(send, status, json.dumps(body).encode(), JSON)
