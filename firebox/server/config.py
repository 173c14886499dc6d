"""The daemon's settings: one typed model; the command line and environment only fill it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 7070


def default_home() -> Path:
    return Path(os.environ.get("FIREBOX_HOME", "/var/lib/firebox"))


@dataclass(slots=True)
class ServerConfig:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    isolation: str = "auto"  # auto | jail (microvm comes next)
    # sandbox defaults and bounds
    default_timeout: int = 300
    max_timeout: int = 86400
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    disk_mb: int = 256  # tmpfs: counts against memory_mb too, so keep it below
    # sandbox ids 0..65535 map onto host uids uid_base.. (never 0)
    uid_base: int = 200000
    build_image_on_start: bool = True
    # booted sandboxes kept waiting per template, so a create is a hand-over (0: none)
    pool_size: int = 2

    @property
    def db_path(self) -> Path:
        return self.home / "firebox.db"

    @property
    def admin_key_path(self) -> Path:
        return self.home / "admin.key"
