"""A saved VM running: its QEMU started, its state loaded, its guest told to go on.

A sandbox's start (a restore of its template's or a snapshot's state) and a paused VM's wake
do the same steps and must undo the same things when one fails: the cgroup made, the jailed
QEMU started (``-incoming defer``), QMP connected, the agent's port handed to the sandbox's
supervisor and the state loaded (qemu.load_state), the guest continued (its state was saved
stopped), and the agent's ``Resume`` sent. Here once; the callers keep what differs (the
VM's directory, the uid slot, the kind of ``Resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from firebox import protocol
from firebox.backends.base import BackendError
from firebox.backends.microvm import qemu
from firebox.backends.supervision import Supervised, Supervisors
from firebox.confine import cgroups

# (vm, host uid, cgroup, read-only paths, writable paths, fds to pass, output, outlive)
Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@dataclass
class Launched:
    proc: asyncio.subprocess.Process
    cgroup: cgroups.CgroupSet
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    qmp: qemu.Qmp
    supervised: Supervised


@dataclass
class Launch:
    """What a launch needs of its backend."""

    spawn: Spawn
    supervisors: Supervisors
    cgroup_parent: str


async def launch(
    how: Launch,
    sandbox_id: str,
    vm: qemu.VmConfig,
    uid: int,
    limits: cgroups.Limits,
    state: Path,
    read_only: list[Path],
    writable: list[Path],
    resume: protocol.Resume,
    *,
    pass_fds: tuple[int, ...] = (),
    ignore_shared: bool,
    deadline: float,
    what: str,
) -> Launched:
    """``vm`` running as ``uid`` from the saved ``state`` (devices only with
    ``ignore_shared``: its RAM is the mapped file's), its agent sent ``resume``; within
    ``deadline`` seconds. On any failure what was made is undone and BackendError says
    ``could not {what}`` and what QEMU said."""
    cgroup: cgroups.CgroupSet | None = None
    proc: asyncio.subprocess.Process | None = None
    state_fd = -1
    out = _Output()
    try:
        cgroup = await asyncio.to_thread(cgroups.create, sandbox_id, limits, how.cgroup_parent)
        state_fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
        proc = await how.spawn(vm, uid, cgroup, read_only, writable, pass_fds, out.w, outlive=True)
        out.spawned()
        async with asyncio.timeout(deadline):
            qmp = await qemu.Qmp.connect(vm.qmp_socket, deadline, proc)
            supervised, reader, writer = await qemu.load_state(
                qmp,
                vm,
                state_fd,
                proc,
                ignore_shared=ignore_shared,
                deadline=deadline,
                attach=lambda sock: how.supervisors.supervise(sandbox_id, sock, out.take()),
            )
            await qmp.execute("cont")  # every state is saved with its guest stopped
        writer.write(protocol.encode(protocol.CONTROL_CHANNEL, resume))
        await writer.drain()
    except BaseException as e:
        said = await _abandon(proc, out)
        if cgroup is not None:
            await asyncio.to_thread(cgroup.destroy)
        if isinstance(e, OSError | TimeoutError | BackendError | json.JSONDecodeError):
            raise BackendError(f"could not {what}: {e!r} {said}") from e
        raise
    finally:
        out.close()
        if state_fd >= 0:
            os.close(state_fd)
    return Launched(proc, cgroup, reader, writer, qmp, supervised)


class _Output:
    """The pipe QEMU writes its console and errors to: ours until its supervisor takes it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def spawned(self) -> None:
        os.close(self.w)  # QEMU has its own
        self.w = -1

    def take(self) -> int:
        fd, self.r = self.r, -1
        return fd

    def said(self) -> str:
        if self.r < 0:
            return ""
        try:
            os.set_blocking(self.r, False)
            return os.read(self.r, 8192).decode(errors="replace").strip()
        except OSError:
            return ""

    def close(self) -> None:
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


async def _abandon(proc: asyncio.subprocess.Process | None, out: _Output) -> str:
    """Kill a QEMU that failed to start; what it said (its console and errors)."""
    if proc is None:
        return ""
    if proc.returncode is None:
        proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
    return out.said()
