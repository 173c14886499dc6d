"""Per-sandbox cgroups on cgroup v1 or v2: memory, pids and CPU limits, counters, kill, cleanup.

Each sandbox gets ``<parent>/<name>`` (parent defaults to ``$FIREBOX_CGROUP_PARENT`` or
``firebox``), under each v1 controller's hierarchy or once under the v2 unified hierarchy::

    host = detect()                                   # which version, which controllers
    cg = create("sbx_1", Limits(512 << 20, 256, 1.0))
    cg.add(pid)                                       # children follow automatically
    cg.memory_events()["oom_kill"]; cg.pids_events()
    cg.destroy()                                      # SIGKILL everything, then rmdir

Only files under the cgroup mounts are touched, so the v2 code is tested against a fake tree
(tests/unit/test_cgroups.py) by passing a ``CgroupHost`` whose mount is a temp directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")  # what a sandbox needs, in every version
CPU_PERIOD_US = 100_000
KILL_TIMEOUT = 5.0  # seconds to empty a cgroup; only processes stuck in D state take long
RMDIR_TIMEOUT = 5.0
MOUNTINFO = Path("/proc/self/mountinfo")
PARENT_ENV = "FIREBOX_CGROUP_PARENT"
DEFAULT_PARENT = "firebox"

# cgroup v1 controller names as they appear in a cgroup mount's super options.
_V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
     "perf_event", "hugetlb", "pids", "rdma", "misc"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class CgroupError(OSError):
    """A cgroup could not be created, changed or removed; the message says what to do.

    An OSError because every cause is a filesystem operation on cgroupfs, so callers that
    already handle OSError around process management handle this too.
    """

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


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


@dataclass(frozen=True)
class CgroupHost:
    """What this host offers. ``version`` is None when no cgroup filesystem is usable."""

    version: int | None
    controllers: frozenset[str]  # controllers usable in that version
    mounts: Mapping[str, Path] = field(default_factory=dict)  # controller -> hierarchy mount
    reason: str = ""  # why something we need is missing, and how to fix it; "" when all is well

    def missing(self) -> list[str]:
        return [c for c in CONTROLLERS if c not in self.controllers]


# -- detection -------------------------------------------------------------------------------


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


def _read(path: Path) -> str:
    return path.read_text()


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
            v2_ctrls = frozenset(_read(v2_root / "cgroup.controllers").split())
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


# -- file helpers ----------------------------------------------------------------------------


def _mkdir_cgroup(path: Path) -> None:
    # The kernel fills a new cgroup directory with its interface files. Tests replace this
    # (and _rmdir_cgroup) to do the same in a plain temp directory.
    os.mkdir(path)


def _rmdir_cgroup(path: Path) -> None:
    os.rmdir(path)  # allowed on cgroupfs despite the interface files; EBUSY while populated


def _write(path: Path, value: object) -> None:
    # No O_CREAT: a missing interface file means a controller that isn't enabled, and creating
    # a plain file would hide that.
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        controller = path.name.split(".")[0]
        raise CgroupError(
            errno.ENOENT,
            f"{path} does not exist: the {controller} controller is not enabled for this "
            "cgroup (see detect().reason)",
        ) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise CgroupError(e.errno, f"writing {data.decode()!r} to {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def _read_kv(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, pids.events, memory.oom_control)."""
    out = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"cgroup {what} {name!r} must be 1-128 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def _parent(parent: str | None) -> str:
    parent = parent or os.environ.get(PARENT_ENV) or DEFAULT_PARENT
    for part in parent.split("/"):
        _check_name(part, "parent")
    return parent


# -- one sandbox's cgroups -------------------------------------------------------------------


