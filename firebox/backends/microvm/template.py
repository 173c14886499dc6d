"""Making a template's snapshot: boot it cold, let it warm up, migrate it to files.

The template VM maps its RAM from a file, shared, so that a migration with ``x-ignore-shared``
leaves the RAM there and saves only the device state. The guest is paused once the migration
completes and is killed at once: nothing may run after the snapshot that the files do not hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from firebox import protocol
from firebox.agent_client import AgentClient
from firebox.agent_client.start import NotReady, start_and_wait
from firebox.backends.base import BackendError
from firebox.backends.confined import take_slot
from firebox.backends.microvm import qemu, snapshot
from firebox.confine import cgroups
from firebox.confine.uids import UidSlots
from firebox.images.cache import image_root
from firebox.protocol import STREAM_LIMIT

TEMPLATE_DEADLINE = 600.0  # a cold boot plus warm imports under software emulation

# (vm, host uid, cgroup, read-only paths, writable paths, fds to pass) -> the jailed QEMU
Spawn = Callable[
    [qemu.VmConfig, int, cgroups.CgroupSet, list[Path], list[Path], tuple[int, ...]],
    Awaitable[asyncio.subprocess.Process],
]


def limits(memory_mb: int, cpus: float) -> cgroups.Limits:
    """A VM's cgroup: its guest RAM plus QEMU's own, its CPUs, QEMU's threads."""
    return cgroups.Limits(
        memory_bytes=(memory_mb + QEMU_OVERHEAD_MB) * 2**20, pids=QEMU_PIDS, cpu_quota=cpus
    )


# QEMU's own memory on top of the guest's: TCG's code cache (tb-size=64), device emulation,
# the block layer's buffers.
QEMU_OVERHEAD_MB = 256
QEMU_PIDS = 128  # vCPU threads, I/O worker threads (up to 64), RCU, main loop


async def boot(
    snap: snapshot.SnapshotSpec,
    spawn: Spawn,
    slots: UidSlots,
    cgroup_parent: str,
) -> Path:
    """Boot ``snap``'s template cold, warm it, save it; returns the finished snapshot dir.
    The template VM runs as a range of ``slots``, in a cgroup under ``cgroup_parent``."""
    base = snapshot.snapshots_dir(image_root())
    tmp = base / f".{snap.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    slot = take_slot(slots)
    uid = slots.first_id(slot)
    cgroup = await asyncio.to_thread(
        cgroups.create, f"template-{snap.key}", limits(snap.memory_mb, snap.cpus), cgroup_parent
    )
    proc: asyncio.subprocess.Process | None = None
    state_fd = -1
    try:
        await asyncio.to_thread(
            snapshot.make_rw_disk, tmp / "rw.img", snap.disk_mb, snap.root_disk.parent / "rootfs"
        )
        state_fd = os.open(tmp / "state", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for path in (tmp, tmp / "rw.img", tmp / "state"):
            os.chown(path, uid, uid)
        vm = snap.vm(tmp, tmp / "rw.img", str(tmp / "mem"), clone=False)
        proc = await spawn(vm, uid, cgroup, [], [tmp], ())
        console = asyncio.create_task(_collect(proc))
        try:
            async with asyncio.timeout(TEMPLATE_DEADLINE):
                qmp = await qemu.Qmp.connect(vm.qmp_socket, TEMPLATE_DEADLINE, proc)
                reader, writer = await qemu.connect_unix(
                    vm.agent_socket, TEMPLATE_DEADLINE, STREAM_LIMIT, proc
                )
                agent = AgentClient(reader, writer)
                await agent.wait_hello(TEMPLATE_DEADLINE)
                if snap.warm:
                    # An empty cell waits for the pre-started context (and its warm
                    # imports) without counting as an execution.
                    stream = await agent.run_code(protocol.CodeRun(code="", language="python"))
                    async for _ in stream:
                        pass
                if snap.start is not None:
                    # a built template's server, up and ready in every restored clone
                    await start_and_wait(agent, snap.start, TEMPLATE_DEADLINE / 2)
                await qemu.migrate_out(
                    qmp, state_fd, ignore_shared=True, deadline=TEMPLATE_DEADLINE
                )
        except NotReady as e:
            proc.kill()
            said = (await _finish(console)).strip()[-3000:]
            raise BackendError(
                f"the start command of {snap.template} did not become ready: {e}\n{e.output}"
            ) from e
        except Exception as e:  # whatever went wrong, the message carries the console
            proc.kill()
            said = (await _finish(console)).strip()[-3000:]
            raise BackendError(f"the template VM for {snap.template} failed: {e!r}\n{said}") from e
        # The guest is paused after the migration: kill, never let it run past the snapshot.
        proc.kill()
        await proc.wait()
        await _finish(console)
        with contextlib.suppress(Exception):
            await agent.close()
        qmp.close()
        for leftover in ("agent.sock", "qmp.sock"):
            with contextlib.suppress(FileNotFoundError):
                (tmp / leftover).unlink()
        return await asyncio.to_thread(
            snapshot.seal_entry, tmp, snapshot.snapshots_dir(image_root()) / snap.name, snap
        )
    finally:
        if state_fd >= 0:
            os.close(state_fd)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(cgroup.destroy)
        slots.release(slot)
        shutil.rmtree(tmp, ignore_errors=True)


async def _collect(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    out = bytearray()
    while chunk := await proc.stdout.read(65536):
        out += chunk
        del out[:-65536]
    return bytes(out)


async def _finish(task: asyncio.Task[bytes]) -> str:
    try:
        return (await asyncio.wait_for(task, 5)).decode(errors="replace")
    except Exception:
        task.cancel()
        return ""
