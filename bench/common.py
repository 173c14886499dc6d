"""What bench's scripts share: the clock, create → first result, and a sandbox's memory on the host.

    from common import timed, first_result, sandbox_pss_mb   # bench/ on sys.path

Importing this puts the repository's root on sys.path, so ``firebox`` imports from the working
tree whichever interpreter runs a script of bench/.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

if TYPE_CHECKING:
    from firebox import Sandbox
    from firebox.testing import LocalDaemon


def timed(fn: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    """ms of each of ``runs`` calls of ``fn``, after ``warmup`` calls off the record."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def first_result(
    runs: int,
    first: Callable[[Sandbox], object] | None,
    pace: float,
    warmup: int = 2,
) -> list[float]:
    """ms of ``Sandbox.create()`` → ``first(sbx)`` done (or the create alone when ``first`` is
    None); the kill happens after the clock stops. The SDK finds the daemon by FIREBOX_URL and
    FIREBOX_API_KEY.

    Paced (``pace`` s of sleep before each create), so that a pool has refilled (and its
    sandboxes' IPython pre-started): this measures a create that finds one waiting, or with no
    pool a cold start, not a create queued behind the previous one's refill."""
    from firebox import Sandbox

    samples = []
    for i in range(runs + warmup):
        time.sleep(pace)
        start = time.perf_counter()
        sbx = Sandbox.create()
        if first is not None:
            first(sbx)
        elapsed = (time.perf_counter() - start) * 1000
        sbx.kill()
        sbx.close()
        if i >= warmup:
            samples.append(elapsed)
    return samples


# --- a sandbox's memory, from the host's /proc -------------------------------------------------


def pss_kb(pid: int) -> int:
    """Pss of ``pid`` from /proc/<pid>/smaps_rollup, in kB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_mb(pids: Iterable[int]) -> float:
    """PSS summed over ``pids``, in MB."""
    return sum(pss_kb(pid) for pid in set(pids)) / 1024


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time (s) used so far by ``pids`` (from /proc/<pid>/stat; gone: 0)."""
    import os

    ticks = 0
    for pid in set(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cgroup_procs(path: str) -> list[int]:
    """The processes of cgroup ``path`` (relative to the hierarchy's root), v1 (pids) or v2."""
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        procs = base / path.strip("/") / "cgroup.procs"
        if procs.exists():
            return [int(p) for p in procs.read_text().split()]
    return []


def sandbox_pids(daemon: LocalDaemon, sandbox_id: str) -> list[int]:
    """Host pids of every process of a sandbox: its cgroup's, under the daemon's parent (the
    jail's bwrap, agent and what they run; a microVM's jailed QEMU)."""
    return cgroup_procs(f"{daemon.cgroup_parent}/{sandbox_id}")


def sandbox_pss_mb(daemon: LocalDaemon, sandbox_id: str) -> float:
    return pss_mb(sandbox_pids(daemon, sandbox_id))


__all__ = [
    "BENCH",
    "RESULTS",
    "ROOT",
    "cgroup_procs",
    "cpu_seconds",
    "first_result",
    "pss_kb",
    "pss_mb",
    "sandbox_pids",
    "sandbox_pss_mb",
    "timed",
]
