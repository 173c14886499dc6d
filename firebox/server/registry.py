"""The registry: API keys (hashed), every sandbox's record, templates and snapshots.

Live state (processes, channels) is in memory in ``manager.py``; the registry is what survives
a daemon restart, so that the next daemon can tell which sandboxes it must reclaim. One host
keeps it in SQLite in its home (this module); a cluster's nodes and gateways share one in
PostgreSQL (server/cluster/postgres.py), the same class with another connection under it:
every statement here is written in the SQL both speak, with ``?`` for parameters.

A node sees the rows of every node (keys, templates and snapshots are shared) but adopts and
reclaims only its own sandboxes: those rows carry its name (``node``; "" on one host).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES keys(id),
    template TEXT NOT NULL,
    backend TEXT NOT NULL,
    metadata TEXT NOT NULL,
    started_at REAL NOT NULL,
    end_at REAL NOT NULL,
    state TEXT NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    paused_at REAL,
    record TEXT,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS sandboxes_owner_state ON sandboxes(owner, state);
-- one row per name and tag of a built template (server/templates/catalog.py); the tags of one
-- build share its tree
CREATE TABLE IF NOT EXISTS templates (
    owner TEXT NOT NULL REFERENCES keys(id),
    name TEXT NOT NULL,
    tag TEXT NOT NULL,
    build_id TEXT NOT NULL,
    public INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    built_at REAL NOT NULL,
    PRIMARY KEY (owner, name, tag)
);
CREATE INDEX IF NOT EXISTS templates_build ON templates(build_id);
-- snapshots of running sandboxes (server/snapshots.py); hidden ones are a fork's, deleted with
-- the last sandbox made from them
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES keys(id),
    name TEXT,
    sandbox_id TEXT NOT NULL,
    hidden INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    record TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS snapshots_owner ON snapshots(owner);
CREATE UNIQUE INDEX IF NOT EXISTS snapshots_name ON snapshots(owner, name)
    WHERE name IS NOT NULL;
"""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    admin: bool


class Conflict(Exception):
    """A row that would break a uniqueness rule (a snapshot's name taken meanwhile)."""


