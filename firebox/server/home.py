"""A daemon's home (``FIREBOX_HOME``): its keys and registry, and the lock that makes it the
one daemon serving that home.

Two daemons on one home would each take the other's sandboxes for a crashed daemon's
leftovers, so the second refuses to start and names the first. The lock is an exclusive
``flock`` on ``<home>/daemon.lock``, which the kernel drops when the daemon ends however it
ends; the file says who holds it (pid, address, since when) for that message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

LOCK_NAME = "daemon.lock"


class HomeTaken(Exception):
    """Another live daemon serves this home; the message names it and what to do."""


def prepare(home: Path) -> None:
    # 0711: by default the image cache lives inside (/var/lib/firebox/images) and sandboxes'
    # unprivileged host uid must traverse to it; the secrets here (admin.key, firebox.db) are
    # 0600 and the directory cannot be listed.
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o711)


class HomeLock:
    """Held for the daemon's life: ``claim`` it first, ``release`` it last."""

    def __init__(self, home: Path, fd: int) -> None:
        self.home = home
        self._fd = fd

    @classmethod
    def claim(cls, home: Path, address: str) -> HomeLock:
        prepare(home)
        fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise HomeTaken(
                f"another firebox daemon{holder} already serves {home}; stop it, or give this "
                "one a home of its own: FIREBOX_HOME=/some/dir firebox serve (or firebox "
                "--home /some/dir serve)"
            ) from None
        record = {"pid": os.getpid(), "address": address, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        return cls(home, fd)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1


def _describe(raw: bytes) -> str:
    """`` (pid 12, http://127.0.0.1:7070)`` from the lock file's record, or "" if unreadable."""
    try:
        record = json.loads(raw)
        return f" (pid {int(record['pid'])}, {record['address']})"
    except (ValueError, KeyError, TypeError):
        return ""
