"""The microvm backend: each sandbox is a QEMU ``microvm`` with its own guest kernel.

A sandbox starts as a restore of its template's snapshot (snapshot.py), not a boot:

1. a fresh qcow2 overlay on the snapshot's writable disk, in a directory of the sandbox's own;
2. a cgroup with the VM's memory (guest RAM + QEMU's own), pids and CPU limits;
3. QEMU started jailed (vmm.py) as the sandbox's unprivileged host uid, waiting for its state
   (``-incoming defer``), its RAM the template's sealed memfd mapped copy-on-write;
4. over QMP: ``x-ignore-shared``, then the device state from the snapshot file; the daemon has
   already connected the agent's virtio-serial socket, so the restored guest finds its host
   side connected just as it was when the snapshot was taken;
5. the daemon sends ``Resume`` (fresh randomness, clock, hostname, machine id) and the agent
   answers with its hello.

Everything else (the protocol, the agent, the API) is the jail's: the backend only changes
where the agent runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from firebox import protocol
from firebox.backends import agent_files
from firebox.backends.adopted import HeldProcess
from firebox.backends.base import (
    Availability,
    Backend,
    BackendError,
    RunningSandbox,
    SandboxSpec,
)
from firebox.backends.confined import adopt, take_slot
from firebox.backends.microvm import (
    accel,
    initramfs,
    qemu,
    restore_points,
    saved,
    snapshot,
    template,
    vmm,
)
from firebox.backends.microvm.launch import Launch, launch
from firebox.backends.microvm.restore_points import RestorePoint
from firebox.backends.microvm.sandbox import BAKED_DEV, STATE_FILE, MicroVMSandbox, Waking
from firebox.backends.owner import Owner
from firebox.backends.supervision import Supervisors
from firebox.backends.warm import warm_imports
from firebox.confine import cgroups
from firebox.confine.gate import spawn_gated
from firebox.confine.uids import UidSlots, range_problem
from firebox.images import leases, vmboot
from firebox.images.cache import image_root

log = logging.getLogger("firebox.microvm")

RESTORE_DEADLINE = 15.0  # seconds from spawning QEMU to the restored guest running
WAKE_DEADLINE = 60.0  # a paused VM's state holds all its RAM: more to read than a restore
SHM_MB = 64


class MicroVMBackend(Backend):
    name = "microvm"
    starts_templates = True  # a template's snapshot is taken with its start command running
    snapshot_keeps = "memory+disk"

    def __init__(self, owner: Owner, uid_base: int) -> None:
        self.owner = owner
        self._slots = UidSlots(uid_base)  # host uid ranges, taken host-wide (confine/uids.py)
        self._availability: Availability | None = None
        self._accel: accel.Verdict | None = None
        # by (template, memory, vCPUs, disk): what sandboxes of that shape restore from
        self._prepared: dict[tuple[object, ...], RestorePoint] = {}
        self._prepare_lock = asyncio.Lock()
        self._qemu: str | None = None
        self._pieces: vmboot.BootPieces | None = None
        self._supervisors = Supervisors(owner.run_dir, owner.cgroup_parent)
        self._launch = Launch(self._spawn, self._supervisors, owner.cgroup_parent)
        # running sandboxes' snapshots loaded to start sandboxes from (saved.py), by directory
        self._saved: dict[Path, tuple[RestorePoint, qemu.VmConfig]] = {}
        self._saved_lock = asyncio.Lock()

    # the guest kernel, the agent (locked in RAM) and the template's warm python context with
    # numpy, pandas and matplotlib imported: 128 MB is not enough for them, 256 MB is
    min_memory_mb = 256

    def committed_mb(self, memory_mb: int) -> int:
        return memory_mb + template.QEMU_OVERHEAD_MB  # the guest's RAM and QEMU's own

    # -- probing -------------------------------------------------------------------------

    def availability(self) -> Availability:
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        if os.geteuid() != 0:
            return Availability(
                False, "the microvm backend needs the daemon to run as root; run `firebox serve`"
            )
        self._qemu = qemu.qemu_binary()
        if self._qemu is None:
            return Availability(False, "QEMU is not installed: apt-get install qemu-system-x86")
        if shutil.which("bwrap") is None:
            return Availability(False, "bubblewrap is not installed: apt-get install bubblewrap")
        if shutil.which("qemu-img") is None:
            return Availability(False, "qemu-img is not installed: apt-get install qemu-utils")
        if (problem := range_problem(self._slots.uid_base)) is not None:
            return Availability(False, problem)
        host = cgroups.detect()
        missing = [c for c in ("memory", "pids", "cpu") if c not in host.controllers]
        if missing:
            return Availability(
                False, f"cgroup controllers {', '.join(missing)} are not available; {host.reason}"
            )
        try:
            pieces = vmboot.boot_pieces()
        except Exception as e:
            return Availability(False, f"the guest kernel is not available: {e}")
        verdict = accel.detect(self._qemu, pieces, self._probe_initramfs(pieces))
        self._accel = verdict
        self._pieces = pieces  # fetching them asks apt: once per daemon
        if verdict.accel is None:
            return Availability(False, f"QEMU cannot boot the guest kernel here: {verdict.reason}")
        return Availability(
            True,
            f"QEMU microvm with {verdict.accel.upper()} ({verdict.reason}), jailed QEMU, "
            f"cgroup v{host.version} limits, snapshot restore",
            {"accel": verdict.accel, "accel_reason": verdict.reason, "qemu": self._qemu},
        )

    def _probe_initramfs(self, pieces: vmboot.BootPieces) -> Path:
        return initramfs.build(pieces, self._agent_lib(), self._boot_dir(), SHM_MB, "")

    def _agent_lib(self) -> Path:
        return agent_files.stage(image_root())

    def _vm_root(self) -> Path:
        # One directory per live VM (its overlay disk and sockets): beside the images, since
        # each VM's unprivileged uid must reach it (a daemon's home may be private), and its
        # owner's, so one daemon never reclaims another's.
        return self.owner.vm_dirs

    def _boot_dir(self) -> Path:
        return image_root() / "vmboot-initramfs"

    async def reclaim_stale(self, keep: frozenset[str] = frozenset()) -> int:
        freed = await asyncio.to_thread(cgroups.cleanup_stale, self.owner.cgroup_parent, keep=keep)
        freed += self._supervisors.sweep(keep)
        base = self._vm_root()
        if base.is_dir():
            for stale in base.iterdir():
                if stale.name in keep:
                    continue
                if stale.is_dir():
                    await asyncio.to_thread(shutil.rmtree, stale, True)
                    freed += 1
                else:  # a blank overlay, made again when the snapshot is loaded
                    stale.unlink(missing_ok=True)
        return freed

    async def close(self) -> None:
        for point in self._prepared.values():
            point.close()
        self._prepared.clear()
        for point, _ in self._saved.values():
            point.close()
        self._saved.clear()
        await self._supervisors.close()
        with contextlib.suppress(OSError):  # left only if a sandbox's directory is in it
            self._vm_root().rmdir()
        with contextlib.suppress(OSError):  # left while sandboxes run on, for the next daemon
            await asyncio.to_thread(cgroups.remove_parent, self.owner.cgroup_parent)

    async def adopt(self, spec: SandboxSpec, held: dict[str, Any]) -> RunningSandbox:
        """A VM an earlier daemon of this home restored: running (its QEMU by pid and start
        time, its cgroup, uid range, QMP and supervisor) or paused (its directory: disk and
        saved state). Either keeps a lease on the snapshot its disk is backed by."""
        if not held.get("vm") or not held.get("entry"):
            raise BackendError("it was not restored from a snapshot")
        entry = Path(str(held["entry"]))
        lease = await asyncio.to_thread(leases.hold, entry, lambda e: (e / "rw.img").exists())
        if lease is None:
            raise BackendError("the snapshot its disk is made on is gone")
        try:
            sandbox = await self._adopted(spec, held, entry)
        except BaseException:
            os.close(lease)
            raise
        sandbox.keep_lease(lease)
        return sandbox

    async def _adopted(
        self, spec: SandboxSpec, held: dict[str, Any], entry: Path
    ) -> MicroVMSandbox:
        waking = Waking(
            qemu.VmConfig.from_dict(held["vm"]), entry, spec, self._wake, self._bake_paused
        )
        vm_dir = Path(str(held["dir"]))
        backing = Path(str(held["backing"])) if held.get("backing") else None
        disk_bytes = held.get("disk_bytes")
        if held.get("paused"):
            if not (vm_dir / STATE_FILE).exists() and not (vm_dir / BAKED_DEV).exists():
                raise BackendError("its saved state is gone")
            absent = cgroups.attach(spec.sandbox_id, self.owner.cgroup_parent, must_exist=False)
            return await MicroVMSandbox.asleep(vm_dir, waking, backing, disk_bytes, absent)
        monitors: list[qemu.Qmp] = []

        async def connect_qmp(proc: HeldProcess) -> None:
            qmp = await qemu.Qmp.connect(waking.vm.qmp_socket, RESTORE_DEADLINE, proc)
            monitors.append(qmp)
            # a daemon killed in the middle of a pause or a snapshot left the guest stopped
            await qmp.execute("cont")

        got = await adopt(held, self._slots, self.owner.cgroup_parent, "QEMU", connect_qmp)
        return MicroVMSandbox(
            got.proc,
            got.cgroup,
            vm_dir,
            got.reader,
            got.writer,
            monitors[0],
            got.supervised,
            got.slot,
            release=got.release,
            backing=backing,
            disk_bytes=disk_bytes,
            waking=waking,
        )

    # -- templates and their snapshots -----------------------------------------------------

    async def prepare(self, spec: SandboxSpec) -> None:
        """Have the snapshot for sandboxes shaped like ``spec`` ready (made now if missing),
        and remove its template's snapshots that nothing can restore any more and nobody
        holds (each is ~300 MB)."""
        await self._snapshot(spec)

    async def forget_image(self, rootfs: Path) -> None:
        for shape in [k for k in self._prepared if k[1] == rootfs]:
            del self._prepared[shape]
        await restore_points.prune_made_from(rootfs.parent)

    async def _snapshot(self, spec: SandboxSpec) -> RestorePoint:
        limits = spec.limits
        shape = (
            spec.template,
            spec.rootfs,
            spec.start.identity() if spec.start else None,
            limits.memory_mb,
            _vcpus(limits.cpu_count),
            limits.disk_mb,
        )
        found = self._prepared.get(shape)
        if found is not None:
            return found
        async with self._prepare_lock:
            found = self._prepared.get(shape)
            if found is None:
                found = await self._make_snapshot(spec)
                self._prepared[shape] = found
                # once per shape: what its template's older snapshots left is of no use now
                assert found.spec is not None
                await restore_points.prune_stale(found.spec)
        return found

    async def _make_snapshot(self, spec: SandboxSpec) -> RestorePoint:
        ok = self.availability()
        pieces = self._pieces
        if not ok.ok or self._accel is None or self._accel.accel is None or pieces is None:
            raise BackendError(f"the microvm backend cannot run here: {ok.reason}")
        assert self._qemu is not None
        disk = await asyncio.to_thread(vmboot.root_disk, spec.rootfs)
        warm = warm_imports(spec.rootfs)
        initrd = await asyncio.to_thread(
            initramfs.build, pieces, self._agent_lib(), self._boot_dir(), SHM_MB, warm
        )
        snap = snapshot.SnapshotSpec(
            template=spec.template,
            root_disk=disk,
            vmlinux=pieces.vmlinux,
            initramfs=initrd,
            qemu_identity=await asyncio.to_thread(qemu.qemu_identity, self._qemu)
            + "|"
            + qemu.machine_identity(self._accel.accel),
            accel=self._accel.accel,
            memory_mb=spec.limits.memory_mb,
            cpus=_vcpus(spec.limits.cpu_count),
            disk_mb=spec.limits.disk_mb,
            start=spec.start,
            warm=bool(warm),
        )
        boot = functools.partial(
            template.boot,
            spawn=self._spawn,
            slots=self._slots,
            cgroup_parent=self.owner.cgroup_parent,
        )
        return await restore_points.load(snap, self._vm_root(), boot)

    # -- starting ------------------------------------------------------------------------

    async def _spawn(
        self,
        vm: qemu.VmConfig,
        uid: int,
        cgroup: cgroups.CgroupSet,
        read_only: list[Path],
        writable: list[Path],
        pass_fds: tuple[int, ...],
        output: int = subprocess.PIPE,
        outlive: bool = False,
    ) -> asyncio.subprocess.Process:
        """QEMU for ``vm``, jailed (vmm.py) as ``uid`` in ``cgroup``, seeing its boot files,
        ``read_only`` and ``writable`` and nothing else of the host's; its console and errors
        on ``output`` (a pipe to us, or one of ours to hand its supervisor)."""
        assert self._qemu is not None
        kvm = vm.accel == "kvm"
        argv = vmm.bwrap_argv(
            shutil.which("bwrap") or "bwrap",
            qemu.argv(self._qemu, vm),
            read_only=[*vm.boot_files(), vm.root_disk, *read_only],
            writable=writable,
            kvm=kvm,
            outlive=outlive,
        )
        return await spawn_gated(
            argv,
            cgroup,
            uid,
            pass_fds=pass_fds,
            stdout=output,
            stderr=subprocess.STDOUT,
            extra_groups=[os.stat(vmm.KVM_DEVICE).st_gid] if kvm else [],
        )

    async def snapshot(self, running: RunningSandbox, spec: SandboxSpec, into: Path) -> None:
        assert isinstance(running, MicroVMSandbox)
        waking, qmp = running.waking, running.qmp
        if waking is None or qmp is None:
            raise BackendError("this VM cannot be snapshotted (it was not restored)")
        try:
            await saved.capture(qmp, running.directory / "rw.qcow2", into)
            await saved.bake(
                into,
                waking.vm,
                self._spawn,
                self._slots,
                template.limits(waking.vm.memory_mb, spec.limits.cpu_count),
                self.owner.cgroup_parent,
            )
        except BaseException:
            await asyncio.to_thread(saved.remove, into)
            raise

    async def forget_snapshot(self, into: Path) -> None:
        found = self._saved.pop(into, None)
        if found is not None:
            found[0].close()
        await asyncio.to_thread(saved.remove, into)

    async def _saved_point(self, into: Path) -> tuple[RestorePoint, qemu.VmConfig]:
        found = self._saved.get(into)
        if found is None:
            async with self._saved_lock:
                found = self._saved.get(into)
                if found is None:
                    found = await saved.point(into, self._vm_root())
                    self._saved[into] = found
        return found

    async def start(self, spec: SandboxSpec) -> RunningSandbox:
        if spec.snapshot is not None:
            point, base = await self._saved_point(spec.snapshot)
        else:
            point = await self._snapshot(spec)
            assert point.spec is not None
            base = point.spec.vm(Path("/"), Path("/"), "", clone=True)
        entry, ram_fd = point.entry, point.ram_fd
        slot = take_slot(self._slots)
        uid = self._slots.first_id(slot)
        vm_dir = self._vm_root() / spec.sandbox_id
        try:
            vm_dir.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            os.chmod(vm_dir.parent.parent, 0o711)
            vm_dir.mkdir(mode=0o700)
            overlay = vm_dir / "rw.qcow2"
            shutil.copyfile(point.blank, overlay)
            os.chown(vm_dir, uid, uid)
            os.chown(overlay, uid, uid)
            vm = dataclasses.replace(
                base,
                rw_disk=overlay,
                rw_format="qcow2",
                agent_socket=vm_dir / "agent.sock",
                qmp_socket=vm_dir / "qmp.sock",
                mem_path=f"/proc/self/fd/{ram_fd}",
                share_ram=False,
                incoming=True,
            )
            resume = protocol.Resume(
                entropy=secrets.token_hex(64),
                time_ns=time.time_ns(),
                hostname=spec.hostname,
                machine_id=secrets.token_hex(16),
                boot_id=str(uuid.uuid4()),
            )
            # the snapshot's directory read-only: the overlay's backing file, at the path the
            # overlay names; a running sandbox's snapshot was saved stopped, as a template's
            got = await launch(
                self._launch,
                spec.sandbox_id,
                vm,
                uid,
                template.limits(base.memory_mb, spec.limits.cpu_count),
                entry / "state",
                [entry],
                [vm_dir],
                resume,
                pass_fds=(ram_fd,),
                ignore_shared=True,
                deadline=RESTORE_DEADLINE,
                what="restore the VM",
            )
        except BaseException as e:
            self._slots.release(slot)
            shutil.rmtree(vm_dir, ignore_errors=True)
            if isinstance(e, OSError):  # before QEMU: its directory could not be made
                raise BackendError(f"could not restore the VM: {e!r}") from e
            raise
        return MicroVMSandbox(
            got.proc,
            got.cgroup,
            vm_dir,
            got.reader,
            got.writer,
            got.qmp,
            got.supervised,
            slot,
            release=lambda: self._slots.release(slot),
            backing=entry / "rw.img",
            disk_bytes=spec.limits.disk_mb << 20,
            waking=Waking(vm, entry, spec, self._wake, self._bake_paused),
        )

    async def _bake_paused(self, sandbox: MicroVMSandbox, waking: Waking) -> None:
        """After a pause: its saved stream made into a RAM file and device state (saved.py's
        rebake), durable before the stream goes."""
        vm_dir = sandbox.directory
        vm = dataclasses.replace(waking.vm, rw_disk=vm_dir / "rw.qcow2", rw_format="qcow2")
        helper = saved.Helper(
            self._spawn,
            self._slots,
            template.limits(vm.memory_mb, waking.spec.limits.cpu_count),
            self.owner.cgroup_parent,
        )
        # the device state under another name until all of it is durable: a bake cut short (a
        # daemon killed meanwhile takes its helper with it) never looks finished
        part = sandbox.baked_dev.with_name(sandbox.baked_dev.name + ".part")
        await saved.rebake(
            vm_dir, vm, sandbox.state_file, sandbox.baked_mem, part, [waking.entry], helper,
        )  # fmt: skip
        await asyncio.to_thread(_durable, sandbox.baked_mem, part)
        part.rename(sandbox.baked_dev)
        await asyncio.to_thread(_durable, vm_dir)
        sandbox.state_file.unlink(missing_ok=True)

    async def _wake(self, sandbox: MicroVMSandbox, waking: Waking) -> None:
        """A paused VM running again: a QEMU of its shape, jailed as a uid range of its own
        again, loading the state its pause wrote (RAM and devices) over its own disk."""
        slot = take_slot(self._slots)
        uid = self._slots.first_id(slot)
        vm_dir, vm = sandbox.directory, waking.vm
        baked = sandbox.baked()
        if baked:  # its RAM a file of its own, mapped copy-on-write: nothing copied up front
            vm = dataclasses.replace(vm, mem_path=str(sandbox.baked_mem), share_ram=False)
        try:
            for path in (vm_dir, vm.rw_disk, *([sandbox.baked_mem] if baked else [])):
                os.chown(path, uid, uid)  # QEMU opens a private mapping's file read-write
            for sock in (vm.agent_socket, vm.qmp_socket):
                sock.unlink(missing_ok=True)
            got = await launch(
                self._launch,
                waking.spec.sandbox_id,
                vm,
                uid,
                template.limits(vm.memory_mb, waking.spec.limits.cpu_count),
                sandbox.baked_dev if baked else sandbox.state_file,
                [waking.entry],
                [vm_dir],
                protocol.Resume(time_ns=time.time_ns()),  # the same sandbox: clock only
                ignore_shared=baked,
                deadline=WAKE_DEADLINE,
                what="wake the paused VM",
            )
        except BaseException as e:
            self._slots.release(slot)
            if isinstance(e, OSError):  # before QEMU: its files could not be handed over
                raise BackendError(f"could not wake the paused VM: {e!r}") from e
            raise
        release = lambda: self._slots.release(slot)  # noqa: E731
        sandbox.woken(
            got.proc, got.cgroup, got.reader, got.writer, got.qmp, got.supervised, slot, release
        )


def _durable(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _vcpus(cpus: float) -> int:
    return max(1, int(-(-cpus // 1)))
