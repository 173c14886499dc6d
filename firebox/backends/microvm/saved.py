"""Snapshots of running microVMs, made into restore points of the same shape as a template's
(snapshot.py), so that any number of sandboxes start from one as clones start from their
template: its RAM mapped copy-on-write, a qcow2 overlay on its disk.

Made in two steps:

1. ``capture``, with the VM's agent quiet (the daemon holds its writes and has the agent hold
   its own: the saved channel is at a frame boundary): the guest stopped, all of its state
   (RAM and devices) written to ``full.state`` through a migration, its overlay copied; then
   it runs on. It stops for as long as that copy takes.
2. ``bake``, while it runs again: a QEMU of the same shape loads ``full.state`` with its RAM a
   shared file (``mem``) and migrates out again with ``x-ignore-shared``: device state only
   (``state``), as a template's snapshot has; the disk is flattened into a raw ``rw.img``
   (sparse), standing alone from the template's. The VM's shape is kept in ``vm.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from firebox.backends.base import BackendError
from firebox.backends.microvm import qemu
from firebox.backends.microvm.launch import Spawn
from firebox.backends.microvm.restore_points import RestorePoint, run
from firebox.backends.microvm.snapshot import load_ram
from firebox.confine import cgroups
from firebox.confine.uids import UidSlots

CAPTURE_DEADLINE = 120.0
BAKE_DEADLINE = 300.0
VM_FILE = "vm.json"
FILES = ("mem", "state", "rw.img")


async def capture(qmp: qemu.Qmp, overlay: Path, into: Path) -> None:
    """Stop the guest, save all of it and copy its disk into ``into``, and let it run on."""
    into.mkdir(mode=0o700)
    fd = os.open(into / "full.state", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await qemu.save_state(qmp, fd, CAPTURE_DEADLINE)
        # the disk as the saved memory knows it (the migration flushed it): a sparse copy of
        # what this VM wrote, on the same backing file
        await asyncio.to_thread(_copy_sparse, overlay, into / "rw.qcow2")
    finally:
        os.close(fd)
        with contextlib.suppress(Exception):
            await qmp.execute("cont")


def _copy_sparse(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        size = os.fstat(s.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(s.fileno(), offset, os.SEEK_DATA)
            except OSError:  # only a hole is left
                break
            end = os.lseek(s.fileno(), start, os.SEEK_HOLE)
            s.seek(start)
            d.seek(start)
            left = end - start
            while left:
                chunk = s.read(min(left, 1 << 20))
                d.write(chunk)
                left -= len(chunk)
            offset = end
        d.truncate(size)


async def bake(
    into: Path,
    source: qemu.VmConfig,
    spawn: Spawn,
    slots: UidSlots,
    cgroup_limits: cgroups.Limits,
    cgroup_parent: str,
) -> None:
    """Turn ``capture``'s output into a restore point (the module's docstring says how)."""
    await run("qemu-img", "convert", "-q", "-O", "raw", "-S", "4k",
              str(into / "rw.qcow2"), str(into / "rw.img"), timeout=BAKE_DEADLINE)  # fmt: skip
    vm = dataclasses.replace(source, rw_disk=into / "rw.img", rw_format="raw")
    await rebake(
        into, vm, into / "full.state", into / "mem", into / "state", [],
        Helper(spawn, slots, cgroup_limits, cgroup_parent),
    )  # fmt: skip
    await asyncio.to_thread(_finish, into, source)


@dataclass(frozen=True)
class Helper:
    """What a helper QEMU is started with: the backend's jailed spawn, a uid range, limits."""

    spawn: Spawn
    slots: UidSlots
    limits: cgroups.Limits
    cgroup_parent: str


