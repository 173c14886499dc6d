"""What every backend's host process gets: a host uid range of its own and a cgroup it is
born in. Shared by the jail (bwrap running the agent) and the microvm (bwrap running QEMU).

- ``UidSlots`` hands out host id ranges ``uid_base + slot × 65536``, one per live sandbox, so no
  two sandboxes share a host uid nor the per-uid kernel limits that go with one;
- ``spawn_gated`` starts a program as such a uid *inside* a cgroup: a gate process (``sh``
  waiting on a pipe) is moved into the cgroup first, then execs ``setpriv`` (dropping to the
  uid; cheaper than Popen's ``user=``, which forces a full fork of the large daemon) and the
  program, all under one pid. Nothing of the sandbox ever runs outside its cgroup;
- ``ConfinedSandbox`` is the running sandbox such a process holds, for either backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from firebox.backends.base import BackendError, RunningSandbox
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
        # no capability can ever come back in the host's namespaces, even through a setuid
        # or file-capability binary (bwrap gets its own full set in the user namespace it
        # makes: a new namespace's set does not come from this one)
        "--bounding-set=-all",
        "--",
        *argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        env=CLEAN_ENV,
        # from /: sh exports its working directory as PWD, which would show the daemon's
        # in the environ of bwrap's processes, readable by root inside the sandbox
        cwd="/",
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


class ConfinedSandbox(RunningSandbox):
    """A sandbox held by one gated host process (bwrap, or the bwrap around QEMU) in its own
    cgroup, with a uid range to give back. The tail of ``output`` (stderr, or a VM's console)
    is kept for error messages; backends free what else they hold in ``_free``."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        output: asyncio.StreamReader,
        release: Callable[[], None],
    ) -> None:
        self._proc = proc
        self._cgroup = cgroup
        self.reader = reader
        self.writer = writer
        self._release = release  # gives the uid range back once every process is gone
        self._tail = bytearray()
        self._tail_task = asyncio.create_task(self._keep_tail(output))
        self._cleaned = False

    async def _keep_tail(self, output: asyncio.StreamReader) -> None:
        # bounded, so a noisy sandbox cannot grow the daemon's memory
        while chunk := await output.read(65536):
            self._tail += chunk
            del self._tail[:-8192]

    def diagnostics(self) -> str:
        return self._tail.decode(errors="replace").strip()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def send_signal(self, sig: int) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        # The held process's death takes the sandbox with it (--die-with-parent); then the
        # cgroup is emptied too, the one handle that cannot miss a process.
        self.kill()
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._tail_task, 1.0)
        await asyncio.to_thread(self._cgroup.destroy)
        await self._free()
        # only now: a cgroup that could not be emptied keeps its uid range out of use
        self._release()

    async def _free(self) -> None:
        """What the backend holds beyond the process and its cgroup (after both are gone)."""

    def limit_events(self) -> dict[str, int]:
        try:
            mem = self._cgroup.memory_events()
            return {"oom_kill": int(mem.get("oom_kill", 0)), "pids_max": self._cgroup.pids_events()}
        except OSError:
            return {}
