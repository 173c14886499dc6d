"""QEMU for microVMs: the command line, and a small QMP client to drive snapshots.

One command line for every VM: ``-M microvm`` with no default devices, no network device, the
root disk read-only, the sandbox's writable disk, one virtio-serial port for the agent, the
serial console on stdout (kept for error messages), and QEMU's own seccomp sandbox with
spawning, privilege changes and resource-control syscalls denied.

Guest RAM is a file mapping: the template VM maps its RAM file shared (so a migration with
``x-ignore-shared`` leaves the RAM in the file and saves only device state, in ~10 ms), and a
restored VM maps the template's RAM privately: copy-on-write and lazy, so a clone costs only
the pages it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from firebox.backends.adopted import HeldProcess
from firebox.backends.base import BackendError

T = TypeVar("T")

QEMU = "qemu-system-x86_64"
QMP_DEADLINE = 10.0


def qemu_binary() -> str | None:
    return shutil.which(QEMU)


@functools.cache  # asked by the accelerator probe and by every snapshot: run it once
def qemu_identity(binary: str) -> str:
    """What changes when QEMU does (a snapshot must be made again): version, size, mtime."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    st = os.stat(binary)
    ident = f"{out.stdout.strip()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def host_tsc_khz() -> int:
    """The host's TSC rate, which a TCG guest's TSC runs at. Without it on the kernel command
    line, most guests hung after 'Marking TSC unstable' here (calibration under emulation)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class VmConfig:
    """Everything that shapes one QEMU process."""

    vmlinux: Path
    initramfs: Path
    root_disk: Path
    rw_disk: Path
    rw_format: str  # "raw" (a template's own disk) or "qcow2" (a clone's overlay)
    agent_socket: Path
    qmp_socket: Path
    memory_mb: int
    cpus: int
    accel: str  # "kvm" | "tcg"
    # the RAM file (template), /proc/self/fd/N of the template's (clone), or "" (a memfd of its
    # own: a paused VM woken from its saved state)
    mem_path: str
    share_ram: bool  # True for a template, False (copy-on-write) for a clone
    incoming: bool = False  # wait for a snapshot to be loaded over QMP
    probe: bool = False  # boot only to the initramfs marker (KVM probing)

    def as_dict(self) -> dict[str, Any]:
        """For a paused VM's record (a restarted daemon wakes it from this)."""
        return {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VmConfig:
        paths = {f.name for f in dataclasses.fields(cls) if f.type in ("Path", Path)}
        fields: dict[str, Any] = {k: Path(v) if k in paths else v for k, v in d.items()}
        return cls(**fields)

    def boot_files(self) -> list[Path]:
        """What QEMU reads to boot (a restore boots nothing: its RAM is the snapshot's)."""
        return [] if self.incoming else [self.vmlinux, self.initramfs]


KERNEL_ARGS = (
    "console=ttyS0",
    "quiet",
    "panic=-1",  # a panic reboots at once, and -no-reboot turns that into QEMU exiting
    "reboot=t",
    "cryptomgr.notests",
    "nokaslr",  # clones share one layout anyway: they are restored from one snapshot
    "audit=0",
    # Each VM holds one tenant's code only; the guest kernel has no other tenant's secrets to
    # guard from its own user space, and under TCG speculation is not even emulated.
    "mitigations=off",
    "pci=off",  # microvm has no PCI bus; skip the probe and its error
    # No address-space randomization for the guest's processes. Under TCG, translated code is
    # found by virtual address: with ASLR every new process is code never seen before, and a
    # `commands.run("true")` round trip took 67 ms instead of 28. What ASLR would protect here
    # is one tenant's processes from that same tenant's code, already running as it pleases;
    # the host's own ASLR (QEMU's) is untouched.
    "norandmaps",
)


# The CPU a TCG guest sees. qemu64 (the default) lacks x86-64-v2 (SSSE3, SSE4.2, POPCNT): code
# in the image that assumes them (matplotlib's stack) died of SIGILL. "max" works but offers
# AVX2 and more, which glibc and NumPy then pick and TCG runs slower: Nehalem (x86-64-v2)
# restored to a first result ~40 ms sooner here. Wheels built for x86-64-v3 need "max".
TCG_CPU = "Nehalem"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,tb-size=64", "-cpu", TCG_CPU]


def machine_identity(accel: str) -> str:
    """The parts of the command line a snapshot's saved state depends on."""
    return " ".join([*accel_args(accel), *KERNEL_ARGS])


def argv(binary: str, vm: VmConfig) -> list[str]:
    kernel_args = list(KERNEL_ARGS)
    if vm.accel == "tcg" and (khz := host_tsc_khz()):
        kernel_args.append(f"tsc_early_khz={khz}")
    if vm.probe:
        kernel_args.append("firebox.probe=1")
    accel = accel_args(vm.accel)
    share = "on" if vm.share_ram else "off"
    # a woken paused VM's RAM is all in its saved state: anonymous memory of its own
    ram = (
        f"memory-backend-file,id=ram,size={vm.memory_mb}M,mem-path={vm.mem_path},share={share}"
        if vm.mem_path
        else f"memory-backend-memfd,id=ram,size={vm.memory_mb}M"
    )
    cmd = [
        binary,
        "-M",
        "microvm,x-option-roms=off,memory-backend=ram",
        *accel,
        "-m",
        f"{vm.memory_mb}M",
        "-smp",
        str(vm.cpus),
        "-object",
        ram,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    if not vm.incoming:
        # A restore's RAM comes from the snapshot: loading the kernel would only copy 30 MB
        # into it at reset, every page of it a copy-on-write fault of the clone's own.
        cmd += ["-kernel", str(vm.vmlinux), "-initrd", str(vm.initramfs)]
        cmd += ["-append", " ".join(kernel_args)]
    cmd += [
        "-serial",
        "stdio",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
    ]
    if not vm.probe:
        cmd += [
            "-drive",
            f"id=root,file={vm.root_disk},format=raw,if=none,readonly=on",
            "-device",
            "virtio-blk-device,drive=root",
            "-drive",
            # O_DIRECT: the guest caches for itself; the host's page cache would only double
            # it, charged to the VM's cgroup (where dirty pages can end in an OOM kill).
            f"id=rw,file={vm.rw_disk},format={vm.rw_format},if=none,discard=unmap,cache=none",
            "-device",
            "virtio-blk-device,drive=rw",
            "-device",
            "virtio-serial-device",
            "-chardev",
            f"socket,id=agent,path={vm.agent_socket},server=on,wait=off",
            "-device",
            "virtserialport,chardev=agent,name=firebox.agent",
            "-qmp",
            f"unix:{vm.qmp_socket},server=on,wait=off",
        ]
    if vm.incoming:
        cmd += ["-incoming", "defer"]
    return cmd


async def load_state(
    qmp: Qmp,
    vm: VmConfig,
    state_fd: int,
    proc: HeldProcess,
    ignore_shared: bool,
    deadline: float,
    attach: Callable[[socket.socket], Awaitable[T]],
) -> T:
    """Load a saved state into a QEMU started with ``-incoming defer``; returns what
    ``attach`` makes of the connection to the agent's port (the daemon's channel, through the
    sandbox's supervisor). ``ignore_shared``: the state holds devices only, the RAM is the
    mapped file's (a template's snapshot); else the RAM is in the state too (a paused VM's)."""
    await qmp.execute(
        "migrate-set-capabilities",
        capabilities=[{"capability": "x-ignore-shared", "state": ignore_shared}],
    )
    # Connected before the state loads: the guest saw its port's host side connected when the
    # state was saved, and must find it so (a port with no host reads as end of file).
    channel = await attach(await connect_raw(vm.agent_socket, deadline, proc))
    await qmp.send_fd("state", state_fd)
    await qmp.execute("migrate-incoming", uri="fd:state")
    await qmp.wait_migration(deadline)
    return channel


async def save_state(qmp: Qmp, state_fd: int, deadline: float) -> None:
    """Stop the guest and write all of it (RAM, devices) to ``state_fd``; the disks are
    flushed as the migration completes. The guest stays stopped."""
    await qmp.execute("stop")
    await migrate_out(qmp, state_fd, ignore_shared=False, deadline=deadline)


async def migrate_out(qmp: Qmp, state_fd: int, ignore_shared: bool, deadline: float) -> None:
    """Migrate the VM to ``state_fd``: its devices, and its RAM unless ``ignore_shared`` (the
    RAM is a shared file, saved as it is: a template's snapshot)."""
    await qmp.execute(
        "migrate-set-capabilities",
        capabilities=[{"capability": "x-ignore-shared", "state": ignore_shared}],
    )
    await qmp.send_fd("out", state_fd)
    await qmp.execute("migrate", uri="fd:out")
    await qmp.wait_migration(deadline)


class QmpError(BackendError):
    pass


class Qmp:
    """A QMP connection: commands in order, each with a deadline; events are skipped."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def connect(cls, path: Path, deadline: float, proc: HeldProcess | None = None) -> Qmp:
        reader, writer = await connect_unix(path, deadline, proc=proc)
        qmp = cls(reader, writer)
        await qmp._read_reply(deadline)  # the greeting
        await qmp.execute("qmp_capabilities")
        return qmp

    async def execute(self, command: str, timeout: float = QMP_DEADLINE, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._writer.write(json.dumps(msg).encode() + b"\n")
        await self._writer.drain()
        reply = await self._read_reply(timeout)
        if "error" in reply:
            raise QmpError(f"QEMU refused {command}: {reply['error'].get('desc', reply)}")
        return reply.get("return")

    async def send_fd(self, name: str, fd: int, timeout: float = QMP_DEADLINE) -> None:
        """Hand QEMU a file descriptor (``getfd``, the fd riding along as SCM_RIGHTS), to be
        named in a later command (``fd:<name>``)."""
        request = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode()
        transport_sock = self._writer.get_extra_info("socket")
        # a duplicate of the connection for one sendmsg; the stream is idle meanwhile
        with socket.socket(fileno=os.dup(transport_sock.fileno())) as raw:
            raw.setblocking(True)
            socket.send_fds(raw, [request + b"\n"], [fd])
        reply = await self._read_reply(timeout)
        if "error" in reply:
            raise QmpError(f"QEMU refused the file descriptor: {reply['error'].get('desc')}")

    async def _read_reply(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                line = await self._reader.readline()
                if not line:
                    raise QmpError("QEMU closed its monitor (it exited)")
                reply = json.loads(line)
                if "event" not in reply:
                    return dict(reply)

    async def wait_migration(self, timeout: float) -> None:
        """Poll until the migration (either direction) has completed."""
        async with asyncio.timeout(timeout):
            while True:
                info = await self.execute("query-migrate")
                status = (info or {}).get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise QmpError(f"the snapshot migration {status}: {info.get('error-desc', '')}")
                await asyncio.sleep(0.002)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


async def connect_raw(path: Path, deadline: float, proc: HeldProcess) -> socket.socket:
    """A plain socket connected to a socket QEMU is about to create (``connect_unix``), to
    hand to a supervisor."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(deadline):
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(path))
                sock.setblocking(True)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if proc.returncode is not None:
                    raise BackendError(
                        f"QEMU exited ({proc.returncode}) before it started"
                    ) from None
                await asyncio.sleep(0.002)


async def connect_unix(
    path: Path,
    deadline: float,
    limit: int = 2**16,
    proc: HeldProcess | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a socket QEMU is about to create: retried until it appears, or until
    ``proc`` (QEMU, or the jail around it) has exited and never will."""
    async with asyncio.timeout(deadline):
        while True:
            try:
                return await asyncio.open_unix_connection(str(path), limit=limit)
            except (FileNotFoundError, ConnectionRefusedError):
                if proc is not None and proc.returncode is not None:
                    raise BackendError(
                        f"QEMU exited ({proc.returncode}) before it started"
                    ) from None
                await asyncio.sleep(0.002)
