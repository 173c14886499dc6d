"""One sandbox's cgroup(s), whatever the version: add processes, read its counters, empty it,
remove it. What differs between v1 and v2 is in v1.py and v2.py."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import CgroupError

KILL_TIMEOUT = 5.0  # seconds to empty a cgroup; only processes stuck in D state take long
RMDIR_TIMEOUT = 5.0
FREEZE_TIMEOUT = 10.0  # a task in an uninterruptible sleep (a disk write) delays its freeze


@dataclass(frozen=True, slots=True)
class Usage:
    """What a cgroup has used, as the kernel counts it (bytes, nanoseconds)."""

    cpu_ns: int | None  # CPU time of everything ever in it; None: v1 host without cpuacct
    memory: int  # charged now: its processes' RAM, page cache, tmpfs files, kernel objects
    cache: int  # of ``memory``, page cache (tmpfs files included: they are cache too)
    inactive_file: int  # of ``cache``, file pages not used lately: the first reclaimed
    memory_limit: int | None  # the memory limit; None when unlimited

    @property
    def working_set(self) -> int:
        """Memory it holds that the kernel would not simply drop under pressure: ``memory``
        less inactive file cache (what ``docker stats`` and the kubelet report as used)."""
        return max(0, self.memory - self.inactive_file)


class CgroupSet:
    """One sandbox's cgroup(s): one directory per v1 hierarchy, or one v2 directory."""

    version = 0

    def __init__(self, name: str, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.dirs = dict(dirs)  # controller -> directory (all the same one on v2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.paths})"

    @property
    def paths(self) -> list[Path]:
        """Distinct directories (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def add(self, pid: int) -> None:
        """Move a process in; its future children are born inside."""
        for d in self.paths:
            fs.write(d / "cgroup.procs", pid)

    def memory_events(self) -> dict[str, int]:
        """Counters; always has ``oom_kill`` (processes OOM-killed) and ``max`` (times the
        limit was hit)."""
        raise NotImplementedError  # each version's own files (v1.py, v2.py)

    def usage(self) -> Usage:
        """CPU time and memory used so far; reads a few small files (fast, never blocks on
        the sandbox)."""
        raise NotImplementedError  # each version's own files (v1.py, v2.py)

    def pids_events(self) -> int:
        """Times a fork or clone failed because pids.max was reached."""
        return fs.read_kv(self.dirs["pids"] / "pids.events").get("max", 0)

    def procs(self) -> list[int]:
        """PIDs (in the caller's pid namespace) in any of this set's cgroups."""
        pids: set[int] = set()
        for d in self.paths:
            try:
                pids.update(int(p) for p in fs.read(d / "cgroup.procs").split())
            except FileNotFoundError:  # already removed
                pass
            except OSError as e:  # ENODEV: being removed right now
                if e.errno != errno.ENODEV:
                    raise
        return sorted(pids)

    # -- freezing: every task stopped where it is, its memory kept (a jail's pause) ----------

    def freeze(self, timeout: float = FREEZE_TIMEOUT) -> None:
        """Stop every task inside and wait until the kernel says all are; CgroupError (and
        the cgroup thawed again) if that takes longer than ``timeout``. Blocks."""
        self._set_frozen(True)
        deadline = time.monotonic() + timeout
        while not self.frozen():
            if time.monotonic() >= deadline:
                self._set_frozen(False)
                raise CgroupError(
                    errno.EBUSY,
                    f"cgroup {self.name}: its tasks did not all stop within {timeout:.0f} s "
                    "(one is probably in an uninterruptible disk wait); try again",
                )
            time.sleep(0.002)

    def thaw(self) -> None:
        """Let every task run again (a no-op on a cgroup that is not frozen)."""
        self._set_frozen(False)

    def can_freeze(self) -> bool:
        """Whether this host gives the set a freezer (v2 always; v1 where it is mounted)."""
        return True

    def _set_frozen(self, frozen: bool) -> None:
        raise NotImplementedError  # each version's own files (v1.py, v2.py)

    def frozen(self) -> bool:
        """Whether every task inside is stopped (not merely asked to stop)."""
        raise NotImplementedError

    def _kill_at_once(self) -> None:
        """A version's fast way to kill everything inside, if it has one (v2: cgroup.kill)."""

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL everything inside and wait up to ``timeout`` seconds for the cgroup to be
        empty; CgroupError if it is not. Blocks: call it off the event loop."""
        deadline = time.monotonic() + timeout
        # Only a fast path: the loop below is the guarantee, so a failure there is not fatal.
        with contextlib.suppress(CgroupError):
            self._kill_at_once()
        # Signal and re-read until empty: a process may fork between reading and killing, but
        # pids.max bounds how often that can happen.
        while pids := self.procs():
            self._signal(pids)
            # A frozen task acts on its SIGKILL only once thawed (v1; v2 lets it through).
            with contextlib.suppress(OSError, NotImplementedError):
                self.thaw()
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
                    fs.rmdir(d)
                    break
                except (FileNotFoundError, NotADirectoryError):
                    break
                except OSError as e:
                    if e.errno == errno.ENODEV:  # removed meanwhile
                        break
                    # EBUSY lingers briefly while exiting tasks are still being uncharged.
                    if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise CgroupError(e.errno, f"cannot remove {d}: {e.strerror}") from e
                    time.sleep(0.01)
