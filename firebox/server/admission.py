"""Host-wide admission: whether the host can take one more sandbox, decided before it starts.

A create (and a pool refill) is refused, with the reason and what to do, when it would take
the host past one of:

- ``max_sandboxes``: live and pooled sandboxes together (a pooled one is already running);
- ``max_memory_mb``: the memory limits of live and pooled sandboxes together (what they may
  use, not what they use now); 0 leaves commitment unbounded, as overcommit is the point of
  small idle sandboxes, and relies on the next check;
- ``min_free_memory_mb``: the host's available memory (``MemAvailable``) must stay above this,
  so that a create never pushes the host into its OOM killer;
- ``min_free_disk_mb``: free space on the filesystems sandboxes write to (the image directory,
  where microVM overlays live, and the daemon's home), so creates stop before the disk is full.

Refusals are 429 (``rate_limited``: sandboxes or commitment, which killing a sandbox frees) or
503 (``unavailable``: the host itself is short of memory or disk).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from firebox.server import telemetry
from firebox.server.errors import ApiError

MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True, slots=True)
class HostLimits:
    max_sandboxes: int = 256
    max_memory_mb: int = 0  # 0: no bound on commitment
    min_free_memory_mb: int = 1024
    min_free_disk_mb: int = 2048


@dataclass(frozen=True, slots=True)
class Usage:
    sandboxes: int  # live + pooled
    committed_mb: int  # their memory limits, summed


def available_memory_mb(meminfo: Path = MEMINFO) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_disk_mb(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize // 2**20


def _refused(limit: str, code: str, message: str) -> ApiError:
    telemetry.ADMISSION_REFUSALS.labels(limit=limit).inc()
    return ApiError(code, message)


def check(limits: HostLimits, usage: Usage, one_mb: int, disks: Sequence[Path]) -> None:
    """Raise ApiError unless one more sandbox committing ``one_mb`` fits on this host."""
    if usage.sandboxes + 1 > limits.max_sandboxes:
        raise _refused(
            "max_sandboxes",
            "rate_limited",
            f"this host runs its maximum of {limits.max_sandboxes} sandboxes (pooled ones "
            "included); kill one you no longer need, or raise --max-sandboxes",
        )
    if limits.max_memory_mb and usage.committed_mb + one_mb > limits.max_memory_mb:
        raise _refused(
            "max_memory",
            "rate_limited",
            f"sandboxes on this host already hold {usage.committed_mb} MB of memory limits and "
            f"a new one needs {one_mb} MB, past the host's {limits.max_memory_mb} MB; kill one "
            "you no longer need, or raise --max-memory-mb",
        )
    available = available_memory_mb()
    if available is not None and available < limits.min_free_memory_mb:
        raise _refused(
            "min_free_memory",
            "unavailable",
            f"the host has {available} MB of memory available and keeps at least "
            f"{limits.min_free_memory_mb} MB free; try again once sandboxes have ended, or "
            "lower --min-free-memory-mb",
        )
    for disk in disks:
        free = free_disk_mb(disk)
        if free is not None and free < limits.min_free_disk_mb:
            raise _refused(
                "min_free_disk",
                "unavailable",
                f"the disk holding {disk} has {free} MB free and firebox keeps at least "
                f"{limits.min_free_disk_mb} MB free; free some space, or lower "
                "--min-free-disk-mb",
            )


class Admission:
    """The daemon's view of its host: counts what runs and what is starting, and checks a
    new sandbox against ``HostLimits`` before anything of it starts."""

    def __init__(
        self,
        limits: HostLimits,
        one_mb: int,
        disks: Sequence[Path],
        running: Callable[[], Sequence[int]],
    ) -> None:
        self.limits = limits
        self.one_mb = one_mb  # what a sandbox of the default size commits (its memory limit)
        self.disks = list(disks)
        self._running = running  # what each live and pooled sandbox commits, in MB
        self._starting: list[int] = []

    def usage(self) -> Usage:
        held = [*self._running(), *self._starting]
        return Usage(sandboxes=len(held), committed_mb=sum(held))

    @contextmanager
    def starting(self, one_mb: int | None = None) -> Iterator[None]:
        """Admit one sandbox committing ``one_mb`` (default: one of the default size), or
        raise ApiError, and count it until the block ends, by which time it is running (and
        counted there) or has failed."""
        mb = self.one_mb if one_mb is None else one_mb
        check(self.limits, self.usage(), mb, self.disks)
        self._starting.append(mb)
        try:
            yield
        finally:
            self._starting.remove(mb)
