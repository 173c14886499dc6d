"""Which cgroup version gives a sandbox its controllers on this host, read from mountinfo."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import CONTROLLERS

MOUNTINFO = Path("/proc/self/mountinfo")

# cgroup v1 controller names as they appear in a cgroup mount's super options.
_V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
     "perf_event", "hugetlb", "pids", "rdma", "misc"}
)  # fmt: skip


@dataclass(frozen=True)
class CgroupHost:
    """What this host offers. ``version`` is None when no cgroup filesystem is usable."""

    version: int | None
    controllers: frozenset[str]  # controllers usable in that version
    mounts: Mapping[str, Path] = field(default_factory=dict)  # controller -> hierarchy mount
    reason: str = ""  # why something we need is missing, and how to fix it; "" when all is well

    def missing(self) -> list[str]:
        return [c for c in CONTROLLERS if c not in self.controllers]


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)


def _cgroup_mounts(mountinfo: str) -> list[tuple[Path, str, str]]:
    """(mount point, fstype, super options) of every cgroup and cgroup2 mount."""
    found = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, (fstype, _source, superopts) = head.split(), tail.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((Path(_unescape(fields[4])), fstype, superopts))
    return found


def detect(mountinfo: Path = MOUNTINFO) -> CgroupHost:
    """Find which cgroup version provides memory, pids and cpu here.

    Pure v2 (the usual case) wins when its root offers all three; hybrid hosts (systemd's
    v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified) use v1. Mixing versions
    is not supported: a host with the controllers split between them gets a reason instead.
    Tests pass a fake ``mountinfo`` whose mounts point into a temp dir.
    """
    try:
        text = mountinfo.read_text()
    except OSError as e:
        return CgroupHost(None, frozenset(), {}, f"cannot read {mountinfo}: {e.strerror}")

    v2_root: Path | None = None
    v1: dict[str, Path] = {}
    for mnt, fstype, superopts in _cgroup_mounts(text):
        if fstype == "cgroup2":
            if v2_root is None or mnt == Path("/sys/fs/cgroup"):
                v2_root = mnt
        else:
            for opt in superopts.split(","):
                if opt in _V1_CONTROLLERS:
                    v1.setdefault(opt, mnt)

    v2_ctrls: frozenset[str] = frozenset()
    if v2_root is not None:
        with contextlib.suppress(OSError):
            v2_ctrls = frozenset(fs.read(v2_root / "cgroup.controllers").split())
    v2_host = CgroupHost(2, v2_ctrls, {c: v2_root for c in v2_ctrls}) if v2_root else None
    v1_host = CgroupHost(1, frozenset(v1), v1) if v1 else None

    if v2_host and not v2_host.missing():
        return v2_host
    if v1_host and not v1_host.missing():
        return v1_host
    if v2_host and (v1_host is None or len(v2_host.missing()) <= len(v1_host.missing())):
        missing = ", ".join(v2_host.missing())
        return CgroupHost(
            2,
            v2_host.controllers,
            v2_host.mounts,
            f"the cgroup v2 root {v2_root} does not offer {missing} (its cgroup.controllers: "
            f"{' '.join(sorted(v2_ctrls)) or 'none'}); the controller may be held by a cgroup "
            "v1 mount or missing from the kernel. Boot with systemd.unified_cgroup_hierarchy=1 "
            "(or unmount the v1 hierarchy holding it).",
        )
    if v1_host:
        missing = ", ".join(v1_host.missing())
        first = v1_host.missing()[0]
        return CgroupHost(
            1,
            v1_host.controllers,
            v1_host.mounts,
            f"no cgroup v1 hierarchy has {missing}; mount it, e.g. `mkdir -p "
            f"/sys/fs/cgroup/{first} && mount -t cgroup -o {first} cgroup /sys/fs/cgroup/{first}`",
        )
    return CgroupHost(
        None,
        frozenset(),
        {},
        "no cgroup filesystem is mounted; mount cgroup2 with "
        "`mount -t cgroup2 cgroup2 /sys/fs/cgroup`",
    )
