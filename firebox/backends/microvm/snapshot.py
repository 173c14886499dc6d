"""Template snapshots: boot a template once, warm it, save it; every sandbox is a restore.

A snapshot is a directory under ``<image dir>/snapshots/<template>-<key>/``:

    mem            the template VM's RAM, written through its shared file mapping
    state          QEMU's device state (RAM excluded: migration with x-ignore-shared)
    rw.img         the writable disk as it was at the snapshot (each clone's overlay backs on it)
    snapshot.json  what it was made from; its presence means complete

The key hashes everything the saved state depends on: the root disk's image, the kernel and
initramfs (so the agent's code), QEMU's identity, the accelerator, and the VM's memory, vCPUs
and disk size. Any change makes a new key, so a stale snapshot is never restored.

The RAM file is never mapped by a clone directly: each clone privately maps a sealed memfd
copy (``load_ram``: the whole guest RAM, holes filled). A memfd sealed against writes can still
be opened read-write, which QEMU 7.2 insists on for a private mapping, while neither a
compromised QEMU nor anything else can change what the next clone restores.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox.backends.base import BackendError
from firebox.backends.microvm import qemu
from firebox.images._fs import resolve_in_tree
from firebox.images.cache import content_key
from firebox.settings import StartConfig

SNAPSHOT_VERSION = 2  # 2: the writable disk holds the image's home
MARKER = "snapshot.json"
F_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


@dataclass(frozen=True)
class SnapshotSpec:
    """What a snapshot is made from."""

    template: str
    root_disk: Path
    vmlinux: Path
    initramfs: Path
    qemu_identity: str
    accel: str
    memory_mb: int
    cpus: int
    disk_mb: int
    start: StartConfig | None = None  # a built template's start command, running when saved
    warm: bool = False  # its python context's warm imports done before it is saved

    @property
    def base(self) -> str:
        """What the saved state depends on but the VM's size: snapshots of the same template
        with another base can never be restored again (``stale``)."""
        return self._hash(with_size=False)

    @property
    def key(self) -> str:
        return self._hash(with_size=True)

    def _hash(self, with_size: bool) -> str:
        fields: dict[str, object] = {
            "version": SNAPSHOT_VERSION,
            "template": self.template,
            # the image entry's name carries its recipe hash; the files' own sizes and mtimes
            # catch a rebuilt disk or kernel at the same path
            "root_disk": _file_id(self.root_disk),
            "vmlinux": _file_id(self.vmlinux),
            "initramfs": self.initramfs.name,  # named by its content digest
            "qemu": self.qemu_identity,
            "accel": self.accel,
            "start": self.start.identity() if self.start else None,
        }
        if with_size:
            fields.update(memory_mb=self.memory_mb, cpus=self.cpus, disk_mb=self.disk_mb)
        return content_key(fields)

    @property
    def name(self) -> str:
        # a built template's name has a tag (``app:v2``): no colon in a path QEMU is given
        return f"{self.template.replace(':', '_')}-{self.key}"

    def vm(self, directory: Path, rw_disk: Path, mem_path: str, clone: bool) -> qemu.VmConfig:
        """A QEMU of this snapshot's shape, its sockets in ``directory``: the template VM that
        makes it (its RAM in a shared file, its own raw disk), or a ``clone`` restored from it
        (the RAM mapped copy-on-write, a qcow2 overlay, waiting for the saved state)."""
        return qemu.VmConfig(
            vmlinux=self.vmlinux,
            initramfs=self.initramfs,
            root_disk=self.root_disk,
            rw_disk=rw_disk,
            rw_format="qcow2" if clone else "raw",
            agent_socket=directory / "agent.sock",
            qmp_socket=directory / "qmp.sock",
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            accel=self.accel,
            mem_path=mem_path,
            share_ram=not clone,
            incoming=clone,
        )


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def snapshots_dir(image_root: Path) -> Path:
    return image_root / "snapshots"


def ready(image_root: Path, spec: SnapshotSpec) -> Path | None:
    entry = snapshots_dir(image_root) / spec.name
    try:
        marker = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(marker, dict) and marker.get("key") == spec.key else None


def _complete(entries: Iterable[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Each complete snapshot among ``entries``, with its record (locks, leases and
    unfinished ones have none)."""
    for entry in entries:
        try:
            marker = json.loads((entry / MARKER).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict):
            yield entry, marker


def _all(image_root: Path) -> Iterable[Path]:
    base = snapshots_dir(image_root)
    return base.iterdir() if base.is_dir() else ()


