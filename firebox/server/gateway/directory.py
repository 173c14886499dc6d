"""What a gateway knows of its cluster: the nodes (read again every second or so, and lost
ones marked), where each sandbox and snapshot is, and a kept connection pool per node.

A sandbox never moves, so where it is is asked of the database once per gateway and kept
(bounded); a node's state comes from the last read. Both are the database's: a restarted
gateway knows all of it again from its first request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from firebox.server.cluster.nodes import Node, Nodes
from firebox.server.cluster.postgres import PostgresRegistry
from firebox.server.gateway.forward import Pool

log = logging.getLogger("firebox.gateway")

KEPT_PLACES = 100_000  # sandboxes whose node is remembered


@dataclass(frozen=True, slots=True)
class Place:
    node: str
    owner: str


class Directory:
    def __init__(self, registry: PostgresRegistry, lease: float) -> None:
        self.registry = registry
        self.nodes_table = Nodes(registry)
        self.every = min(1.0, lease / 3)
        self.nodes: dict[str, Node] = {}
        self._places: OrderedDict[str, Place] = OrderedDict()
        self._pools: dict[str, Pool] = {}
        self.reachable = False  # whether the last read of the database worked

    async def refresh(self) -> None:
        try:
            lost = await asyncio.to_thread(self.nodes_table.mark_lost)
            nodes = await asyncio.to_thread(self.nodes_table.all)
        except OSError as e:
            if self.reachable:
                log.error("cannot read the cluster's nodes: %s", e)
            self.reachable = False
            return
        for name in lost:
            log.warning("node %s is lost: its lease ran out", name)
        self.nodes = {n.name: n for n in nodes}
        self.reachable = True

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.every)

    def live(self) -> list[Node]:
        """Nodes that answer (active or draining, lease running)."""
        return [n for n in self.nodes.values() if n.state != "lost" and n.lease_left > 0]

    def any_node(self) -> Node | None:
        live = self.live()
        return random.choice(live) if live else None

    def sticky(self, key: str) -> Node | None:
        """The same live node for the same ``key`` from every gateway (while membership
        holds): a session that lives in one node's memory (MCP) stays there."""
        live = sorted((n for n in self.live() if n.state == "active"), key=lambda n: n.name)
        if not live:
            return None
        return live[int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % len(live)]

    async def locate(self, sandbox_id: str) -> Place | None:
        place = self._places.get(sandbox_id)
        if place is None:
            rows = await asyncio.to_thread(
                self.registry.query, "SELECT node, owner FROM sandboxes WHERE id = ?", (sandbox_id,)
            )
            if not rows:
                return None
            place = Place(rows[0][0], rows[0][1])
            self._places[sandbox_id] = place
            if len(self._places) > KEPT_PLACES:
                self._places.popitem(last=False)
        return place

    async def snapshot_node(self, owner: str, ref: str) -> str | None:
        """The node holding snapshot ``ref`` (an id, or a name of ``owner``'s)."""
        rows = await asyncio.to_thread(
            self.registry.query,
            "SELECT node FROM snapshots WHERE id = ? OR (name = ? AND owner = ?)",
            (ref, ref, owner),
        )
        return rows[0][0] if rows else None

    def pool(self, node: Node) -> Pool:
        pool = self._pools.get(node.url)
        if pool is None:
            parts = urlsplit(node.url)
            pool = self._pools[node.url] = Pool(parts.hostname or "", parts.port or 80)
        return pool

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
