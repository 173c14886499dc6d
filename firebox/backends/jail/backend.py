"""The jail backend: bubblewrap + seccomp + cgroups, sharing the host kernel.

Start-up order matters and each step fails loudly:

1. a cgroup with the sandbox's memory, pids and CPU limits;
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

from firebox.backends import agent_files
from firebox.backends.base import (
    Availability,
    Backend,
    BackendError,
    RunningSandbox,
    SandboxSpec,
)
from firebox.backends.confine import (
    UID_RANGE,
    ConfinedSandbox,
    UidSlots,
    range_problem,
    spawn_gated,
)
from firebox.backends.jail import cgroups, rwdisk, seccomp
from firebox.backends.jail.bwrap import JailFds, bwrap_argv, identity_fds
from firebox.backends.jail.zygote import HOLDER, AgentFork, Zygote
from firebox.images.cache import image_root
from firebox.protocol import STREAM_LIMIT

START_DEADLINE = 10.0  # seconds from spawning bwrap to its info fd answering
log = logging.getLogger("firebox.jail")


async def _read_until(fd: int, marker: bytes, waiting_for: str) -> bytes:
    """What a pipe of bwrap's start holds once ``marker`` has come, or once it ended, read by
    the event loop (no thread is left reading a descriptor that is closed when the wait is
    given up); BackendError "bwrap did not <waiting_for>" after START_DEADLINE."""
    loop = asyncio.get_running_loop()
    buf = b""
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        nonlocal buf
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        buf += chunk
        if (not chunk or marker in buf) and not done.done():
            done.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, START_DEADLINE)
    except TimeoutError:
        raise BackendError(f"bwrap did not {waiting_for} within {START_DEADLINE:.0f} s") from None
    finally:
        loop.remove_reader(fd)
    return buf


class JailSandbox(ConfinedSandbox):
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: cgroups.CgroupSet,
        sock: socket.socket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        release: Callable[[], None],
        rw: Path,
        output: asyncio.StreamReader,
    ) -> None:
        super().__init__(proc, cgroup, reader, writer, output, release)
        self._sock = sock
        self._rw = rw

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self._sock.close()
            await asyncio.to_thread(rwdisk.remove, self._rw)


class JailBackend(Backend):
    name = "jail"

    def __init__(self, home: Path, uid_base: int) -> None:
        self.home = home
        self.uid_base = uid_base
        self._slots = UidSlots(uid_base)  # host uid ranges of running sandboxes
        self._rw_parent = rwdisk.parent_for(home)
        self._agent_lib: Path | None = None
        self._availability: Availability | None = None
        # a zygote per image (zygote.py); FIREBOX_JAIL_ZYGOTE=0 starts every agent with bwrap
        self._zygotes: dict[Path, Zygote] = {}
        self._zygote_lock = asyncio.Lock()
        self._use_zygote = os.environ.get("FIREBOX_JAIL_ZYGOTE", "1") != "0"

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
        # A real probe: an unprivileged uid creating every namespace, as a sandbox will.
        probe = subprocess.run(
            [bwrap, "--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "--", "/bin/true"],
            user=self.uid_base,
            group=self.uid_base,
            extra_groups=[],
            capture_output=True,
            timeout=10,
        )
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

    async def reclaim_stale(self) -> int:
        disks = await asyncio.to_thread(rwdisk.remove_stale, self._rw_parent)
        return disks + await asyncio.to_thread(cgroups.cleanup_stale)

    async def close(self) -> None:
        for zygote in self._zygotes.values():
            await zygote.close()
        self._zygotes.clear()
        await asyncio.to_thread(cgroups.remove_parent)
        # every disk is gone by now: the daemon's own directory of them goes too (it is made
        # again by the next daemon of this home)
        with contextlib.suppress(OSError):
            self._rw_parent.rmdir()

    # -- starting ------------------------------------------------------------------------

    def _lib(self) -> Path:
        if self._agent_lib is None:
            # Next to the images: the sandbox uid must reach both, and the daemon's home (which
            # holds the keys) need not be reachable at all.
            self._agent_lib = agent_files.stage(image_root())
        return self._agent_lib

    async def start(self, spec: SandboxSpec) -> RunningSandbox:
        ok = self.availability()
        if not ok.ok:
            raise BackendError(f"the jail backend cannot run here: {ok.reason}")
        limits = cgroups.Limits(
            memory_bytes=spec.limits.memory_mb << 20,
            pids=spec.limits.processes,
            cpu_quota=spec.limits.cpu_count,
        )
        slot = self._slots.take()
        host_id = self._slots.first_id(slot)
        try:
            rw = await asyncio.to_thread(
                rwdisk.create, self._rw_parent, spec.sandbox_id, spec.limits.disk_mb, host_id
            )
        except OSError as e:
            self._slots.release(slot)
            raise BackendError(f"could not make the sandbox's disk: {e}") from e
        try:
            cgroup = await asyncio.to_thread(cgroups.create, spec.sandbox_id, limits)
        except BaseException:
            self._slots.release(slot)
            await asyncio.to_thread(rwdisk.remove, rw)
            raise
        # With the template's zygote, the agent is forked now, so that its move into the
        # cgroups overlaps the gate's; a zygote that fails here leaves bwrap to start it.
        zygote = self._zygotes.get(spec.rootfs)
        fork: AgentFork | None = None
        if zygote is not None and zygote.ready:
            try:
                fork = await zygote.fork_agent(cgroup)
            except (BackendError, OSError) as e:
                log.warning("jail: the zygote failed (%s); starting the agent without it", e)
            except BaseException:  # cancelled: nothing of this jail stays
                await asyncio.to_thread(cgroup.destroy)
                await asyncio.to_thread(rwdisk.remove, rw)
                self._slots.release(slot)
                raise
        if fork is None:
            zygote = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        # with a zygote: the placeholder's "set up" signal, and one stderr for bwrap and agent
        ready_r, ready_w = os.pipe() if zygote else (-1, -1)
        # (a socket pair, not a pipe: asyncio reads it as it reads the agent's channel)
        err_sock, err_theirs = socket.socketpair() if zygote else (None, None)
        err_w = err_theirs.detach() if err_theirs is not None else -1
        seccomp_fd = seccomp.write_filter_fd()
        machine_id_fd, boot_id_fd = identity_fds()
        child_fds = [seccomp_fd, info_w, block_r, machine_id_fd, boot_id_fd]
        if not zygote:
            child_fds.append(theirs.fileno())
        proc: asyncio.subprocess.Process | None = None
        try:
            argv = bwrap_argv(
                spec,
                self._lib(),
                JailFds(
                    agent=theirs.fileno(),
                    seccomp=seccomp_fd,
                    info=info_w,
                    userns_block=block_r,
                    machine_id=machine_id_fd,
                    boot_id=boot_id_fd,
                ),
                rw,
                holder=HOLDER if zygote else None,
            )
            # bwrap's own processes (its pid 1 inside the jail among them) keep the
            # environment they were started with: spawn_gated gives them nothing of the daemon's.
            proc = await spawn_gated(
                argv,
                cgroup,
                host_id,
                pass_fds=child_fds,
                stdout=ready_w if zygote else subprocess.DEVNULL,  # the placeholder's word
                stderr=err_w if zygote else subprocess.PIPE,
            )
            for fd in (seccomp_fd, info_w, block_r, machine_id_fd, boot_id_fd, ready_w):
                if fd >= 0:
                    os.close(fd)
            seccomp_fd = info_w = block_r = machine_id_fd = boot_id_fd = ready_w = -1
            child_pid = await self._read_child_pid(info_r, proc)
            self._map_ids(child_pid, host_id)
            os.write(block_w, b"1")
            if fork is not None:
                await self._wait_set_up(ready_r)
                fork.hand_over(child_pid, theirs, err_w)
            theirs.close()
            reader, writer = await asyncio.open_connection(sock=ours, limit=STREAM_LIMIT)
            if err_sock is not None:
                err_sock.shutdown(socket.SHUT_WR)
                output, _ = await asyncio.open_connection(sock=err_sock, limit=STREAM_LIMIT)
                err_sock = None
            else:
                assert proc.stderr is not None  # bwrap's and the agent's
                output = proc.stderr
        except BaseException as e:
            if proc is not None and proc.returncode is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
            await asyncio.to_thread(cgroup.destroy)
            await asyncio.to_thread(rwdisk.remove, rw)
            self._slots.release(slot)
            ours.close()
            if isinstance(e, OSError | TimeoutError | json.JSONDecodeError):
                raise BackendError(f"could not start the jail: {e}") from e
            raise
        finally:
            for fd in (
                *(seccomp_fd, info_w, block_r, info_r, block_w, machine_id_fd, boot_id_fd),
                *(ready_r, ready_w, err_w),
            ):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if err_sock is not None:
                err_sock.close()
            if fork is not None:
                fork.close()
            with contextlib.suppress(OSError):
                theirs.close()
        return JailSandbox(
            proc,
            cgroup,
            ours,
            reader,
            writer,
            release=lambda: self._slots.release(slot),
            rw=rw,
            output=output,
        )

    async def _wait_set_up(self, ready_r: int) -> None:
        """Until the placeholder says bwrap has set the jail up (zygote.HOLDER)."""
        said = await _read_until(ready_r, b"\n", "set the jail up")
        if not said:
            raise BackendError("bwrap stopped before it set the jail up")

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

    async def _read_child_pid(self, fd: int, proc: asyncio.subprocess.Process) -> int:
        """bwrap writes a JSON object with ``child-pid`` to the info fd once it has forked."""
        buf = await _read_until(fd, b"}", "report its child")
        if b"}" not in buf:
            err = b""
            if proc.stderr is not None:
                with contextlib.suppress(Exception):
                    err = await asyncio.wait_for(proc.stderr.read(4096), 2)
            raise BackendError(f"bwrap failed to start: {err.decode(errors='replace').strip()}")
        return int(json.loads(buf[: buf.index(b"}") + 1])["child-pid"])

    def _map_ids(self, child_pid: int, host_id: int) -> None:
        mapping = f"0 {host_id} {UID_RANGE}\n"
        with open(f"/proc/{child_pid}/uid_map", "w") as f:
            f.write(mapping)
        with open(f"/proc/{child_pid}/gid_map", "w") as f:
            f.write(mapping)
