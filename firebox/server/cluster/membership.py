"""A node's part in its cluster: it joins, renews its lease with what it has free, does what
an operator's drain asks, and marks itself draining as it stops.

The lease is renewed every third of its length: a node that misses two renewals in a row (a
pause of the host, a slow database) is still not lost. Gateways mark lost a node whose lease
ran out (``Nodes.mark_lost``), so a node dead or cut off stops getting creates within one
lease of its last renewal, and its clients hear that its sandboxes are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from firebox.server.admission import available_memory_mb
from firebox.server.cluster.nodes import Nodes
from firebox.server.cluster.postgres import PostgresRegistry
from firebox.server.errors import ApiError
from firebox.server.manager import SandboxManager

log = logging.getLogger("firebox.cluster")

DEFAULT_LEASE = 10.0  # seconds


class Membership:
    def __init__(
        self, manager: SandboxManager, registry: PostgresRegistry, url: str, lease: float
    ) -> None:
        self.manager = manager
        self.nodes = Nodes(registry)
        self.name = registry.node
        self.url = url
        self.lease = lease
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def slots(self) -> int:
        """Sandboxes placement may give this node: what admission lets live, less the pool's
        (pooled sandboxes count against the same limit)."""
        config = self.manager.config
        return max(1, config.max_sandboxes - config.pool_size)

    def capacity(self) -> dict[str, Any]:
        """What placement scores this node by, as of now."""
        config = self.manager.config
        free = available_memory_mb()
        live = self.manager.all_live()
        return {
            "running": sum(1 for s in live if s.state == "running"),
            "memory_free_mb": max(0, (free or 0) - config.min_free_memory_mb),
            "cpus": os.cpu_count() or 1,
            "load": round(os.getloadavg()[0], 2),
            "warm": sorted(k for k, n in self.manager.pool.levels().items() if n > 0),
        }

    async def join(self) -> None:
        await asyncio.to_thread(
            self.nodes.join,
            self.name,
            self.url,
            self.manager.backend.name,
            self.slots,
            self.capacity(),
            self.lease,
        )
        log.warning("joined the cluster as node %s at %s", self.name, self.url)
        self._task = asyncio.create_task(self._renew(), name="lease")

    async def _renew(self) -> None:
        drained: str | None = None
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                drain = await asyncio.to_thread(
                    self.nodes.renew, self.name, self.capacity(), self.lease, self._stopping
                )
            except LookupError:  # an operator forgot this node: it joins anew
                await self.join()
                return
            except OSError as e:  # the database: the lease runs out if this goes on
                log.error("could not renew this node's lease: %s", e)
                continue
            if drain == "pause" and drained != "pause":
                await self._pause_all()
            drained = drain

    async def _pause_all(self) -> None:
        """An operator's ``firebox node drain --pause``: each running sandbox is paused (it
        is kept, and resumes on this node when asked)."""
        for live in self.manager.all_live():
            if live.state != "running":
                continue
            try:
                await self.manager.pause(live.owner, live.id)
            except ApiError as e:
                log.warning("drain: could not pause %s: %s", live.id, e)

    async def leave(self) -> None:
        """The node is stopping: no more placement here (it keeps its sandboxes for the next
        process of this node, which joins again)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(OSError, LookupError):
            await asyncio.to_thread(self.nodes.renew, self.name, self.capacity(), self.lease, True)
