"""Which registry a process opens: SQLite in its home on one host, the cluster's PostgreSQL
when one is given. Nothing else in the daemon knows which it is."""

from __future__ import annotations

from firebox.server.config import ServerConfig
from firebox.server.registry import Registry


def open_registry(config: ServerConfig) -> Registry:
    if not config.cluster_db:
        return Registry(config.db_path)
    from firebox.server.cluster.postgres import PostgresRegistry  # only clusters need psycopg

    return PostgresRegistry(config.cluster_db, node=config.node_name)
