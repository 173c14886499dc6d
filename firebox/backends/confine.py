"""What every backend's host process gets: a host uid range of its own and a cgroup it is
born in. Shared by the jail (bwrap running the agent) and the microvm (bwrap running QEMU).

- ``UidSlots`` hands out host id ranges ``uid_base + slot × 65536``, one per live sandbox, so no
  two sandboxes share a host uid nor the per-uid kernel limits that go with one;
- ``spawn_gated`` starts a program as such a uid *inside* a cgroup: a gate process (``sh``
  waiting on a pipe) is moved into the cgroup first, then execs ``setpriv`` (dropping to the
  uid; cheaper than Popen's ``user=``, which forces a full fork of the large daemon) and the
  program, all under one pid. Nothing of the sandbox ever runs outside its cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

from firebox.backends.base import BackendError
from firebox.backends.jail import cgroups

UID_RANGE = 65536
MAX_SLOTS = 4096  # uid ranges: uid_base + 4096 × 65536 stays far below 2^32
SETPRIV = "/usr/bin/setpriv"  # util-linux, essential on Debian
GATE = 'read -r _ && exec "$@" </dev/null'
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def id_conflicts(base: int, size: int, etc: Path = Path("/etc")) -> list[str]:
    """Where this host already hands out ids in [base, base + size): accounts and groups,
    and the subordinate ranges of /etc/subuid and /etc/subgid (rootless containers)."""
    end = base + size
    found = []
    for name in ("passwd", "group"):
        with contextlib.suppress(OSError):
            for line in (etc / name).read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit() and base <= int(fields[2]) < end:
                    found.append(f"{name}: {fields[0]} ({fields[2]})")
    for name in ("subuid", "subgid"):
        with contextlib.suppress(OSError):
            for line in (etc / name).read_text().splitlines():
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    start, count = int(fields[1]), int(fields[2])
                    if start < end and base < start + count:
                        found.append(f"{name}: {fields[0]} ({start}..{start + count})")
    return found


def range_problem(uid_base: int) -> str | None:
    """Why the sandboxes' host ids cannot be used here, or None."""
    clash = id_conflicts(uid_base, MAX_SLOTS * UID_RANGE)
    if not clash:
        return None
    return (
        f"the sandboxes' host ids {uid_base}..{uid_base + MAX_SLOTS * UID_RANGE} overlap ids "
        f"this host gives out ({'; '.join(clash)}): a holder of those could signal sandbox "
        "processes; set FIREBOX_UID_BASE to a free range"
    )


class UidSlots:
    """The host id ranges of running sandboxes; a range is given back only once every
    process that used it is gone (its cgroup emptied)."""

    def __init__(self, uid_base: int) -> None:
        self.uid_base = uid_base
        self._taken: set[int] = set()

    def take(self) -> int:
        """A free slot; its first host id is ``first_id(slot)``."""
        for slot in range(MAX_SLOTS):
            if slot not in self._taken:
                self._taken.add(slot)
                return slot
        raise BackendError(f"all {MAX_SLOTS} uid ranges are in use: too many sandboxes at once")

    def first_id(self, slot: int) -> int:
        return self.uid_base + slot * UID_RANGE

    def release(self, slot: int) -> None:
        self._taken.discard(slot)


async def spawn_gated(
    argv: Sequence[str],
    cgroup: cgroups.CgroupSet,
    host_id: int,
    pass_fds: Sequence[int] = (),
    stdout: int = subprocess.DEVNULL,
    stderr: int = subprocess.PIPE,
    extra_groups: Sequence[int] = (),
) -> asyncio.subprocess.Process:
    """Start ``argv`` as ``host_id`` in ``cgroup``, in a session of its own, with an empty
    environment (what it keeps would be readable in its /proc/<pid>/environ)."""
    groups = (
        [f"--groups={','.join(str(g) for g in extra_groups)}"]
        if extra_groups
        else ["--clear-groups"]
    )
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        GATE,
        "gate",
        SETPRIV,
        f"--reuid={host_id}",
        f"--regid={host_id}",
        *groups,
        "--",
        *argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        env=CLEAN_ENV,
        start_new_session=True,
    )
    try:
        # Moving a process between cgroups waits for an RCU grace period on cgroup v1
        # (10-20 ms here): off the event loop.
        await asyncio.to_thread(cgroup.add, proc.pid)
    except BaseException:
        proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc
