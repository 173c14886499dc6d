"""cgroup v2: one directory in the unified hierarchy; controllers switched on level by level
(subtree_control); memory.events counts OOM kills; cgroup.kill empties a cgroup at once;
cpu.stat counts CPU time."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import CONTROLLERS, CPU_PERIOD_US, CgroupError
from firebox.confine.cgroups.group import CgroupSet, Usage

if TYPE_CHECKING:
    from pathlib import Path

    from firebox.confine.cgroups import Limits
    from firebox.confine.cgroups.detect import CgroupHost


class V2Set(CgroupSet):
    version = 2

    def memory_events(self) -> dict[str, int]:
        # oom_kill and max, and the rest of memory.events (low, high, oom, ...)
        return fs.read_kv(self.dirs["memory"] / "memory.events")

    def usage(self) -> Usage:
        d = self.dirs["memory"]
        stat = fs.read_kv(d / "memory.stat")  # hierarchical in v2
        limit = fs.read(d / "memory.max").strip()
        # usage_usec is in every cgroup's cpu.stat, the cpu controller on or not
        usec = fs.read_kv(d / "cpu.stat").get("usage_usec")
        return Usage(
            cpu_ns=None if usec is None else usec * 1000,
            memory=fs.read_int(d / "memory.current"),
            cache=stat.get("file", 0),  # shmem (tmpfs) included, as v1's cache has it
            inactive_file=stat.get("inactive_file", 0),
            memory_limit=None if limit == "max" else int(limit),
        )

    def _set_frozen(self, frozen: bool) -> None:
        fs.write(self.dirs["memory"] / "cgroup.freeze", 1 if frozen else 0)  # Linux 5.2+

    def frozen(self) -> bool:
        return fs.read_kv(self.dirs["memory"] / "cgroup.events").get("frozen", 0) == 1

    def _kill_at_once(self) -> None:
        # Linux 5.14+: the kernel kills the whole subtree atomically, forks included.
        kill_file = self.paths[0] / "cgroup.kill"
        if kill_file.exists():
            fs.write(kill_file, 1)


def at(name: str, parent: str, host: CgroupHost) -> V2Set:
    return V2Set(name, dict.fromkeys(CONTROLLERS, host.mounts["memory"] / parent / name))


def _enable_controllers(directory: Path) -> None:
    """Make the controllers available to ``directory``'s children (subtree_control)."""
    control = directory / "cgroup.subtree_control"
    enabled = fs.read(control).split() if control.exists() else []
    if all(c in enabled for c in CONTROLLERS):
        return  # already on (e.g. a delegated subtree we may not write to)
    try:
        fs.write(control, " ".join("+" + c for c in CONTROLLERS))
    except CgroupError as e:
        hint = ""
        if e.errno == errno.EBUSY:
            hint = (
                f"; cgroup v2 refuses this while {directory} itself holds processes: move them "
                "into a leaf cgroup, or set FIREBOX_CGROUP_PARENT to a subtree delegated to "
                "the daemon (systemd: Delegate=yes)"
            )
        raise CgroupError(e.errno, f"cannot enable {' '.join(CONTROLLERS)}: {e}{hint}") from e


def open_set(name: str, parent: str, host: CgroupHost) -> V2Set:
    """``<parent>/<name>`` without limits, made if missing (shared: never a sandbox's)."""
    fs.make(fs.ensure_parents(host.mounts["memory"], parent, _enable_controllers) / name, True)
    return at(name, parent, host)


def create(name: str, limits: Limits, parent: str, host: CgroupHost, made: list[Path]) -> V2Set:
    # A cgroup can only use controllers its parent lists in cgroup.subtree_control, so they are
    # switched on at every level from the root down to the parent.
    d = fs.ensure_parents(host.mounts["memory"], parent, _enable_controllers) / name
    fs.make(d)
    made.append(d)
    fs.write(d / "memory.max", limits.memory_bytes)
    if (d / "memory.swap.max").exists():  # absent without swap accounting
        fs.write(d / "memory.swap.max", 0)  # swap must not extend the memory limit
    fs.write(d / "pids.max", limits.pids)
    fs.write(d / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
    return at(name, parent, host)
