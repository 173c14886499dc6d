"""The cluster's nodes, as PostgreSQL holds them: joining, leases, drains, losses.

Nodes and gateways find each other only here, the same way on one test machine and on
Kubernetes. Every time is the database's clock (``postgres.NOW``), so hosts whose clocks
disagree still agree on whose lease has run out.

A node's state: ``active`` (placement may choose it), ``draining`` (it keeps what it has and
takes nothing new: an operator's drain, or a node stopping), ``lost`` (its lease ran out: it
is gone or cut off; its sandboxes are reported lost until it comes back and renews).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from firebox.server.cluster.postgres import NOW, PostgresRegistry

DRAINS = ("wait", "pause")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    url: str
    backend: str
    state: str
    drain: str | None
    slots: int
    capacity: dict[str, Any]
    lease_left: float  # seconds; negative once run out

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "backend": self.backend,
            "state": self.state,
            "drain": self.drain,
            "slots": self.slots,
            "lease_left": round(self.lease_left, 1),
            **self.capacity,
        }


_COLUMNS = f"name, url, backend, state, drain, slots, capacity, lease_until - {NOW}"


def _node(row: tuple[Any, ...]) -> Node:
    return Node(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7])


class Nodes:
    def __init__(self, registry: PostgresRegistry) -> None:
        self.registry = registry

    # a node's own

    def join(self, name: str, url: str, backend: str, slots: int, capacity: dict[str, Any],
             lease: float) -> None:  # fmt: skip
        """Come in (or back): active again unless an operator's drain stands."""
        self.registry.query(
            "INSERT INTO nodes (name, url, backend, state, slots, capacity, started_at,"
            f" lease_until) VALUES (?, ?, ?, 'active', ?, ?, {NOW}, {NOW} + ?)"
            " ON CONFLICT (name) DO UPDATE SET url = excluded.url, backend = excluded.backend,"
            " slots = excluded.slots, capacity = excluded.capacity,"
            " started_at = excluded.started_at, lease_until = excluded.lease_until,"
            " state = CASE WHEN nodes.drain IS NULL THEN 'active' ELSE 'draining' END",
            (name, url, backend, slots, json.dumps(capacity), lease),
        )

    def renew(self, name: str, capacity: dict[str, Any], lease: float,
              stopping: bool = False) -> str | None:  # fmt: skip
        """Renew the lease with what the node has free now; the drain asked of it, if any.
        A node renewing after it was marked lost is active again (it came back)."""
        rows = self.registry.query(
            f"UPDATE nodes SET lease_until = {NOW} + ?, capacity = ?, state = CASE"
            " WHEN drain IS NOT NULL OR ? = 1 THEN 'draining' ELSE 'active' END"
            " WHERE name = ? RETURNING drain",
            (lease, json.dumps(capacity), int(stopping), name),
        )
        if not rows:  # forgotten by an operator meanwhile: join again
            raise LookupError(name)
        return rows[0][0]

    # anyone's

    def all(self) -> list[Node]:
        return [
            _node(r) for r in self.registry.query(f"SELECT {_COLUMNS} FROM nodes ORDER BY name")
        ]

    def mark_lost(self) -> list[str]:
        """Nodes whose lease ran out, now lost; their names."""
        rows = self.registry.query(
            f"UPDATE nodes SET state = 'lost' WHERE state != 'lost' AND lease_until < {NOW}"
            " RETURNING name"
        )
        return [r[0] for r in rows]

    def drain(self, name: str, how: str | None) -> bool:
        """Stop placement on ``name`` (``how``: wait for its sandboxes, or pause them), or
        undo it (None). False if there is no such node."""
        if how is not None and how not in DRAINS:
            raise ValueError(f"a drain is one of {', '.join(DRAINS)}, not {how!r}")
        rows = self.registry.query(
            "UPDATE nodes SET drain = ?, state = CASE WHEN state = 'lost' THEN state"
            " WHEN ? = 1 THEN 'draining' ELSE 'active' END WHERE name = ? RETURNING name",
            (how, int(how is not None), name),
        )
        return bool(rows)

    def running_on(self, name: str) -> int:
        """Sandboxes running on ``name`` (paused ones stay on it, and take no place)."""
        rows = self.registry.query(
            "SELECT COUNT(*) FROM sandboxes WHERE node = ? AND state = 'running'", (name,)
        )
        return int(rows[0][0])

    def running_counts(self) -> dict[str, int]:
        """Running sandboxes per node, and places taken on it: what placement scores by."""
        rows = self.registry.query(
            "SELECT node, COUNT(*) FROM sandboxes WHERE state = 'running' GROUP BY node"
            f" UNION ALL SELECT node, COUNT(*) FROM placements WHERE expires_at > {NOW}"
            " GROUP BY node"
        )
        counts: dict[str, int] = {}
        for node, n in rows:
            counts[node] = counts.get(node, 0) + int(n)
        return counts

    def forget(self, name: str) -> int:
        """Remove a node for good (its host is gone): its sandboxes end as lost; how many."""
        with self.registry.transaction() as exec_:
            ended = exec_(
                "UPDATE sandboxes SET state = 'ended', ended_at = ?, end_reason = ?"
                " WHERE node = ? AND state != 'ended' RETURNING id",
                (time.time(), f"lost with its node {name}", name),
            )
            exec_("DELETE FROM nodes WHERE name = ?", (name,))
        return len(ended)

    # placement's

    def reserve(self, name: str, seconds: float) -> str | None:
        """Take a place on ``name`` for a create on its way there, if it is active and has a
        place; the place's id (give it back with ``release``), else None.

        One transaction that locks the node's row first: a second gateway reserving on the
        same node waits for this one to commit and then counts its place."""
        with self.registry.transaction() as exec_:
            row = exec_(
                f"SELECT slots FROM nodes WHERE name = ? AND state = 'active'"
                f" AND lease_until > {NOW} FOR UPDATE",
                (name,),
            )
            if not row:
                return None
            taken = exec_(
                "SELECT (SELECT COUNT(*) FROM sandboxes WHERE node = ? AND state = 'running')"
                f" + (SELECT COUNT(*) FROM placements WHERE node = ? AND expires_at > {NOW})",
                (name, name),
            )[0][0]
            if taken >= row[0][0]:
                return None
            place = "pl_" + secrets.token_hex(8)
            exec_(
                f"INSERT INTO placements (id, node, expires_at) VALUES (?, ?, {NOW} + ?)",
                (place, name, seconds),
            )
            exec_(f"DELETE FROM placements WHERE expires_at < {NOW}", ())
        return place

    def release(self, place: str) -> None:
        self.registry.query("DELETE FROM placements WHERE id = ?", (place,))
