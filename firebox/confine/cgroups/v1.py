"""cgroup v1: a directory per controller hierarchy; memory counted in failcnt files and
memory.oom_control; swap counted with memory where the kernel accounts it (memsw)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import CONTROLLERS, CPU_PERIOD_US
from firebox.confine.cgroups.group import CgroupSet

if TYPE_CHECKING:
    from pathlib import Path

    from firebox.confine.cgroups import Limits
    from firebox.confine.cgroups.detect import CgroupHost


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


def at(name: str, parent: str, host: CgroupHost) -> V1Set:
    return V1Set(name, {c: host.mounts[c] / parent / name for c in CONTROLLERS})


def create(name: str, limits: Limits, parent: str, host: CgroupHost, made: list[Path]) -> V1Set:
    cg = at(name, parent, host)
    for mount in dict.fromkeys(host.mounts[c] for c in CONTROLLERS):  # co-mounted: once
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
