"""The gVisor backend: ``runsc``, a kernel of the sandbox's own in user space.

The user's code runs natively on the host's CPU; each of its system calls is caught by the
sentry (gVisor's kernel, written in Go, itself under a seccomp filter, as nobody in its own
user namespace), never reaching the host kernel. Files of the image reach it through the
gofer, running as the sandbox's own unprivileged host uid range. On a host without KVM this
is the strong tier at native speed; a microVM there runs under emulation (docs/BACKENDS.md).

Start-up, each step failing loudly and undone in reverse (``_Start``):

1. a host uid range of its own, its capped disk (the jail's: jail/rwdisk.py), a cgroup with
   the sandbox's memory, pids and CPU limits;
2. its OCI bundle (bundle.py): the image read-only as root, the disk's places bound in, the
   ids mapped onto the range;
3. ``runsc run`` gated into the cgroup (confine/gate.py), so that the gofer, the sentry and
   its stubs are all born inside it, with the agent's channel as its stdin: runsc hands that
   to the agent, its first process;
4. the channel and runsc's output go to the sandbox's supervisor, which outlives the daemon.

A sandbox of the shape the daemon prepared (its template's default limits) is a ``runsc
restore`` of the template's checkpoint instead (checkpoint.py): its disk starts as the
template sandbox's was, and its agent, told so (``protocol.Resume``), takes a host name and
machine id of its own and answers with a new hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firebox import protocol
from firebox.agent_client import AgentClient, AgentGone
from firebox.backends import agent_files
from firebox.backends.adopted import HeldProcess
from firebox.backends.base import (
    Availability,
    Backend,
    BackendError,
    RunningSandbox,
    SandboxSpec,
)
from firebox.backends.confined import ConfinedSandbox, adopt, take_slot
from firebox.backends.gvisor import bundle, checkpoint, runsc
from firebox.backends.jail import rwdisk
from firebox.backends.owner import Owner
from firebox.backends.supervision import Supervised, Supervisors
from firebox.backends.warm import warm_imports
from firebox.confine import cgroups, seccomp
from firebox.confine.gate import spawn_gated
from firebox.confine.uids import UidSlots, range_problem
from firebox.images.cache import image_root

log = logging.getLogger("firebox.gvisor")

DELETE_DEADLINE = 10.0  # `runsc delete` of a sandbox already killed: its state files only
# A template's checkpoint: a cold start, its python context's warm imports (3-5 s of file
# reads through the sentry here) and the checkpoint itself (~2 s), on a loaded host.
CHECKPOINT_DEADLINE = 180.0
# Host threads and processes the sentry and gofer need besides the sandbox's own: Go's
# runtime threads, and (ptrace, systrap) stubs. The sentry panics when it cannot make one.
SENTRY_PIDS = 256
# What gVisor itself holds of the host's memory beside what the sandbox's code uses: the
# sentry's and gofer's own (~40 MB), a stub per process of the sandbox (a few MB each), and
# the copies its memory file makes. In the cgroup's limit on top of the sandbox's, as a
# microVM's QEMU is (committed_mb); measured: a restored python sandbox idles at ~150 MB and
# each python context forked in it adds 20-40 MB.
SENTRY_MB = 128
SENTRY_SHARE = 4  # plus a quarter of the sandbox's own


class GVisorSandbox(ConfinedSandbox):
    def __init__(
        self,
        proc: HeldProcess,
        cgroup: cgroups.CgroupSet,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        supervised: Supervised,
        slot: int,
        release: Callable[[], None],
        rw: Path,
        bundle_dir: Path,
        runsc_argv: list[str],
        container: str,
    ) -> None:
        super().__init__(proc, cgroup, reader, writer, supervised, slot, release)
        self._rw = rw
        self._bundle = bundle_dir
        self._runsc = runsc_argv  # the binary and its global flags
        self._container = container

    def held(self) -> dict[str, Any]:
        return {
            **super().held(),
            "rw": str(self._rw),
            "bundle": str(self._bundle),
            "runsc": self._runsc,
            "container": self._container,
        }

    @property
    def disk(self) -> Path:
        return self._rw

    @property
    def runsc_argv(self) -> list[str]:
        return self._runsc

    @property
    def container(self) -> str:
        return self._container

    # Paused: the sentry's and gofer's host threads frozen in the cgroup, its memory kept.
    pause_keeps = "memory"

    async def pause(self) -> None:
        await self._freeze("gVisor sandbox")

    async def resume(self) -> None:
        await self._thaw("gVisor sandbox")

    async def park(self, parked: bool) -> None:
        # An idle sentry is not idle (systrap's and Go's own wake-ups): a pooled sandbox left
        # running takes the CPU from the sandboxes in use; frozen it takes none.
        if parked:
            await self._freeze("pooled gVisor sandbox")
        else:
            await self._thaw("pooled gVisor sandbox")

    def _disk(self) -> tuple[int | None, int | None]:
        return rwdisk.usage(self._rw)

    async def _free(self) -> None:
        await _delete(self._runsc, self._container)
        await asyncio.to_thread(_remove, self._bundle, self._rw)


async def _delete(runsc_argv: list[str], container: str) -> None:
    """runsc's own state of a sandbox that is gone (its sentry and gofer killed already)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        await asyncio.to_thread(
            subprocess.run,
            [*runsc_argv, "delete", "--force", container],
            capture_output=True,
            timeout=DELETE_DEADLINE,
            check=False,
        )


