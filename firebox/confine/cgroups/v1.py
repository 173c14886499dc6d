"""cgroup v1: a directory per controller hierarchy; memory counted in failcnt files and
memory.oom_control; swap counted with memory where the kernel accounts it (memsw); CPU time
in cpuacct, a hierarchy of its own on some hosts."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import ACCOUNTING, CONTROLLERS, CPU_PERIOD_US
from firebox.confine.cgroups.group import CgroupSet, Usage

if TYPE_CHECKING:
    from pathlib import Path

    from firebox.confine.cgroups import Limits
    from firebox.confine.cgroups.detect import CgroupHost

# v1 says "no limit" with the largest page-aligned counter (9223372036854771712 on 4 KiB pages)
_UNLIMITED = 1 << 62


class V1Set(CgroupSet):
    version = 1

    def memory_events(self) -> dict[str, int]:
        # v1 charges RAM+swap (memsw) first and RAM only if that passed, so a hit is counted
        # in exactly one of the two failcnt files. Some kernels (6.18 seen) leave failcnt at
        # 0 even after an OOM kill: trust oom_kill, treat "max" as a hint on v1.
        mem = self.dirs["memory"]
        hits = sum(
            int(fs.read(f))
            for f in (mem / "memory.failcnt", mem / "memory.memsw.failcnt")
            if f.exists()
        )
        oom_kill = fs.read_kv(mem / "memory.oom_control").get("oom_kill", 0)
        return {"oom_kill": oom_kill, "max": hits}

    def usage(self) -> Usage:
        mem = self.dirs["memory"]
        stat = fs.read_kv(mem / "memory.stat")
        acct = self.dirs.get("cpuacct")
        limit = fs.read_int(mem / "memory.limit_in_bytes")
        return Usage(
            cpu_ns=fs.read_int(acct / "cpuacct.usage") if acct is not None else None,
            memory=fs.read_int(mem / "memory.usage_in_bytes"),
            # total_*: this cgroup and its children, as usage_in_bytes counts them
            cache=stat.get("total_cache", stat.get("cache", 0)),
            inactive_file=stat.get("total_inactive_file", stat.get("inactive_file", 0)),
            memory_limit=None if limit >= _UNLIMITED else limit,
        )

    def can_freeze(self) -> bool:
        return "freezer" in self.dirs

    def _set_frozen(self, frozen: bool) -> None:
        d = self.dirs.get("freezer")
        if d is None:
            raise fs.CgroupError(
                errno.EOPNOTSUPP,
                "this host mounts no cgroup v1 freezer hierarchy, so a jail cannot be paused; "
                "mount one (mount -t cgroup -o freezer freezer /sys/fs/cgroup/freezer)",
            )
        fs.write(d / "freezer.state", "FROZEN" if frozen else "THAWED")

    def frozen(self) -> bool:
        d = self.dirs.get("freezer")
        # FREEZING while some task has yet to stop; FROZEN once all have
        return d is not None and fs.read(d / "freezer.state").strip() == "FROZEN"


def _joined(host: CgroupHost) -> list[str]:
    """The controllers a sandbox's set has here: the ones it needs, and cpuacct where mounted."""
    return [c for c in CONTROLLERS + ACCOUNTING if c in host.mounts]


def at(name: str, parent: str, host: CgroupHost) -> V1Set:
    return V1Set(name, {c: host.mounts[c] / parent / name for c in _joined(host)})


def open_set(name: str, parent: str, host: CgroupHost) -> V1Set:
    """``<parent>/<name>`` without limits, made if missing (shared: never a sandbox's)."""
    for mount in dict.fromkeys(host.mounts[c] for c in _joined(host)):
        fs.make(fs.ensure_parents(mount, parent) / name, exist_ok=True)
    return at(name, parent, host)


def create(name: str, limits: Limits, parent: str, host: CgroupHost, made: list[Path]) -> V1Set:
    cg = at(name, parent, host)
    for mount in dict.fromkeys(host.mounts[c] for c in _joined(host)):  # co-mounted: once
        d = fs.ensure_parents(mount, parent) / name
        fs.make(d)
        made.append(d)
    mem = cg.dirs["memory"]
    # The memory limit first: memsw (RAM+swap) may never be below it.
    fs.write(mem / "memory.limit_in_bytes", limits.memory_bytes)
    if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: swap counts too
        fs.write(mem / "memory.memsw.limit_in_bytes", limits.memory_bytes)
    fs.write(cg.dirs["pids"] / "pids.max", limits.pids)
    cpu = cg.dirs["cpu"]
    fs.write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
    fs.write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us)
    return cg