class Registry:
    # how long a key once found is believed without asking again: forever on one host, where
    # a revoke goes through this process; a cluster's other processes revoke too (postgres.py)
    KEY_CACHE_SECONDS = float("inf")

    def __init__(self, path: Path, node: str = "") -> None:
        self.node = node
        self._lock = threading.Lock()
        self._known_keys: dict[str, tuple[KeyRecord, float]] = {}
        self._open(path)

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # The registry is a record, not the source of truth for live sandboxes: losing the
            # last transactions on power loss is acceptable, a fsync per create is not.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Columns added since a home's registry was made (CREATE TABLE IF NOT EXISTS keeps
        an old table as it was)."""
        for table, column, kind in (
            ("sandboxes", "paused_at", "REAL"),
            ("sandboxes", "record", "TEXT"),
            ("keys", "revoked_at", "REAL"),
            ("sandboxes", "node", "TEXT NOT NULL DEFAULT ''"),
            ("snapshots", "node", "TEXT NOT NULL DEFAULT ''"),
        ):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.IntegrityError as e:
                raise Conflict(str(e)) from None

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, for the modules that own a table of their own (templates)."""
        return self._exec(sql, args)

    # keys

    def add_key(self, key_id: str, name: str, key_hash: str, admin: bool) -> None:
        self._exec(
            "INSERT INTO keys (id, name, hash, admin, created_at) VALUES (?, ?, ?, ?, ?)",
            (key_id, name, key_hash, int(admin), time.time()),
        )

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        # Every request looks its key up: known keys are kept in memory (a revoke drops its
        # key from there), unknown ones are asked for each time.
        known = self._known_keys.get(key_hash)
        now = time.monotonic()
        if known is not None and now - known[1] < self.KEY_CACHE_SECONDS:
            return known[0]
        rows = self._exec(
            "SELECT id, name, admin FROM keys WHERE hash = ? AND revoked_at IS NULL", (key_hash,)
        )
        if not rows:
            self._known_keys.pop(key_hash, None)
            return None
        record = KeyRecord(rows[0][0], rows[0][1], bool(rows[0][2]))
        self._known_keys[key_hash] = (record, now)
        return record

    def add_given_key(self, key_id: str, name: str, key_hash: str, admin: bool) -> None:
        """Add a key that was given (a cluster's admin key, from its secret): every process
        of the cluster adds it at start, the first one wins."""
        self._exec(
            "INSERT INTO keys (id, name, hash, admin, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (key_id, name, key_hash, int(admin), time.time()),
        )

    def all_keys(self) -> list[dict[str, Any]]:
        """Every key, revoked ones too (never their secret: only a hash of it is kept)."""
        rows = self._exec(
            "SELECT id, name, admin, created_at, revoked_at FROM keys ORDER BY created_at"
        )
        return [
            {"id": r[0], "name": r[1], "admin": bool(r[2]), "created_at": r[3], "revoked_at": r[4]}
            for r in rows
        ]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key that is not the admin's; False if there is no such key to revoke."""
        rows = self._exec(
            "UPDATE keys SET revoked_at = ? WHERE id = ? AND admin = 0 AND revoked_at IS NULL "
            "RETURNING id",
            (time.time(), key_id),
        )
        self._known_keys = {h: r for h, r in self._known_keys.items() if r[0].id != key_id}
        return bool(rows)

    # sandboxes

    def add_sandbox(
        self,
        sandbox_id: str,
        owner: str,
        template: str,
        backend: str,
        metadata: dict[str, str],
        started_at: float,
        end_at: float,
    ) -> None:
        self._exec(
            "INSERT INTO sandboxes (id, owner, template, backend, metadata, started_at, end_at,"
            " state, node) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
            (
                sandbox_id,
                owner,
                template,
                backend,
                json.dumps(metadata),
                started_at,
                end_at,
                self.node,
            ),
        )

    def set_record(self, sandbox_id: str, record: dict[str, Any]) -> None:
        """What a restarted daemon needs to adopt the sandbox (server/live.py)."""
        self._exec(
            "UPDATE sandboxes SET record = ? WHERE id = ? AND state != 'ended'",
            (json.dumps(record), sandbox_id),
        )

    def live_records(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """(id, owner, record) of this node's sandboxes not ended: what a starting daemon
        adopts."""
        rows = self._exec(
            "SELECT id, owner, record FROM sandboxes WHERE state != 'ended' AND node = ?",
            (self.node,),
        )
        return [(r[0], r[1], json.loads(r[2]) if r[2] else None) for r in rows]

    def set_end_at(self, sandbox_id: str, end_at: float) -> None:
        self._exec("UPDATE sandboxes SET end_at = ? WHERE id = ?", (end_at, sandbox_id))

    def set_paused(self, sandbox_id: str, paused_at: float | None) -> None:
        """Paused since ``paused_at``, or running again (None)."""
        state = "running" if paused_at is None else "paused"
        self._exec(
            "UPDATE sandboxes SET state = ?, paused_at = ? WHERE id = ? AND state != 'ended'",
            (state, paused_at, sandbox_id),
        )

    def mark_ended(self, sandbox_id: str, reason: str) -> None:
        self._exec(
            "UPDATE sandboxes SET state = 'ended', ended_at = ?, end_reason = ? WHERE id = ?",
            (time.time(), reason, sandbox_id),
        )

    def end_reason(self, sandbox_id: str, owner: str) -> str | None:
        """Why ``owner``'s sandbox ended, if it did (None for anyone else's: no oracle)."""
        rows = self._exec(
            "SELECT end_reason FROM sandboxes WHERE id = ? AND owner = ? AND state = 'ended'",
            (sandbox_id, owner),
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    def running_ids(self) -> list[str]:
        """This node's sandboxes not ended (running or paused)."""
        rows = self._exec(
            "SELECT id FROM sandboxes WHERE state != 'ended' AND node = ?", (self.node,)
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