def _remove(bundle_dir: Path, rw: Path) -> None:
    shutil.rmtree(bundle_dir, ignore_errors=True)
    rwdisk.remove(rw)


class GVisorBackend(Backend):
    name = "gvisor"
    # files only, as a jail's: a snapshot of its memory (runsc checkpoint) is not kept yet
    snapshot_keeps = "disk"

    def __init__(self, owner: Owner, uid_base: int) -> None:
        self.owner = owner
        self.uid_base = uid_base
        self._slots = UidSlots(uid_base)
        self._agent_lib: Path | None = None
        self._availability: Availability | None = None
        self._supervisors = Supervisors(owner.run_dir, owner.cgroup_parent)
        self._prepare_lock = asyncio.Lock()
        self._broken: set[Path] = set()  # checkpoints that failed to restore: started cold

    def committed_mb(self, memory_mb: int) -> int:
        return memory_mb + memory_mb // SENTRY_SHARE + SENTRY_MB

    @property
    def _bundles(self) -> Path:
        """Each sandbox's OCI bundle: beside its disk, where the gofer (the sandbox's uid
        range) can reach its machine id, as it reaches the images."""
        return image_root() / "gvisor" / self.owner.key

    @property
    def _state(self) -> Path:
        """runsc's own state (``--root``): root's only, under /run, as the supervisors are."""
        return self.owner.run_dir / "runsc"

    # -- probing -------------------------------------------------------------------------

    def availability(self) -> Availability:
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        found = runsc.find()
        if found is None:
            return Availability(
                False,
                "gVisor's runsc is not installed: apt-get install runsc (or put a release's "
                f"runsc on PATH, or set {runsc.ENV} to it)",
            )
        if os.geteuid() != 0:
            return Availability(
                False,
                "the gvisor backend needs the daemon to run as root (runsc maps each sandbox "
                "onto unprivileged host uids and creates cgroups); run `firebox serve` as root",
            )
        if (problem := range_problem(self.uid_base)) is not None:
            return Availability(False, problem)
        host = cgroups.detect()
        missing = [c for c in ("memory", "pids", "cpu") if c not in host.controllers]
        if missing:
            return Availability(
                False,
                f"cgroup controllers {', '.join(missing)} are not available "
                f"(cgroup v{host.version}); {host.reason}".rstrip("; "),
            )
        chosen = runsc.platform(found)
        details: dict[str, Any] = {
            "runsc": found.path,
            "version": found.version,
            "platforms": chosen.tried,
        }
        if found.old:
            details["advice"] = found.advice()
        if chosen.name is None:
            why = "; ".join(f"{p}: {r}" for p, r in chosen.tried.items())
            reason = f"runsc {found.version} runs no sandbox here ({why})"
            return Availability(False, reason, details)
        details["platform"] = chosen.name
        return Availability(
            True,
            f"gVisor runsc {found.version}, {chosen.name} platform: a user-space kernel per "
            "sandbox, code at native speed, each system call paying its way through the sentry",
            details,
        )

    def _runsc_argv(self) -> list[str]:
        """runsc and its global flags, as every call of this daemon's names them."""
        details = self.availability().details
        return [
            str(details["runsc"]),
            "--root",
            str(self._state),
            # no network device: egress rides the agent's channel, as on every backend
            "--network=none",
            f"--platform={details['platform']}",
            # the root is the image, read-only; the writable places are the capped disk's
            "--overlay2=none",
            # only this sandbox touches its disk's files (the daemon copies them frozen):
            # the sentry may cache them
            "--file-access-mounts=exclusive",
        ]

    # -- adopting and reclaiming ----------------------------------------------------------

    async def reclaim_stale(self, keep: frozenset[str] = frozenset()) -> int:
        disks = await asyncio.to_thread(rwdisk.remove_stale, self.owner.jail_disks, keep)
        cgs = await asyncio.to_thread(cgroups.cleanup_stale, self.owner.cgroup_parent, keep=keep)
        bundles = 0
        for path in self._bundles.iterdir() if self._bundles.is_dir() else ():
            if path.name not in keep:
                if self.availability().ok:
                    await _delete(self._runsc_argv(), path.name)
                await asyncio.to_thread(shutil.rmtree, path, True)
                bundles += 1
        return disks + cgs + bundles + self._supervisors.sweep(keep)

    async def adopt(self, spec: SandboxSpec, held: dict[str, Any]) -> RunningSandbox:
        """A sandbox an earlier daemon of this home started, still running: its ``runsc run``
        (by pid and start time), cgroup, uid range, disk, and agent through its supervisor."""
        got = await adopt(held, self._slots, self.owner.cgroup_parent, "runsc process")
        return GVisorSandbox(
            got.proc,
            got.cgroup,
            got.reader,
            got.writer,
            got.supervised,
            got.slot,
            release=got.release,
            rw=Path(str(held["rw"])),
            bundle_dir=Path(str(held["bundle"])),
            runsc_argv=[str(a) for a in held["runsc"]],
            container=str(held["container"]),
        )

    async def snapshot(self, running: RunningSandbox, spec: SandboxSpec, into: Path) -> None:
        """Its disk (home, /tmp, /root), copied while it is frozen (as a jail's)."""
        assert isinstance(running, GVisorSandbox)
        await running.pause()
        try:
            await asyncio.to_thread(
                rwdisk.save, running.disk, into / "disk", self._slots.first_id(running.slot)
            )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, into, True)
            raise
        finally:
            await running.resume()

    async def forget_snapshot(self, into: Path) -> None:
        await asyncio.to_thread(shutil.rmtree, into, True)

    async def forget_image(self, rootfs: Path) -> None:
        await asyncio.to_thread(checkpoint.prune, rootfs)

    # -- template checkpoints -------------------------------------------------------------

    def _shape(self, spec: SandboxSpec) -> checkpoint.Shape | None:
        """What a checkpoint for sandboxes like ``spec`` is made of; None for those that never
        start from one (a template with a start command, a snapshot's, a build's)."""
        if spec.start is not None or spec.snapshot is not None or spec.build_layers:
            return None
        details = self.availability().details
        return checkpoint.Shape(
            template=spec.template,
            rootfs=spec.rootfs,
            agent_lib=self._lib(),
            runsc=f"{details['version']} {details['platform']}",
            memory_mb=spec.limits.memory_mb,
            processes=spec.limits.processes,
            cpu_count=spec.limits.cpu_count,
        )

    async def prepare(self, spec: SandboxSpec) -> None:
        """Make the template's checkpoint (once per shape, kept across daemons); until it
        exists, or if it cannot be made, sandboxes start cold (slower, never failing)."""
        shape = self._shape(spec) if self.availability().ok else None
        if shape is None:
            return
        async with self._prepare_lock:
            if checkpoint.ready(shape) is not None:
                return
            started = time.monotonic()
            try:
                async with asyncio.timeout(CHECKPOINT_DEADLINE):
                    await self._make_checkpoint(spec, shape)
            except (BackendError, OSError, TimeoutError, AgentGone, protocol.ProtocolError) as e:
                log.warning(
                    "gvisor: no checkpoint of %s, sandboxes start cold: %s", spec.template, e
                )
                return
            log.info(
                "gvisor: checkpoint of %s made in %.1f s", spec.template, time.monotonic() - started
            )

    async def _make_checkpoint(self, spec: SandboxSpec, shape: checkpoint.Shape) -> None:
        """Boot the template cold with its warm imports, wait for its python context, and
        checkpoint it with its disk."""
        tmp = await asyncio.to_thread(checkpoint.workdir, shape)
        template = dataclasses.replace(
            spec, sandbox_id=f"template-{shape.key}-{os.getpid()}", hostname="sandbox"
        )
        running = await self._start(template, None, warm_imports(spec.rootfs))
        agent = AgentClient(running.reader, running.writer)
        try:
            await agent.wait_hello(CHECKPOINT_DEADLINE)
            # an empty cell waits for the pre-started context and its warm imports
            stream = await agent.run_code(protocol.CodeRun(code="", language="python"))
            async for _ in stream:
                pass
            assert isinstance(running, GVisorSandbox)
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    *running.runsc_argv,
                    "checkpoint",
                    f"--image-path={tmp}",
                    # read back whole at every restore: uncompressed, no inflating on the way,
                    # and without the pages that hold only zeros (a restore maps them anew)
                    "--compression=none",
                    "--exclude-committed-zero-pages",
                    running.container,
                ],
                capture_output=True,
                text=True,
                timeout=CHECKPOINT_DEADLINE / 2,
                check=False,
            )
            if done.returncode != 0:
                raise BackendError(f"runsc checkpoint failed: {done.stderr.strip()[-500:]}")
            # the checkpoint stopped it: its disk is as its processes left it
            await asyncio.to_thread(
                rwdisk.save,
                running.disk,
                tmp / checkpoint.DISK,
                self._slots.first_id(running.slot),
            )
            entry = await asyncio.to_thread(checkpoint.seal, tmp, shape)
            await asyncio.to_thread(checkpoint.prune, None, entry)
        finally:
            with contextlib.suppress(Exception):
                await agent.close()
            await running.cleanup()
            await asyncio.to_thread(shutil.rmtree, tmp, True)

    async def close(self) -> None:
        await self._supervisors.close()
        # runsc's state directory, empty once every sandbox is deleted, and the run directory
        # it kept from going (the next daemon makes both again)
        for leftover in (self._state, self.owner.run_dir):
            with contextlib.suppress(OSError):
                leftover.rmdir()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cgroups.remove_parent, self.owner.cgroup_parent)
        for leftover in (self.owner.jail_disks, self._bundles):
            with contextlib.suppress(OSError):
                leftover.rmdir()

    # -- starting ------------------------------------------------------------------------

    def _lib(self) -> Path:
        """The agent's code, with the seccomp program it loads on itself (bundle.py)."""
        if self._agent_lib is None:
            extras = {bundle.SECCOMP_FILE: seccomp.compiled_filter("gvisor")}
            self._agent_lib = agent_files.stage(image_root(), extras=extras)
        return self._agent_lib

    async def start(self, spec: SandboxSpec) -> RunningSandbox:
        ok = self.availability()
        if not ok.ok:
            raise BackendError(f"the gvisor backend cannot run here: {ok.reason}")
        if spec.build_layers:
            raise BackendError("gVisor sandboxes do not run template builds (a jail does)")
        shape = self._shape(spec)
        point = checkpoint.ready(shape) if shape is not None else None
        if point is not None and point not in self._broken:
            try:
                return await self._start(spec, point)
            except BackendError as e:
                self._broken.add(point)
                log.warning("gvisor: could not restore %s, starting cold: %s", point.name, e)
        return await self._start(spec, None)

    async def _start(self, spec: SandboxSpec, point: Path | None, warm: str = "") -> GVisorSandbox:
        """A sandbox of ``spec``: restored from the checkpoint ``point``, or started cold
        (``warm``: what its python context imports ahead)."""
        start = _Start(self, spec)
        try:
            await start.disk_and_cgroup(point / checkpoint.DISK if point is not None else None)
            await asyncio.to_thread(start.bundle, warm)
            await start.spawn(point)
            sandbox = await start.running()
        except BaseException as e:
            await start.undo()
            if isinstance(e, OSError):
                raise BackendError(f"could not start the gVisor sandbox: {e}") from e
            raise
        finally:
            start.close()
        if point is not None:
            # the template's kernel, restored: an identity of its own; it answers with a hello
            resume = protocol.Resume(
                time_ns=time.time_ns(),
                entropy=secrets.token_hex(32),
                hostname=spec.hostname,
                machine_id=secrets.token_hex(16),
            )
            try:
                sandbox.writer.write(protocol.encode(protocol.CONTROL_CHANNEL, resume))
                await sandbox.writer.drain()
            except OSError as e:
                await sandbox.cleanup()
                raise BackendError(f"the restored sandbox's agent is gone: {e}") from e
        return sandbox


