"""E2B's ``filesystem.Filesystem`` Connect service, onto the agent's file calls."""

from __future__ import annotations

from firebox.server.e2b.envd.proto.filesystem.filesystem_connect import Filesystem


class FilesystemService(Filesystem):
    """Each method: access.current() names the sandbox; errors via errors.connect_errors."""