class CgroupSet:
    """One sandbox's cgroup(s): one directory per v1 hierarchy, or one v2 directory."""

    def __init__(self, name: str, version: int, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.version = version
        self.dirs = dict(dirs)  # controller -> directory (all the same one on v2)

    def __repr__(self) -> str:
        return f"CgroupSet({self.name!r}, v{self.version}, {self.paths})"

    @property
    def paths(self) -> list[Path]:
        """Distinct directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def add(self, pid: int) -> None:
        """Move a process in; its future children are born inside."""
        for d in self.paths:
            _write(d / "cgroup.procs", pid)

    def memory_events(self) -> dict[str, int]:
        """Counters; always has ``oom_kill`` (processes OOM-killed) and ``max`` (times the
        limit was hit). v2 adds the rest of memory.events (low, high, oom, ...)."""
        mem = self.dirs["memory"]
        if self.version == 2:
            return _read_kv(mem / "memory.events")
        # v1 charges RAM+swap (memsw) first and RAM only if that passed, so a hit is counted
        # in exactly one of the two failcnt files. Some kernels (6.18 seen) leave failcnt at
        # 0 even after an OOM kill: trust oom_kill, treat "max" as a hint on v1.
        hits = sum(
            int(_read(f))
            for f in (mem / "memory.failcnt", mem / "memory.memsw.failcnt")
            if f.exists()
        )
        return {"oom_kill": _read_kv(mem / "memory.oom_control").get("oom_kill", 0), "max": hits}

    def pids_events(self) -> int:
        """Times a fork or clone failed because pids.max was reached."""
        return _read_kv(self.dirs["pids"] / "pids.events").get("max", 0)

    def procs(self) -> list[int]:
        """PIDs (in the caller's pid namespace) in any of this set's cgroups."""
        pids: set[int] = set()
        for d in self.paths:
            with contextlib.suppress(FileNotFoundError):  # already removed
                pids.update(int(p) for p in _read(d / "cgroup.procs").split())
        return sorted(pids)

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL everything inside and wait up to ``timeout`` seconds for the cgroup to be
        empty; CgroupError if it is not. Blocks: call it off the event loop."""
        deadline = time.monotonic() + timeout
        kill_file = self.paths[0] / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            # Linux 5.14+: the kernel kills the whole subtree atomically, forks included. Only
            # a fast path: the loop below is the guarantee, so a failure here is not fatal.
            with contextlib.suppress(CgroupError):
                _write(kill_file, 1)
        # Signal and re-read until empty: a process may fork between reading and killing, but
        # pids.max bounds how often that can happen.
        while pids := self.procs():
            self._signal(pids)
            if time.monotonic() >= deadline:
                raise CgroupError(
                    errno.EBUSY,
                    f"cgroup {self.name}: {len(pids)} process(es) survive SIGKILL after "
                    f"{timeout}s (pids {pids[:10]}); they are probably stuck in the kernel "
                    "(state D in /proc/PID/stat); try destroy() again later",
                )
            time.sleep(0.005)

    def _signal(self, pids: list[int]) -> None:
        # A listed pid may exit and be reused by an unrelated host process before we signal
        # it. A pidfd pins the process: if its pid is still listed after the pidfd was opened,
        # the pidfd refers to a process in this cgroup.
        fds: dict[int, int] = {}
        try:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    fds[pid] = os.pidfd_open(pid)
            still = set(self.procs())
            for pid, fd in fds.items():
                if pid in still:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            for fd in fds.values():
                os.close(fd)

    def destroy(self, timeout: float = KILL_TIMEOUT + RMDIR_TIMEOUT) -> None:
        """Kill everything inside, then remove the directories. Idempotent; never hangs:
        raises CgroupError when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        self.kill_all(timeout=max(0.0, deadline - time.monotonic() - 1.0))
        for d in self.paths:
            while True:
                try:
                    _rmdir_cgroup(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    # EBUSY lingers briefly while exiting tasks are still being uncharged.
                    if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise CgroupError(e.errno, f"cannot remove {d}: {e.strerror}") from e
                    time.sleep(0.01)


# -- creating, attaching, cleaning up --------------------------------------------------------


def _require(host: CgroupHost) -> None:
    if host.version is None or host.missing():
        missing = ", ".join(host.missing())
        raise CgroupError(
            errno.ENOENT, f"cgroup controller(s) {missing} not available: {host.reason}"
        )


def _enable_controllers(directory: Path) -> None:
    """Make the controllers available to ``directory``'s children (v2 subtree_control)."""
    control = directory / "cgroup.subtree_control"
    enabled = _read(control).split() if control.exists() else []
    if all(c in enabled for c in CONTROLLERS):
        return  # already on (e.g. a delegated subtree we may not write to)
    try:
        _write(control, " ".join("+" + c for c in CONTROLLERS))
    except CgroupError as e:
        hint = ""
        if e.errno == errno.EBUSY:
            hint = (
                f"; cgroup v2 refuses this while {directory} itself holds processes: move them "
                "into a leaf cgroup, or set FIREBOX_CGROUP_PARENT to a subtree delegated to "
                "the daemon (systemd: Delegate=yes)"
            )
        raise CgroupError(e.errno, f"cannot enable {' '.join(CONTROLLERS)}: {e}{hint}") from e


def _make(path: Path, exist_ok: bool = False) -> None:
    try:
        _mkdir_cgroup(path)
    except FileExistsError:
        if exist_ok:  # a shared parent, possibly made by a concurrent create()
            return
        raise CgroupError(
            errno.EEXIST,
            f"{path} already exists: a leftover of a crashed daemon? cleanup_stale() removes it",
        ) from None
    except OSError as e:
        raise CgroupError(e.errno, f"cannot create cgroup {path}: {e.strerror}") from e


def create(
    name: str, limits: Limits, parent: str | None = None, host: CgroupHost | None = None
) -> CgroupSet:
    """Create ``<parent>/<name>`` with ``limits`` applied; add processes with ``.add``."""
    _check_name(name, "name")
    parent = _parent(parent)
    host = host or detect()
    _require(host)
    assert host.version is not None
    made: list[Path] = []
    try:
        if host.version == 2:
            cg = _create_v2(name, limits, parent, host.mounts["memory"], made)
        else:
            cg = _create_v1(name, limits, parent, host, made)
    except BaseException:
        for d in reversed(made):  # undo a half-made set; the parents stay, they are shared
            with contextlib.suppress(OSError):
                _rmdir_cgroup(d)
        raise
    return cg


def _ensure_parents(root: Path, parent: str, enable: bool) -> Path:
    level = root
    if enable:
        _enable_controllers(level)
    for part in parent.split("/"):
        level = level / part
        if not level.is_dir():
            _make(level, exist_ok=True)
        if enable:
            _enable_controllers(level)
    return level


def _create_v1(
    name: str, limits: Limits, parent: str, host: CgroupHost, made: list[Path]
) -> CgroupSet:
    cg = CgroupSet(name, 1, {c: host.mounts[c] / parent / name for c in CONTROLLERS})
    for mount in dict.fromkeys(host.mounts[c] for c in CONTROLLERS):  # co-mounted: once
        d = _ensure_parents(mount, parent, enable=False) / name
        _make(d)
        made.append(d)
    mem = cg.dirs["memory"]
    # The memory limit first: memsw (RAM+swap) may never be below it.
    _write(mem / "memory.limit_in_bytes", limits.memory_bytes)
    if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: swap counts too
        _write(mem / "memory.memsw.limit_in_bytes", limits.memory_bytes)
    _write(cg.dirs["pids"] / "pids.max", limits.pids)
    cpu = cg.dirs["cpu"]
    _write(cpu / "cpu.cfs_period_us", CPU_PERIOD_US)
    _write(cpu / "cpu.cfs_quota_us", limits.cpu_quota_us)
    return cg


def _create_v2(name: str, limits: Limits, parent: str, root: Path, made: list[Path]) -> CgroupSet:
    # A cgroup can only use controllers its parent lists in cgroup.subtree_control, so they are
    # switched on at every level from the root down to the parent.
    base = _ensure_parents(root, parent, enable=True)
    d = base / name
    _make(d)
    made.append(d)
    _write(d / "memory.max", limits.memory_bytes)
    if (d / "memory.swap.max").exists():  # absent without swap accounting
        _write(d / "memory.swap.max", 0)  # swap must not extend the memory limit
    _write(d / "pids.max", limits.pids)
    _write(d / "cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}")
    return CgroupSet(name, 2, dict.fromkeys(CONTROLLERS, d))


def attach(name: str, parent: str | None = None, host: CgroupHost | None = None) -> CgroupSet:
    """The existing cgroup set ``<parent>/<name>``, e.g. for a sandbox that outlived a daemon
    restart. Limits are left as they are."""
    _check_name(name, "name")
    parent = _parent(parent)
    host = host or detect()
    _require(host)
    assert host.version is not None
    cg = CgroupSet(name, host.version, {c: host.mounts[c] / parent / name for c in CONTROLLERS})
    if not any(d.is_dir() for d in cg.paths):
        raise CgroupError(errno.ENOENT, f"no cgroup {parent}/{name} in {cg.paths}")
    return cg


def cleanup_stale(
    parent: str | None = None, host: CgroupHost | None = None, keep: Collection[str] = ()
) -> int:
    """Destroy every sandbox cgroup under ``parent`` except those named in ``keep`` (sandboxes
    being re-attached). For leftovers of a crashed daemon. Returns how many were destroyed."""
    parent = _parent(parent)
    host = host or detect()
    if host.version is None:
        return 0
    names: set[str] = set()
    for c in CONTROLLERS:
        if c in host.mounts:
            base = host.mounts[c] / parent
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                names.update(p.name for p in base.iterdir() if p.is_dir())
    failures = []
    count = 0
    for name in sorted(names - set(keep)):
        if not _NAME.fullmatch(name):
            continue  # not ours
        dirs = {c: host.mounts[c] / parent / name for c in CONTROLLERS if c in host.mounts}
        try:
            CgroupSet(name, host.version, dirs).destroy()
            count += 1
        except CgroupError as e:
            failures.append(str(e))
    if failures:
        raise CgroupError(errno.EBUSY, "; ".join(failures))
    return count


def remove_parent(parent: str | None = None, host: CgroupHost | None = None) -> None:
    """Remove ``parent`` itself once it is empty (a daemon stopping cleanly); a parent that
    still holds sandboxes, of this daemon or another, stays."""
    parent = _parent(parent)
    host = host or detect()
    if host.version is None:
        return
    for c in CONTROLLERS:
        if c in host.mounts:
            # innermost first, for a nested parent like "a/b"
            parts = parent.split("/")
            for depth in range(len(parts), 0, -1):
                with contextlib.suppress(OSError):
                    _rmdir_cgroup(host.mounts[c] / "/".join(parts[:depth]))
