"""What a benchmark run might leave behind, looked for once it is over: processes, mounts and
cgroups of this run only (other work on the host, such as a test suite's daemons, is not ours).

Ours are recognised by name: every cgroup parent this run makes carries its PID
(``firebox-local-<pid>-…`` for LocalDaemon, ``firebox-bench-agent-<pid>`` for overhead.py,
``fbpeers-docker-<pid>`` and ``fbpeers-runsc-<pid>-…`` for the peers); mounts by the jail disk
directories of the daemon homes this run used and the peers' temp-dir prefixes; processes as
descendants of this process or members of those cgroups.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from peers.base import process_tree

PEER_TEMP_PREFIXES = ("/tmp/fbpd-", "/tmp/fbp-runsc-", "/tmp/fbp-lsb-")


def cgroup_marks(pid: int) -> tuple[str, ...]:
    return (
        f"firebox-local-{pid}-",
        f"firebox-bench-agent-{pid}",
        f"fbpeers-docker-{pid}",
        f"fbpeers-runsc-{pid}-",
    )


def home_key(home: str) -> str:
    return hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:12]


def mounts_before() -> set[str]:
    return set(_mount_points())


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def find(homes: list[str], before: set[str]) -> list[str]:
    """What this run left: one line each."""
    me = os.getpid()
    marks = cgroup_marks(me)
    found = []
    for pid in process_tree(me):
        if pid != me:
            found.append(f"process {pid}: {_cmdline(pid)}")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            groups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(m in groups for m in marks):
            found.append(f"process {entry.name} in our cgroup: {_cmdline(int(entry.name))}")
    top = Path("/sys/fs/cgroup")
    hierarchies = [top] if (top / "cgroup.procs").exists() else list(top.iterdir())
    for h in hierarchies:
        if not (h / "cgroup.procs").exists():
            continue
        for d in h.iterdir():
            if d.is_dir() and any(d.name.startswith(m) for m in marks):
                found.append(f"cgroup {d}")
    keys = [home_key(h) for h in homes]
    for point in set(_mount_points()) - before:
        if any(point.startswith(p) for p in PEER_TEMP_PREFIXES) or any(
            f"/jail-rw/{k}" in point or f"/vm/{k}" in point for k in keys
        ):
            found.append(f"mount {point}")
    return sorted(set(found))


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace")[:200]


__all__ = ["find", "mounts_before"]