async def rebake(
    work: Path,
    vm: qemu.VmConfig,
    full_state: Path,
    mem: Path,
    out_state: Path,
    read_only: list[Path],
    helper: Helper,
) -> None:
    """Load ``full_state`` (RAM and devices) into a helper QEMU of ``vm``'s shape whose RAM is
    the shared file ``mem``, and save its devices alone to ``out_state``: RAM that a QEMU
    then maps copy-on-write and lazily, where loading the whole stream would copy all of it.
    The helper's guest never runs. ``work`` holds its sockets; it sees ``read_only`` too."""
    vm = dataclasses.replace(
        vm,
        agent_socket=work / "agent.sock",
        qmp_socket=work / "qmp.sock",
        mem_path=str(mem),
        share_ram=True,
        incoming=True,
    )
    slot = helper.slots.take()
    uid = helper.slots.first_id(slot)
    try:
        # not in a thread: a bake is cancelled (a resume comes first), and a cgroup a thread
        # made after the cancel would be nobody's to remove (it is a few mkdirs and writes)
        cgroup = cgroups.create(f"bake-{work.name}", helper.limits, helper.cgroup_parent)
    except BaseException:
        helper.slots.release(slot)
        raise
    proc: asyncio.subprocess.Process | None = None
    state_fd = out_fd = -1
    try:
        for path in (work, vm.rw_disk):
            os.chown(path, uid, uid)
        state_fd = os.open(full_state, os.O_RDONLY | os.O_CLOEXEC)
        out_fd = os.open(out_state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        proc = await helper.spawn(vm, uid, cgroup, read_only, [work], ())
        async with asyncio.timeout(BAKE_DEADLINE):
            qmp = await qemu.Qmp.connect(vm.qmp_socket, BAKE_DEADLINE, proc)
            agent = await qemu.load_state(
                qmp, vm, state_fd, proc, ignore_shared=False, deadline=BAKE_DEADLINE,
                attach=_keep,
            )  # fmt: skip
            try:
                await qemu.migrate_out(qmp, out_fd, ignore_shared=True, deadline=BAKE_DEADLINE)
            finally:
                agent.close()
                qmp.close()
    except (OSError, TimeoutError) as e:
        raise BackendError(f"could not turn the saved state into a RAM file: {e!r}") from e
    finally:
        for fd in (state_fd, out_fd):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.returncode is None:
            proc.kill()  # never let the helper's guest run
            await proc.wait()
        await asyncio.to_thread(cgroup.destroy)
        helper.slots.release(slot)
        for sock in (vm.agent_socket, vm.qmp_socket):
            sock.unlink(missing_ok=True)


def _finish(into: Path, source: qemu.VmConfig) -> None:
    """Seal a baked snapshot: its files root's, and the VM's shape beside them."""
    for leftover in ("full.state", "rw.qcow2"):
        (into / leftover).unlink(missing_ok=True)
    # A sandbox's RAM and device state are root's alone (the daemon hands them over by fd);
    # its disk must be opened by each QEMU made from it (its overlay's backing file), as its
    # own uid: readable, in a directory that cannot be listed, under a name nobody can guess.
    for name, mode in (("mem", 0o400), ("state", 0o400), ("rw.img", 0o444)):
        os.chown(into / name, 0, 0)
        os.chmod(into / name, mode)
    (into / VM_FILE).write_text(json.dumps(dataclasses.replace(source, incoming=True).as_dict()))
    os.chmod(into / VM_FILE, 0o400)
    os.chown(into, 0, 0)
    os.chmod(into, 0o711)


async def _keep(sock: socket.socket) -> socket.socket:
    return sock  # the guest's port connected, as it was when saved; nothing is read


async def point(into: Path, vm_dirs: Path) -> tuple[RestorePoint, qemu.VmConfig]:
    """A restore point of a baked snapshot, and its VM's shape: its RAM in a sealed memfd,
    an empty overlay on its disk."""
    vm = qemu.VmConfig.from_dict(json.loads((into / VM_FILE).read_text()))
    ram_fd = await asyncio.to_thread(load_ram, into)
    blank = vm_dirs / f".blank-{into.name}.qcow2"
    try:
        vm_dirs.mkdir(mode=0o711, parents=True, exist_ok=True)
        await run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                  "-b", str(into / "rw.img"), str(blank))  # fmt: skip
    except BaseException:
        os.close(ram_fd)
        raise
    return RestorePoint(into, None, ram_fd, blank, -1), vm


def remove(into: Path) -> None:
    shutil.rmtree(into, ignore_errors=True)
    # the lease file an adopted sandbox made from it held (images/leases.py): nobody uses it
    into.with_name(into.name + ".use").unlink(missing_ok=True)