class _Start:
    """One sandbox's start: what it has made so far, each step a method (``start``)."""

    def __init__(self, backend: GVisorBackend, spec: SandboxSpec) -> None:
        self.backend = backend
        self.spec = spec
        self.slot: int | None = None
        self.rw: Path | None = None
        self.bundle_dir: Path | None = None
        self.cgroup: cgroups.CgroupSet | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.argv = backend._runsc_argv()
        ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ours: socket.socket | None = ours
        self.output_r, self.output_w = os.pipe()  # runsc's own words, for the supervisor

    @property
    def host_id(self) -> int:
        assert self.slot is not None
        return self.backend._slots.first_id(self.slot)

    async def disk_and_cgroup(self, seed: Path | None = None) -> None:
        """1. A host uid range, the sandbox's disk (holding what ``seed``, a checkpoint's
        disk, holds), its cgroup with the limits."""
        limits = self.spec.limits
        self.slot = take_slot(self.backend._slots)
        self.rw = await asyncio.to_thread(
            rwdisk.create,
            self.backend.owner.jail_disks,
            self.spec.sandbox_id,
            limits.disk_mb,
            self.host_id,
            self.spec.rootfs,
            seed or (self.spec.snapshot / "disk" if self.spec.snapshot else None),
        )
        cgroup_limits = cgroups.Limits(
            memory_bytes=self.backend.committed_mb(limits.memory_mb) << 20,
            pids=limits.processes + SENTRY_PIDS,
            cpu_quota=limits.cpu_count,
        )
        self.cgroup = await asyncio.to_thread(
            cgroups.create, self.spec.sandbox_id, cgroup_limits, self.backend.owner.cgroup_parent
        )

    def bundle(self, warm: str = "") -> None:
        """2. Its OCI bundle."""
        assert self.rw is not None and self.cgroup is not None
        self.bundle_dir = self.backend._bundles / self.spec.sandbox_id
        self.backend._state.mkdir(mode=0o700, parents=True, exist_ok=True)
        bundle.write(
            self.spec,
            self.backend._lib(),
            self.rw,
            self.bundle_dir,
            self.host_id,
            bundle.cgroups_path(self.cgroup),
            warm,
        )

    async def spawn(self, image: Path | None = None) -> None:
        """3. ``runsc run``, or ``runsc restore`` of a checkpoint ``image``, gated into the
        cgroup, the agent's channel as its stdin."""
        assert self.cgroup is not None and self.bundle_dir is not None
        theirs = self.theirs.fileno()
        command = ["run"] if image is None else ["restore", f"--image-path={image}"]
        self.proc = await spawn_gated(
            [*self.argv, *command, "--bundle", str(self.bundle_dir), self.spec.sandbox_id],
            self.cgroup,
            None,
            pass_fds=[theirs],
            stdin=theirs,
            stdout=self.output_w,
            stderr=self.output_w,
        )

    async def running(self) -> GVisorSandbox:
        """4. The channel and output to the supervisor; the sandbox holds what was made."""
        assert self.proc is not None and self.cgroup is not None
        assert self.rw is not None and self.bundle_dir is not None and self.slot is not None
        self.theirs.close()  # runsc has its own copy
        os.close(self.output_w)
        self.output_w = -1
        ours, self.ours = self.ours, None
        output, self.output_r = self.output_r, -1
        assert ours is not None
        supervised, reader, writer = await self.backend._supervisors.supervise(
            self.spec.sandbox_id, ours, output
        )
        slots, slot = self.backend._slots, self.slot
        sandbox = GVisorSandbox(
            self.proc,
            self.cgroup,
            reader,
            writer,
            supervised,
            slot,
            release=lambda: slots.release(slot),
            rw=self.rw,
            bundle_dir=self.bundle_dir,
            runsc_argv=self.argv,
            container=self.spec.sandbox_id,
        )
        self.slot = self.rw = self.cgroup = self.proc = self.bundle_dir = None
        return sandbox

    async def undo(self) -> None:
        """Free what was made, in reverse: nothing of the sandbox stays."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.destroy)
        if self.proc is not None:
            await _delete(self.argv, self.spec.sandbox_id)
        if self.bundle_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.bundle_dir, True)
        if self.rw is not None:
            await asyncio.to_thread(rwdisk.remove, self.rw)
        if self.slot is not None:
            self.backend._slots.release(self.slot)
        if self.ours is not None:
            self.ours.close()

    def close(self) -> None:
        """Our ends of the start's pipes, whatever happened."""
        for fd in (self.output_r, self.output_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.theirs.close()
