"""The daemon's settings: one typed model; the command line and environment only fill it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from firebox.settings import DEFAULT_TIMEOUT, Bound, Limits

DEFAULT_PORT = 7070
DEFAULT_UID_BASE = 1_000_000_000


def default_uid_base() -> int:
    return int(os.environ.get("FIREBOX_UID_BASE", DEFAULT_UID_BASE))


def default_home() -> Path:
    return Path(os.environ.get("FIREBOX_HOME", "/var/lib/firebox"))


@dataclass(slots=True)
class ServerConfig:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    isolation: str = "auto"  # auto (the strongest that works here) | microvm | jail
    # where a sandbox's ports are reached (server/ports): <port>-<sandbox id>.<domain>, routed
    # by the Host header; "" is localhost with the daemon's port (*.localhost is loopback in
    # browsers), a deployment names a wildcard DNS name pointing at the daemon or its proxy
    domain: str = ""
    # a sandbox's limits unless its create asks for others (firebox.settings.Limits); a jail's
    # disk is a tmpfs that counts against its memory too, so keep disk_mb below memory_mb
    default_timeout: int = DEFAULT_TIMEOUT
    limits: Limits = field(default_factory=lambda: Limits())
    # the most a create may ask for (firebox.settings.resolve); 0: the host's size
    max_sandbox_memory_mb: int = 8192
    max_sandbox_cpus: float = 0.0
    # a command's or cell's printed output (stdout and stderr together): past it a marker,
    # the rest discarded
    max_output_mb: int = 64
    # each sandbox's ids 0..65535 map onto host ids uid_base + slot × 65536: far above the
    # ranges hosts hand out (users, /etc/subuid), which the jail backend checks at start
    uid_base: int = field(default_factory=default_uid_base)
    build_image_on_start: bool = True
    # booted sandboxes kept waiting per template, so a create is a hand-over (0: none)
    pool_size: int = 2
    # host-wide admission (server/admission.py): live + pooled sandboxes, their memory
    # limits summed (0: unbounded), and what the host keeps free of memory and disk
    max_sandboxes: int = 256
    max_memory_mb: int = 0
    min_free_memory_mb: int = 1024
    min_free_disk_mb: int = 2048
    # egress (server/egress.py): fixed name=addr[,addr] entries the proxy resolves instead
    # of DNS, and ranges lifted off the always-denied floor (an internal mirror; tests)
    egress_resolve: list[str] = field(default_factory=list)
    egress_permit: list[str] = field(default_factory=list)
    # paused sandboxes (server/lifecycle.py): how long one is kept before it is ended, and
    # what one key's paused sandboxes may hold of the host (a microVM's saved state and disk,
    # a frozen jail's memory), past which a pause is refused
    paused_ttl: float = 7 * 24 * 3600.0
    # a stopping daemon leaves its sandboxes running for the next one to adopt (an upgrade,
    # a restart); False ends them (tests, a host going away)
    keep_sandboxes_on_stop: bool = True
    max_paused_mb_per_key: int = 20_480
    # template builds (server/templates): how many run at once, and hosts their steps may
    # reach besides the package sources this host is configured with
    max_builds: int = 1
    build_allow: list[str] = field(default_factory=list)
    build_disk_mb: int = 4096  # what one build step may write
    max_build_memory_mb: int = 8192  # the most a build may ask for
    build_timeout: float = 3600.0  # seconds for a whole build
    build_step_timeout: float = 1200.0  # seconds for one of its steps
    # cluster mode (server/cluster): the shared PostgreSQL ("" : one host, SQLite in the
    # home), this node's name among the others and the URL gateways reach it at
    cluster_db: str = ""
    node_name: str = ""
    advertise_url: str = ""
    lease_seconds: float = 10.0  # past its lease unrenewed, a node is lost
    # where built templates are pushed and pulled from by the nodes, as an OCI reference
    # prefix (host[:port]/path); "" keeps them on this host. ``insecure``: plain HTTP
    template_registry: str = ""
    template_registry_insecure: bool = False
    # the admin key, given (a cluster's secret) instead of made in the home
    admin_key_file: str = ""

    def ceilings(self) -> dict[str, Bound]:
        """The most a create may ask for of each limit this daemon bounds."""
        return {
            "cpu_count": Bound(
                self.max_sandbox_cpus or float(os.cpu_count() or 1),
                "--max-sandbox-cpus, by default the host's cores",
            ),
            "memory_mb": Bound(self.max_sandbox_memory_mb, "--max-sandbox-memory-mb"),
            "output_mb": Bound(self.max_output_mb, "--max-output-mb"),
        }

    @property
    def db_path(self) -> Path:
        return self.home / "firebox.db"

    @property
    def admin_key_path(self) -> Path:
        return Path(self.admin_key_file) if self.admin_key_file else self.home / "admin.key"

    @property
    def preview_domain(self) -> str:
        """The domain of preview hosts, as clients write it (with a port unless 80)."""
        if self.domain:
            return self.domain
        return "localhost" if self.port == 80 else f"localhost:{self.port}"
