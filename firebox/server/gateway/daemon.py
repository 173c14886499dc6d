"""``firebox gateway``: a cluster's public API, in front of its nodes.

Stateless: it reads the cluster from PostgreSQL at start and every second or so after, so
several may run side by side, and one restarted loses nothing. It answers /health with 503
while the database is out of its reach (a load balancer then sends clients to another).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from firebox.server import head_limit
from firebox.server.auth import ensure_admin_key
from firebox.server.cluster.postgres import PostgresRegistry
from firebox.server.gateway import telemetry
from firebox.server.gateway.app import Gateway
from firebox.server.gateway.directory import Directory

log = logging.getLogger("firebox.gateway")


@dataclass(slots=True)
class GatewayConfig:
    host: str
    port: int
    cluster_db: str
    domain: str = ""
    admin_key_file: Path | None = None
    lease_seconds: float = 10.0

    @property
    def preview_domain(self) -> str:
        # as a node's (ServerConfig.preview_domain): previews are named after the gateway
        return self.domain or f"localhost:{self.port}"


def run(config: GatewayConfig) -> int:
    try:
        registry = PostgresRegistry(config.cluster_db)
        if config.admin_key_file is not None:
            ensure_admin_key(registry, config.admin_key_file, given=True)
    except OSError as e:
        print(f"firebox gateway: {e}", file=sys.stderr, flush=True)
        return 1
    directory = Directory(registry, config.lease_seconds)
    telemetry.attach(directory)
    server = head_limit.server(
        Gateway(directory, config.preview_domain),
        host=config.host,
        port=config.port,
        date_header=False,  # the node's answer keeps its own Date
    )

    async def main() -> None:
        await directory.refresh()
        watching = asyncio.create_task(directory.run(), name="directory")
        log.warning(
            "gateway on %s:%s, nodes: %s",
            config.host,
            config.port,
            ", ".join(f"{n.name} ({n.state})" for n in directory.nodes.values()) or "none yet",
        )
        try:
            await server.serve()
        finally:
            watching.cancel()
            with contextlib.suppress(BaseException):
                await watching
            directory.close()
            registry.close()

    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(main())
    except OSError as e:
        print(f"firebox gateway: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
