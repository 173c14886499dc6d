"""Host uid ranges for sandboxes: each live sandbox (and a template VM while it is made) maps
its ids 0..65535 onto a range of unprivileged host ids of its own, ``uid_base + slot × 65536``,
so no two share a host uid nor the per-uid kernel limits that go with one.

A slot is taken host-wide, not per daemon: an exclusive lock on ``<lock dir>/<first id>.lock``
held for as long as the range is in use. Two daemons on one host (a second one for testing, a
benchmark's) never hand out the same range, and a daemon that dies lets its ranges go with it
(the kernel drops its locks). The file names its holder while held and is emptied on release;
a range whose holder died holding it is used again only once no process on the host runs as
one of its ids (what a crashed daemon's sandboxes left is reclaimed by the next daemon of its
home).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

UID_RANGE = 65536
MAX_SLOTS = 4096  # uid ranges: uid_base + 4096 × 65536 stays far below 2^32
LOCK_DIR = Path("/run/firebox/uids")  # a tmpfs: no range is in use after a reboot
RECLAIM_WAIT = 3.0  # seconds: longer than another daemon's look into a range takes


def id_conflicts(base: int, size: int, etc: Path = Path("/etc")) -> list[str]:
    """Where this host already hands out ids in [base, base + size): accounts and groups,
    and the subordinate ranges of /etc/subuid and /etc/subgid (rootless containers)."""
    end = base + size
    found = []
    for name in ("passwd", "group"):
        with contextlib.suppress(OSError):
            for line in (etc / name).read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit() and base <= int(fields[2]) < end:
                    found.append(f"{name}: {fields[0]} ({fields[2]})")
    for name in ("subuid", "subgid"):
        with contextlib.suppress(OSError):
            for line in (etc / name).read_text().splitlines():
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    start, count = int(fields[1]), int(fields[2])
                    if start < end and base < start + count:
                        found.append(f"{name}: {fields[0]} ({start}..{start + count})")
    return found


def range_problem(uid_base: int) -> str | None:
    """Why the sandboxes' host ids cannot be used here, or None."""
    clash = id_conflicts(uid_base, MAX_SLOTS * UID_RANGE)
    if not clash:
        return None
    return (
        f"the sandboxes' host ids {uid_base}..{uid_base + MAX_SLOTS * UID_RANGE} overlap ids "
        f"this host gives out ({'; '.join(clash)}): a holder of those could signal sandbox "
        "processes; set FIREBOX_UID_BASE to a free range"
    )


def processes_in_range(first: int, size: int = UID_RANGE) -> list[int]:
    """Host pids of processes running with any id (real, effective, saved, fs) in the range."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if any(first <= int(u) < first + size for u in line.split()[1:]):
                    found.append(int(entry.name))
                break
    return found


class UidSlots:
    """The host id ranges this process holds; ``take`` one, ``release`` it once every process
    that used it is gone (its cgroup emptied)."""

    def __init__(self, uid_base: int, lock_dir: Path = LOCK_DIR) -> None:
        self.uid_base = uid_base
        self.lock_dir = lock_dir
        self._held: dict[int, int] = {}  # slot -> its lock's descriptor

    def first_id(self, slot: int) -> int:
        return self.uid_base + slot * UID_RANGE

    def take(self) -> int:
        """A slot no one on the host holds; OSError(EAGAIN) when all are taken."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for slot in range(MAX_SLOTS):
            if slot not in self._held and self._claim(slot):
                return slot
        raise OSError(
            errno.EAGAIN,
            f"all {MAX_SLOTS} host uid ranges are in use: too many sandboxes on this host at once",
        )

    def _claim(self, slot: int) -> bool:
        fd = self._lock(slot, wait=0.0)  # one held: another daemon's sandbox has it
        if fd < 0:
            return False
        if os.pread(fd, 64, 0) and processes_in_range(self.first_id(slot)):
            os.close(fd)  # its holder died with processes left in it: not until reclaimed
            return False
        self._hold(slot, fd)
        return True

    def _lock(self, slot: int, wait: float) -> int:
        """The lock file of ``slot`` locked (its descriptor), trying for ``wait`` seconds;
        -1 if someone else held it all that time."""
        path = self.lock_dir / f"{self.first_id(slot)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return -1
                time.sleep(0.01)

    def _hold(self, slot: int, fd: int) -> None:
        """``slot`` ours: its lock file names this process."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[slot] = fd

    def reclaim(self, slot: int, wait: float = RECLAIM_WAIT) -> bool:
        """Hold ``slot`` again for a sandbox this process adopts (an earlier daemon of its
        home took it and died, its processes running on): False if someone else holds it.

        Another daemon's ``take`` locks each range it passes for as long as it looks for
        processes in it (and then lets go of one whose holder died with processes left): so
        a range held for ``wait`` seconds is held, one held for less was only looked at."""
        if slot in self._held:
            return True
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = self._lock(slot, wait)
        if fd < 0:
            return False
        self._hold(slot, fd)
        return True

    def release(self, slot: int) -> None:
        fd = self._held.pop(slot, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released cleanly: the next holder need not look
            os.close(fd)
