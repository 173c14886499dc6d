"""Per-sandbox cgroups on cgroup v1 or v2: memory, pids and CPU limits, counters, kill, cleanup.

Each sandbox gets ``<parent>/<name>`` (parent: the caller's, else ``$FIREBOX_CGROUP_PARENT``,
else ``firebox``), under each v1 controller's hierarchy or once under the v2 unified
hierarchy::

    host = detect()                                   # which version, which controllers
    cg = create("sbx_1", Limits(512 << 20, 256, 1.0))
    cg.add(pid)                                       # children follow automatically
    cg.memory_events()["oom_kill"]; cg.pids_events()
    cg.usage().cpu_ns                                 # CPU time, memory and page cache used
    set_weight(cg, background=True)                   # yield to the sandboxes in use
    cg.destroy()                                      # SIGKILL everything, then rmdir

fs.py touches the files, detect.py reads the host, group.py is a set of cgroups of either
version, v1.py and v2.py what differs. Only files under the cgroup mounts are touched, so the
code is tested against a fake tree (tests/unit/test_cgroups.py) by passing a ``CgroupHost``
whose mounts are a temp directory. weight.py: a set's CPU and I/O weights (the warm pool's
sandboxes yield to those in use), tested in tests/unit/test_cgroup_weight.py.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox.confine.cgroups import fs, v1, v2
from firebox.confine.cgroups.detect import CgroupHost, detect
from firebox.confine.cgroups.fs import (
    ACCOUNTING,
    CONTROLLERS,
    CPU_PERIOD_US,
    DEFAULT_PARENT,
    PARENT_ENV,
    CgroupError,
)
from firebox.confine.cgroups.group import KILL_TIMEOUT, CgroupSet, Usage
from firebox.confine.cgroups.weight import set_weight, weight_files

__all__ = [
    "CONTROLLERS",
    "DEFAULT_PARENT",
    "KILL_TIMEOUT",
    "PARENT_ENV",
    "CgroupError",
    "CgroupHost",
    "CgroupSet",
    "Limits",
    "Usage",
    "attach",
    "cleanup_stale",
    "create",
    "detect",
    "remove_parent",
    "hold_supervisor",
    "set_weight",
    "weight_files",
]


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # RAM, and RAM+swap where the kernel accounts swap
    pids: int  # processes plus threads
    cpu_quota: float  # CPUs, e.g. 1.0 = one full CPU, 0.5 = half of one

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.pids <= 0:
            raise ValueError(f"memory_bytes and pids must be positive, got {self}")
        if self.cpu_quota * CPU_PERIOD_US < 1000:  # the kernel's minimum quota is 1 ms
            raise ValueError(f"cpu_quota must be at least 0.01 CPUs, got {self.cpu_quota}")

    @property
    def cpu_quota_us(self) -> int:
        return round(self.cpu_quota * CPU_PERIOD_US)


def _usable(host: CgroupHost | None) -> CgroupHost:
    host = host or detect()
    if host.version is None or host.missing():
        missing = ", ".join(host.missing())
        raise CgroupError(
            errno.ENOENT, f"cgroup controller(s) {missing} not available: {host.reason}"
        )
    return host


def _module(host: CgroupHost) -> Any:
    """What differs for the host's version: v1.py or v2.py (each has ``at``, ``create``)."""
    return v2 if host.version == 2 else v1


def create(
    name: str, limits: Limits, parent: str | None = None, host: CgroupHost | None = None
) -> CgroupSet:
    """Create ``<parent>/<name>`` with ``limits`` applied; add processes with ``.add``."""
    fs.check_name(name, "name")
    parent = fs.parent_name(parent)
    host = _usable(host)
    made: list[Path] = []
    try:
        made_set: CgroupSet = _module(host).create(name, limits, parent, host, made)
        return made_set
    except BaseException:
        for d in reversed(made):  # undo a half-made set; the parents stay, they are shared
            with contextlib.suppress(OSError):
                fs.rmdir(d)
        raise


def attach(
    name: str, parent: str | None = None, host: CgroupHost | None = None, must_exist: bool = True
) -> CgroupSet:
    """The existing cgroup set ``<parent>/<name>``, e.g. for a sandbox that outlived a daemon
    restart. Limits are left as they are. ``must_exist=False``: the set even if it is not
    there (a paused microVM's, made again when it wakes)."""
    fs.check_name(name, "name")
    parent = fs.parent_name(parent)
    host = _usable(host)
    cg: CgroupSet = _module(host).at(name, parent, host)
    if must_exist and not any(d.is_dir() for d in cg.paths):
        raise CgroupError(errno.ENOENT, f"no cgroup {parent}/{name} in {cg.paths}")
    return cg


# where a daemon's supervisors are held: inside its parent, named so that no sandbox's name
# can be it (cleanup_stale() passes it by as "not ours")
SUPERVISORS = ".supervisors"


def hold_supervisor(pid: int, parent: str | None = None, host: CgroupHost | None = None) -> None:
    """Move a sandbox's supervisor into ``<parent>/.supervisors`` (no limits): out of the
    daemon's own cgroup, so that whatever ends that cgroup's processes with the daemon (a
    container runtime stopping the node's pod, a systemd unit stopping) leaves the
    supervisors, and with them the sandboxes, for the next daemon to adopt."""
    parent = fs.parent_name(parent)
    host = _usable(host)
    _module(host).open_set(SUPERVISORS, parent, host).add(pid)


def cleanup_stale(
    parent: str | None = None, host: CgroupHost | None = None, keep: Collection[str] = ()
) -> int:
    """Destroy every sandbox cgroup under ``parent`` except those named in ``keep`` (sandboxes
    being re-attached). For leftovers of a crashed daemon. Returns how many were destroyed."""
    parent = fs.parent_name(parent)
    host = host or detect()
    if host.version is None:
        return 0
    names: set[str] = set()
    for c in CONTROLLERS + ACCOUNTING:
        if c in host.mounts:
            base = host.mounts[c] / parent
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                names.update(p.name for p in base.iterdir() if p.is_dir())
    failures = []
    count = 0
    for name in sorted(names - set(keep)):
        if not fs.is_name(name):
            continue  # not ours
        dirs = {
            c: host.mounts[c] / parent / name for c in CONTROLLERS + ACCOUNTING if c in host.mounts
        }
        try:
            (v2.V2Set if host.version == 2 else v1.V1Set)(name, dirs).destroy()
            count += 1
        except CgroupError as e:
            failures.append(str(e))
    if failures:
        raise CgroupError(errno.EBUSY, "; ".join(failures))
    return count


def remove_parent(parent: str | None = None, host: CgroupHost | None = None) -> None:
    """Remove ``parent`` itself once it is empty (a daemon stopping cleanly); a parent that
    still holds sandboxes, of this daemon or another, stays."""
    parent = fs.parent_name(parent)
    host = host or detect()
    if host.version is None:
        return
    for c in CONTROLLERS + ACCOUNTING:
        if c in host.mounts:
            with contextlib.suppress(OSError):  # empty once its supervisors have ended
                fs.rmdir(host.mounts[c] / parent / SUPERVISORS)
            # innermost first, for a nested parent like "a/b"
            parts = parent.split("/")
            for depth in range(len(parts), 0, -1):
                with contextlib.suppress(OSError):
                    fs.rmdir(host.mounts[c] / "/".join(parts[:depth]))