def stale(image_root: Path, spec: SnapshotSpec) -> list[Path]:
    """Complete snapshots of ``spec``'s template made from other pieces (an older agent,
    kernel, image or QEMU): none of them can be restored again."""
    named = snapshots_dir(image_root).glob(f"{spec.template.replace(':', '_')}-*")
    return [
        entry
        for entry, marker in _complete(named)
        if marker.get("template") == spec.template and marker.get("base") != spec.base
    ]


def orphans(image_root: Path) -> list[Path]:
    """Complete snapshots whose root disk is gone (its template's tree was removed)."""
    return [
        entry
        for entry, marker in _complete(_all(image_root))
        if not Path(str(marker.get("root_disk"))).exists()
    ]


def made_from(image_root: Path, entry: Path) -> list[Path]:
    """Complete snapshots whose root disk is in the image entry ``entry``."""
    return [
        snap
        for snap, marker in _complete(_all(image_root))
        if Path(str(marker.get("root_disk"))).parent == entry
    ]


def make_rw_disk(path: Path, size_mb: int, rootfs: Path | None = None) -> None:
    """The sandbox's writable disk: ext4 holding /home/user, /tmp and /root, with what the
    image's own /home/user and /root hold (a built template's files). Its size is the cap: a
    full disk is ENOSPC inside the guest, never more space taken on the host."""
    with tempfile.TemporaryDirectory() as skel_dir:
        skel = Path(skel_dir)
        (skel / "home").mkdir()
        (skel / "tmp").mkdir(mode=0o1777)
        os.chmod(skel / "tmp", 0o1777)
        for place, owner, mode in (("home/user", 1000, 0o755), ("root", 0, 0o700)):
            # links followed inside the image, never on the host (its /home may be a link)
            seed = resolve_in_tree(rootfs, place) if rootfs is not None else None
            if seed is not None and seed.is_dir() and not seed.is_symlink():
                # cp -a: owners, modes and links as they are; no symlink followed
                subprocess.run(
                    ["cp", "-a", "--", str(seed), str(skel / place)],
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
            else:
                (skel / place).mkdir(mode=mode)
                os.chown(skel / place, owner, owner)
        with open(path, "wb") as f:
            f.truncate(size_mb * 2**20)
        out = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "firebox-rw", "-d", str(skel), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise BackendError(f"mkfs.ext4 failed for the writable disk: {out.stderr.strip()}")


def seal_entry(tmp: Path, entry: Path, spec: SnapshotSpec) -> Path:
    """Make a finished snapshot root's and read-only, then move it into place."""
    for name in ("mem", "state", "rw.img"):
        os.chown(tmp / name, 0, 0)
        os.chmod(tmp / name, 0o444)
    record = {
        "key": spec.key,
        "base": spec.base,
        "template": spec.template,
        "memory_mb": spec.memory_mb,
        "cpus": spec.cpus,
        "disk_mb": spec.disk_mb,
        "accel": spec.accel,
        "root_disk": str(spec.root_disk),
        "initramfs": spec.initramfs.name,
    }
    (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o755)
    if entry.exists():
        shutil.rmtree(entry)
    os.rename(tmp, entry)
    return entry


def load_ram(entry: Path) -> int:
    """A sealed memfd holding the snapshot's RAM (holes kept as holes); the caller owns it."""
    fd = os.memfd_create(f"firebox-{entry.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(entry / "mem", "rb") as src:
            size = os.fstat(src.fileno()).st_size
            os.ftruncate(fd, size)
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
                os.lseek(fd, start, os.SEEK_SET)  # sendfile writes at the memfd's offset
                at = start
                while at < end:
                    sent = os.sendfile(fd, src.fileno(), at, end - at)
                    if sent <= 0:
                        raise BackendError(f"could not copy the snapshot RAM of {entry}")
                    at += sent
                offset = end
        # No holes: a clone's first touch of a hole would allocate a page *in the memfd*
        # (shmem fills holes on fault, private mapping or not), growing the shared copy with
        # every clone and charging it to whichever VM touched it first. Filled, a clone's
        # read maps the shared page and its write copies it into the clone's own memory.
        os.posix_fallocate(fd, 0, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock(image_root: Path, spec: SnapshotSpec) -> int:
    """An exclusive lock on building this snapshot (an fd to close to release it)."""
    base = snapshots_dir(image_root)
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd = os.open(base / f"{spec.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
