"""Who uses a cached entry (an image tree, a microVM snapshot), so that what no recipe makes
any more and nobody uses is pruned, while other daemons on the host keep theirs.

A user holds a shared lock on ``<entry>.use`` for as long as it may start sandboxes from the
entry: a daemon from its first sandbox on it until it exits (the kernel drops the lock if it
dies). ``prune`` takes that lock exclusively without waiting, so it never removes an entry
anyone holds; it renames the entry aside while it holds the lock, so a user that takes the
lock a moment later finds the entry gone (and builds it again), never half of it. The lock
files stay: removing one could let a user and a prune lock two different files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path


def lease_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".use")


def hold(entry: Path, complete: Callable[[Path], bool]) -> int | None:
    """A shared lease on ``entry``: a descriptor to keep open while it is used, or None if
    the entry is not (or no longer) complete."""
    fd = os.open(lease_path(entry), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prune renames it: a moment
    if not complete(entry):
        os.close(fd)
        return None
    return fd


def prune(entries: Iterable[Path], remove: Callable[[Path], None] = shutil.rmtree) -> list[str]:
    """Remove each of ``entries`` that nobody holds; the names of those removed."""
    removed = []
    for entry in entries:
        try:
            fd = os.open(lease_path(entry), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # in use
            os.close(fd)
            continue
        try:
            aside = entry.with_name(f".{entry.name}.pruned-{os.getpid()}")
            entry.rename(aside)
        except OSError:
            continue  # gone meanwhile
        finally:
            os.close(fd)
        try:
            remove(aside)
        except Exception:  # noqa: BLE001 (a tree still mounted): aside, out of every reader's way
            continue
        removed.append(entry.name)
    return removed
