"""The jail backend: bubblewrap + seccomp + cgroups, sharing the host kernel.

Start-up order matters and each step fails loudly (``_Start`` runs them; entry.py says how the
agent comes in at the end: exec'd by bwrap, or forked by the template's zygote):

1. a host uid range of its own, its disk, a cgroup with the sandbox's memory, pids and CPU
   limits;
2. a gate process (``sh`` waiting on a pipe) is moved into the cgroup, then execs bwrap as an
   unprivileged host uid: bwrap is born inside the cgroup, so everything it forks is too, and
   the cgroup namespace it creates is rooted at the sandbox's own cgroup (the jail cannot see
   the host's cgroup layout);
3. bwrap creates every namespace and blocks on ``--userns-block-fd`` before anything runs
   inside; the daemon (root) writes the user namespace's id maps — sandbox ids 0..65535 onto
   a range of unprivileged host ids of this sandbox's own (``uid_base`` + slot × 65536), so
   no two running sandboxes share a host uid, nor the per-uid kernel limits that go with one
   (inotify instances, RLIMIT_NPROC, …);
4. the block is released; bwrap mounts the image read-only, applies seccomp and capability
   drops and execs the agent, which connects over an inherited socket and says hello.

Root inside a jail is therefore an unprivileged uid on the host, and nothing of the jail ever
runs outside its cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from firebox.backends.jail import rwdisk
from firebox.backends.jail.bwrap import JailFds, agent_env, build_root, bwrap_argv, identity_fds
from firebox.backends.jail.entry import Entry, Exec, Forked
from firebox.backends.jail.start_pipes import read_until
from firebox.backends.jail.zygote import Zygote
from firebox.backends.owner import Owner
from firebox.backends.supervision import Supervised, Supervisors
from firebox.confine import cgroups, overlay, seccomp
from firebox.confine.gate import spawn_gated
from firebox.confine.uids import UID_RANGE, UidSlots, range_problem
from firebox.images.cache import image_root

log = logging.getLogger("firebox.jail")


class JailSandbox(ConfinedSandbox):
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
        build: bool = False,
    ) -> None:
        super().__init__(proc, cgroup, reader, writer, supervised, slot, release)
        self._rw = rw
        self._build = build

    def held(self) -> dict[str, Any]:
        return {**super().held(), "rw": str(self._rw), "build": self._build}

    @property
    def disk(self) -> Path:
        return self._rw

    def upper(self) -> Path | None:
        return self._rw / rwdisk.UPPER if self._build else None

    # Paused: every process frozen in the cgroup, its memory (and its tmpfs disk) kept where
    # it is; CRIU, which could write it to disk, does not work on every host (confine/criu.py).
    pause_keeps = "memory"

    async def pause(self) -> None:
        await self._freeze("jail")

    async def resume(self) -> None:
        await self._thaw("jail")

    def _disk(self) -> tuple[int | None, int | None]:
        return rwdisk.usage(self._rw)

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            await asyncio.to_thread(_remove_disk, self._rw, self._build)


def _remove_disk(rw: Path, build: bool) -> None:
    if build:
        overlay.unmount(build_root(rw))
    rwdisk.remove(rw)


class JailBackend(Backend):
    name = "jail"
    builds = True
    # files only: with no CRIU here (confine/criu.py) a jail's memory cannot be saved
    snapshot_keeps = "disk"

    def __init__(self, owner: Owner, uid_base: int) -> None:
        self.owner = owner
        self.uid_base = uid_base
        self._slots = UidSlots(uid_base)  # host uid ranges, taken host-wide (confine/uids.py)
        self._agent_lib: Path | None = None
        self._availability: Availability | None = None
        # a zygote per image (zygote.py); FIREBOX_JAIL_ZYGOTE=0 starts every agent with bwrap
        self._zygotes: dict[Path, Zygote] = {}
        self._zygote_lock = asyncio.Lock()
        self._use_zygote = os.environ.get("FIREBOX_JAIL_ZYGOTE", "1") != "0"
        self._supervisors = Supervisors(owner.run_dir, owner.cgroup_parent)

    # -- probing -------------------------------------------------------------------------

    def availability(self) -> Availability:
        if self._availability is None:
            self._availability = self._probe()
        return self._availability

    def _probe(self) -> Availability:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            return Availability(False, "bubblewrap is not installed: apt-get install bubblewrap")
        if os.geteuid() != 0:
            return Availability(
                False,
                "the jail backend needs the daemon to run as root (it maps each sandbox onto "
                "unprivileged host uids and creates cgroups); run `firebox serve` as root",
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
        try:
            seccomp.compiled_filter()
        except Exception as e:  # a broken policy file must stop the backend, loudly
            return Availability(False, f"the seccomp policy does not compile: {e}")
        # A real probe: an unprivileged uid (a range of our own) creating every namespace, as
        # a sandbox will.
        try:
            slot = take_slot(self._slots)
        except BackendError as e:
            return Availability(False, str(e))
        try:
            uid = self._slots.first_id(slot)
            probe = subprocess.run(
                [bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "/bin/true"],
                user=uid,
                group=uid,
                extra_groups=[],
                capture_output=True,
                timeout=10,
            )
        finally:
            self._slots.release(slot)
        if probe.returncode != 0:
            return Availability(
                False,
                "bubblewrap cannot create namespaces as an unprivileged user here "
                f"({probe.stderr.decode(errors='replace').strip()}); enable unprivileged user "
                "namespaces (sysctl kernel.unprivileged_userns_clone=1 / "
                "user.max_user_namespaces)",
            )
        return Availability(
            True,
            f"bubblewrap with all namespaces, seccomp and cgroup v{host.version} limits",
            {"cgroup_version": host.version, "bwrap": bwrap},
        )

    async def reclaim_stale(self, keep: frozenset[str] = frozenset()) -> int:
        disks = await asyncio.to_thread(rwdisk.remove_stale, self.owner.jail_disks, keep)
        cgs = await asyncio.to_thread(cgroups.cleanup_stale, self.owner.cgroup_parent, keep=keep)
        return disks + cgs + self._supervisors.sweep(keep)

    async def adopt(self, spec: SandboxSpec, held: dict[str, Any]) -> RunningSandbox:
        """A jail an earlier daemon of this home started, still running: its bwrap (by pid
        and start time), its cgroup, its uid range and disk, and its agent through its
        supervisor. BackendError if any of it is gone (``reclaim_stale`` frees the rest)."""
        got = await adopt(held, self._slots, self.owner.cgroup_parent, "bwrap process")
        return JailSandbox(
            got.proc,
            got.cgroup,
            got.reader,
            got.writer,
            got.supervised,
            got.slot,
            release=got.release,
            rw=Path(str(held["rw"])),
            build=bool(held.get("build")),
        )

    async def snapshot(self, running: RunningSandbox, spec: SandboxSpec, into: Path) -> None:
        """Its disk (home, /tmp, /root), copied while it is frozen: nothing in it can change
        a file (or swap one for a link) while root copies it."""
        assert isinstance(running, JailSandbox)
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

    async def close(self) -> None:
        for zygote in self._zygotes.values():
            await zygote.close()
        self._zygotes.clear()
        await self._supervisors.close()
        # left while sandboxes run on (for the next daemon); made again by the next daemon
        with contextlib.suppress(OSError):
            await asyncio.to_thread(cgroups.remove_parent, self.owner.cgroup_parent)
        with contextlib.suppress(OSError):
            self.owner.jail_disks.rmdir()

    # -- starting ------------------------------------------------------------------------

    def _lib(self) -> Path:
        if self._agent_lib is None:
            # Next to the images: the sandbox uid must reach both, and the daemon's home (which
            # holds the keys) need not be reachable at all.
            self._agent_lib = agent_files.stage(image_root())
        return self._agent_lib

    async def start(self, spec: SandboxSpec) -> RunningSandbox:
        """The steps of a jail's start, in order (the module's docstring says why each); what
        is made is freed again, in reverse, if a later step fails."""
        ok = self.availability()
        if not ok.ok:
            raise BackendError(f"the jail backend cannot run here: {ok.reason}")
        start = _Start(self, spec)
        try:
            await start.disk_and_cgroup()
            # a build's root is not the image its template's zygote holds
            zygote = None if spec.build_layers else self._zygotes.get(spec.rootfs)
            entry = await start.entry(zygote)
            await start.spawn_bwrap(entry, self._lib())
            child_pid = await start.child_pid(entry)
            start.map_ids(child_pid)
            await entry.enter(child_pid)
            return await start.running(entry)
        except BaseException as e:
            await start.undo()
            if isinstance(e, OSError | TimeoutError | json.JSONDecodeError):
                raise BackendError(f"could not start the jail: {e}") from e
            raise
        finally:
            start.close()

    async def prepare(self, spec: SandboxSpec) -> None:
        """Start the template's zygote (a few hundred ms: python and IPython imported), or
        start it again if it died since; until then, or if it cannot start, each agent is
        started by bwrap."""
        async with self._zygote_lock:
            existing = self._zygotes.get(spec.rootfs)
            if not self._use_zygote or (
                existing is not None and (existing.ready or not existing.was_ready)
            ):
                return
            if existing is not None:
                log.warning(
                    "jail: the zygote for %s died (%s); starting another",
                    spec.template,
                    existing.failed or "it exited",
                )
                await existing.close()
            zygote = Zygote(spec.rootfs, self._lib())
            await zygote.start()
            if zygote.failed:
                log.warning(
                    "jail: no zygote for %s, starting agents one by one: %s",
                    spec.template,
                    zygote.failed,
                )
            self._zygotes[spec.rootfs] = zygote


class _Start:
    """One jail's start: what it has made so far, each step a method (JailBackend.start)."""

    def __init__(self, backend: JailBackend, spec: SandboxSpec) -> None:
        self.backend = backend
        self.spec = spec
        self.slot: int | None = None
        self.rw: Path | None = None
        self.cgroup: cgroups.CgroupSet | None = None
        self.proc: asyncio.subprocess.Process | None = None
        # the channel: ours, and the agent's end (for bwrap to pass on, or the zygote's fork)
        ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ours: socket.socket | None = ours
        self._entry: Entry | None = None
        self.info_r = self.block_w = -1  # bwrap's info (child pid) and its userns block

    @property
    def host_id(self) -> int:
        assert self.slot is not None
        return self.backend._slots.first_id(self.slot)

    async def disk_and_cgroup(self) -> None:
        """1. A host uid range, the sandbox's disk, its cgroup with the limits."""
        slots, limits = self.backend._slots, self.spec.limits
        self.slot = take_slot(slots)
        self.rw = await asyncio.to_thread(
            rwdisk.create,
            self.backend.owner.jail_disks,
            self.spec.sandbox_id,
            limits.disk_mb,
            self.host_id,
            # a build's home is its root's (its overlay): nothing to copy in
            None if self.spec.build_layers else self.spec.rootfs,
            self.spec.snapshot / "disk" if self.spec.snapshot else None,
        )
        if self.spec.build_layers:
            await asyncio.to_thread(self._build_root)
        cgroup_limits = cgroups.Limits(
            memory_bytes=limits.memory_mb << 20, pids=limits.processes, cpu_quota=limits.cpu_count
        )
        self.cgroup = await asyncio.to_thread(
            cgroups.create, self.spec.sandbox_id, cgroup_limits, self.backend.owner.cgroup_parent
        )

    def _build_root(self) -> None:
        """A build's writable root: the overlay of its layers and an upper directory on its
        capped disk, mounted where bwrap binds it as / (confine/overlay.py says how)."""
        assert self.rw is not None
        upper, work = rwdisk.add_build_dirs(self.rw)
        overlay.mount(self.spec.build_layers, upper, work, build_root(self.rw), self.host_id)

    async def entry(self, zygote: Zygote | None) -> Entry:
        """How the agent will come in: forked now by the template's zygote, so that its move
        into the cgroups overlaps the gate's; exec'd by bwrap without one, or if it fails."""
        assert self.cgroup is not None
        if zygote is not None and zygote.ready:
            try:
                fork = await zygote.fork_agent(self.cgroup, agent_env(self.spec))
                self._entry = Forked(fork, self.theirs)
            except (BackendError, OSError) as e:
                log.warning("jail: the zygote failed (%s); starting the agent without it", e)
        if self._entry is None:
            self._entry = Exec(self.theirs)
        return self._entry

    async def spawn_bwrap(self, entry: Entry, agent_lib: Path) -> None:
        """2-3. bwrap, gated into the cgroup as the uid, making every namespace and waiting
        on its userns block for the id maps."""
        assert self.cgroup is not None and self.rw is not None
        self.info_r, info_w = os.pipe()
        block_r, self.block_w = os.pipe()
        seccomp_fd = seccomp.write_filter_fd()
        machine_id_fd, boot_id_fd = identity_fds()
        theirs = [seccomp_fd, info_w, block_r, machine_id_fd, boot_id_fd]
        try:
            argv = bwrap_argv(
                self.spec,
                agent_lib,
                JailFds(
                    agent=self.theirs.fileno(),
                    seccomp=seccomp_fd,
                    info=info_w,
                    userns_block=block_r,
                    machine_id=machine_id_fd,
                    boot_id=boot_id_fd,
                ),
                self.rw,
                holder=entry.holder,
            )
            # bwrap's own processes (its pid 1 inside the jail among them) keep the
            # environment they were started with: spawn_gated gives them nothing of the daemon's.
            self.proc = await spawn_gated(
                argv,
                self.cgroup,
                self.host_id,
                pass_fds=[*theirs, *entry.pass_fds()],
                stdout=entry.stdout,
                stderr=entry.stderr,
            )
            entry.spawned()
        finally:
            for fd in theirs:  # bwrap has its own copies
                os.close(fd)

    async def child_pid(self, entry: Entry) -> int:
        """bwrap writes a JSON object with ``child-pid`` to the info fd once it has forked."""
        assert self.proc is not None
        buf = await read_until(self.info_r, b"}", "report its child")
        if b"}" not in buf:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 2)  # its last words written
            raise BackendError(f"bwrap failed to start: {entry.said()}")
        return int(json.loads(buf[: buf.index(b"}") + 1])["child-pid"])

    def map_ids(self, child_pid: int) -> None:
        """The jail's ids 0..65535 onto its host range, then bwrap may go on (4.)."""
        mapping = f"0 {self.host_id} {UID_RANGE}\n"
        with open(f"/proc/{child_pid}/uid_map", "w") as f:
            f.write(mapping)
        with open(f"/proc/{child_pid}/gid_map", "w") as f:
            f.write(mapping)
        os.write(self.block_w, b"1")

    async def running(self, entry: Entry) -> JailSandbox:
        assert self.proc is not None and self.cgroup is not None and self.rw is not None
        self.theirs.close()  # the agent has its own end now
        # our end goes to the sandbox's supervisor, which outlives this daemon
        ours, self.ours = self.ours, None
        assert ours is not None
        supervised, reader, writer = await self.backend._supervisors.supervise(
            self.spec.sandbox_id, ours, entry.output()
        )
        slots, slot = self.backend._slots, self.slot
        assert slot is not None
        sandbox = JailSandbox(
            self.proc,
            self.cgroup,
            reader,
            writer,
            supervised,
            slot,
            release=lambda: slots.release(slot),
            rw=self.rw,
            build=bool(self.spec.build_layers),
        )
        self.slot = self.rw = self.cgroup = self.proc = None  # the sandbox holds them now
        return sandbox

    async def undo(self) -> None:
        """Free what was made, in reverse: nothing of the jail stays."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.destroy)
        if self.rw is not None:
            await asyncio.to_thread(_remove_disk, self.rw, bool(self.spec.build_layers))
        if self.slot is not None:
            self.backend._slots.release(self.slot)
        if self.ours is not None:
            self.ours.close()

    def close(self) -> None:
        """Our ends of the start's pipes, whatever happened."""
        for fd in (self.info_r, self.block_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._entry is not None:
            self._entry.close()
        self.theirs.close()
