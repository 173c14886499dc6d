"""The registry in PostgreSQL: the same class as one host's SQLite registry, another
connection under it. Shared by every node and gateway of a cluster.

Statements stay the registry's (``?`` parameters, SQL both databases speak); they are turned
into psycopg's ``%s`` here, once each. The connection is one per process, used under the
registry's lock like SQLite's, with deadlines: a connection attempt gives up after 5 s and a
statement after 10 s, so a database that stops answering is an error, never a hang. A
connection that broke (the database restarted, a network blip) is opened again once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from firebox.server.registry import Conflict, Registry

CONNECT_SECONDS = 5
STATEMENT_MS = 10_000
NOW = "EXTRACT(EPOCH FROM clock_timestamp())"  # the database's clock: one for every host

Exec = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]


class SchemaMissing(OSError):
    pass


@functools.lru_cache(maxsize=512)
def _dialect(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def connect(url: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_SECONDS,
            options=f"-c statement_timeout={STATEMENT_MS}",
        )
    except psycopg.OperationalError as e:
        raise OSError(
            f"cannot reach the cluster's database ({str(e).strip().splitlines()[0]}); check "
            "--cluster-db (or FIREBOX_DB_URL) and that PostgreSQL answers there"
        ) from None


class PostgresRegistry(Registry):
    # another process may revoke a key: one found is believed this long before asking again
    KEY_CACHE_SECONDS = 5.0

    _pg: psycopg.Connection[Any]

    def __init__(self, url: str, node: str = "") -> None:
        self.url = url
        super().__init__(Path(), node)

    def _open(self, path: Path) -> None:
        self._pg = connect(self.url)
        try:
            self._pg.execute("SELECT 1 FROM nodes LIMIT 0")
        except pg_errors.UndefinedTable:
            self._pg.close()
            raise SchemaMissing(
                "the cluster's database has no firebox schema yet: run "
                "`firebox db migrate --cluster-db URL` once, then start again"
            ) from None

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._run(lambda: self._rows(self._pg, sql, args))

    @staticmethod
    def _rows(db: psycopg.Connection[Any], sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            cursor = db.execute(_dialect(sql), args)
        except pg_errors.IntegrityError as e:  # unique and foreign keys, as SQLite raises
            raise Conflict(str(e)) from None
        return cursor.fetchall() if cursor.description else []

    def _run(self, work: Callable[[], Any]) -> Any:
        """``work`` on the connection, opened again once if it broke."""
        try:
            return work()
        except psycopg.OperationalError:
            if not self._pg.closed and not self._pg.broken:
                raise  # a statement's own failure (its deadline): not the connection's
            self._pg = connect(self.url)
            return work()

    @contextmanager
    def transaction(self) -> Iterator[Exec]:
        """Several statements as one transaction: ``exec(sql, args)`` inside; committed at
        the end of the block, rolled back if it raises."""
        with self._lock:
            if self._pg.closed or self._pg.broken:
                self._pg = connect(self.url)
            with self._pg.transaction():
                db = self._pg

                def exec_(sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
                    return self._rows(db, sql, args)

                yield exec_

    def close(self) -> None:
        with self._lock:
            self._pg.close()
