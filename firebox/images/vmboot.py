"""What a microVM boots: the kernel, its virtio modules, busybox, and the root disk image.

All of it comes from Debian packages through the host's own apt configuration:

- the kernel from ``linux-image-cloud-amd64`` (the package it depends on, fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x``; nothing under /boot is touched). Its
  bzImage payload is LZ4; the ELF ``vmlinux`` inside is extracted so QEMU boots it directly
  through PVH, skipping the decompressor (seconds under software emulation);
- the virtio modules the initramfs loads (the cloud kernel builds them as modules);
- ``busybox-static``, the initramfs's only program.

These are cached under the image directory as ``vmboot-<key>/``, keyed by the package
versions, like the root trees. The root disk is an ext4 image made from the very tree the jail
mounts (``mkfs.ext4 -d``, no loop mount), stored beside it as ``rootfs.ext4``: one recipe, two
outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import LOCK_TIMEOUT, content_key, image_root, locked
from .errors import ImageBuildError

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# Loaded in this order by the initramfs: the ring and bus first, then the devices.
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console")
BOOT_VERSION = 1  # bump when the extraction changes in a way the versions do not capture
LZ4_MAGIC = b"\x02\x21\x4c\x18"  # the kernel's LZ4 legacy frame
ELF_MAGIC = b"\x7fELF"
TOOL_TIMEOUT = 600.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BootPieces:
    """The cached files one VM boot needs besides its disks."""

    dir: Path
    vmlinux: Path
    busybox: Path
    modules: tuple[Path, ...]  # in load order
    kernel_version: str

    @property
    def key(self) -> str:
        return self.dir.name.rsplit("-", 1)[-1]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    try:
        out = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT
        )
    except FileNotFoundError:
        raise ImageBuildError(f"{cmd[0]} is not installed; run scripts/setup") from None
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"`{' '.join(cmd)}` took over {TOOL_TIMEOUT:.0f} s") from None
    if out.returncode != 0:
        raise ImageBuildError(
            f"`{' '.join(cmd)}` failed ({out.returncode}): {out.stderr.strip()[-2000:]}"
        )
    return out.stdout


def _candidate(package: str) -> str:
    """The version apt would install of ``package``, from the host's apt sources."""
    for line in _run(["apt-cache", "policy", package]).splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise ImageBuildError(
        f"apt knows no {package} package; run `apt-get update` (the microvm backend takes its "
        "guest kernel and busybox from the host's Debian sources)"
    )


def _kernel_package() -> str:
    for line in _run(["apt-cache", "depends", KERNEL_META]).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Depends:" and parts[1].startswith("linux-image-"):
            return parts[1]
    raise ImageBuildError(f"cannot tell which kernel {KERNEL_META} depends on; apt-get update")


def _recipe() -> dict[str, str | int]:
    kernel = _kernel_package()
    return {
        "kernel": kernel,
        "kernel_version": _candidate(kernel),
        "busybox_version": _candidate(BUSYBOX),
        "modules": ",".join(MODULES),
        "boot_version": BOOT_VERSION,
    }


def extract_vmlinux(bzimage: Path, target: Path) -> None:
    """Write the ELF kernel inside ``bzimage`` (LZ4-compressed, as Debian builds it)."""
    data = bzimage.read_bytes()
    at = data.find(LZ4_MAGIC)
    if at < 0:
        raise ImageBuildError(f"{bzimage} has no LZ4 payload; cannot extract an ELF vmlinux")
    # lz4 stops at the end of the legacy frames and warns about the trailer after them.
    proc = subprocess.run(
        ["lz4", "-dc"], input=data[at:], capture_output=True, timeout=TOOL_TIMEOUT
    )
    if not proc.stdout.startswith(ELF_MAGIC):
        raise ImageBuildError(
            f"decompressing {bzimage} gave no ELF image: {proc.stderr.decode(errors='replace')}"
        )
    target.write_bytes(proc.stdout)


def _find_entry(root: Path) -> BootPieces | None:
    try:
        info = json.loads((root / "boot.json").read_text())
    except (OSError, ValueError):
        return None
    modules = tuple(root / "modules" / f"{name}.ko" for name in MODULES)
    pieces = BootPieces(
        root, root / "vmlinux", root / "busybox", modules, str(info.get("kernel_release", ""))
    )
    files = (pieces.vmlinux, pieces.busybox, *modules)
    return pieces if all(f.is_file() for f in files) else None


def boot_pieces(progress: Progress | None = None, base: Path | None = None) -> BootPieces:
    """The kernel, modules and busybox for microVMs, fetched and extracted once."""
    say = progress or (lambda _m: None)
    base = base or image_root()
    recipe = _recipe()
    entry = base / f"vmboot-{content_key(recipe)}"
    if (found := _find_entry(entry)) is not None:
        return found
    if os.geteuid() != 0:
        raise ImageBuildError("fetching the microVM kernel needs root once; run as root")
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    with locked(base / f"{entry.name}.lock", LOCK_TIMEOUT, say):
        if (found := _find_entry(entry)) is not None:
            return found
        say(f"fetching the guest kernel {recipe['kernel']} and busybox")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=base))
        try:
            debs = tmp / "debs"
            debs.mkdir()
            # apt drops to its _apt user to download, which cannot write a root-only dir.
            _run(
                [
                    "apt-get",
                    "download",
                    "-o",
                    "APT::Sandbox::User=root",
                    f"{recipe['kernel']}={recipe['kernel_version']}",
                    f"{BUSYBOX}={recipe['busybox_version']}",
                ],
                cwd=debs,
            )
            unpacked = tmp / "unpacked"
            for deb in sorted(debs.glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
            vmlinuz = sorted((unpacked / "boot").glob("vmlinuz-*"))
            if not vmlinuz:
                raise ImageBuildError(f"{recipe['kernel']} holds no /boot/vmlinuz-*")
            release = vmlinuz[0].name.removeprefix("vmlinuz-")
            say("extracting vmlinux for direct (PVH) boot")
            extract_vmlinux(vmlinuz[0], tmp / "vmlinux")
            shutil.copyfile(unpacked / "bin" / "busybox", tmp / "busybox")
            os.chmod(tmp / "busybox", 0o755)
            (tmp / "modules").mkdir()
            tree = unpacked / "lib" / "modules" / release / "kernel"
            for name in MODULES:
                found_ko = list(tree.rglob(f"{name}.ko"))
                if not found_ko:
                    raise ImageBuildError(f"the kernel {release} has no module {name}.ko")
                shutil.copyfile(found_ko[0], tmp / "modules" / f"{name}.ko")
            shutil.rmtree(debs)
            shutil.rmtree(unpacked)
            info = {**recipe, "kernel_release": release}
            (tmp / "boot.json").write_text(json.dumps(info, indent=2) + "\n")
            for dirpath, _dirs, names in os.walk(tmp):
                os.chmod(dirpath, 0o755)
                for name in names:
                    path = os.path.join(dirpath, name)
                    os.chmod(path, 0o755 if name == "busybox" else 0o644)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        say(f"guest kernel {release} ready in {time.monotonic() - started:.0f} s")
    found = _find_entry(entry)
    assert found is not None
    return found


# -- the root disk ------------------------------------------------------------------------

DISK_NAME = "rootfs.ext4"
DISK_HEADROOM = 1.12  # ext4 metadata and inode tables on top of the files themselves
DISK_EXTRA_MB = 64


def _tree_bytes(tree: Path) -> int:
    out = _run(["du", "-s", "--block-size=1", "--one-file-system", str(tree)])
    return int(out.split()[0])


def root_disk(rootfs: Path, progress: Progress | None = None) -> Path:
    """The ext4 image of ``rootfs`` (an image cache entry's tree), made once beside it."""
    say = progress or (lambda _m: None)
    entry = rootfs.parent
    disk = entry / DISK_NAME
    if disk.is_file():
        return disk
    with locked(entry.parent / f"{entry.name}.lock", LOCK_TIMEOUT, say):
        if disk.is_file():
            return disk
        started = time.monotonic()
        size_mb = int(_tree_bytes(rootfs) * DISK_HEADROOM / 2**20) + DISK_EXTRA_MB
        say(f"making the microVM root disk ({size_mb} MB ext4) from {rootfs}")
        tmp = entry / f".{DISK_NAME}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            # No journal: the disk is only ever mounted read-only. No reserved blocks either.
            _run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-L",
                    "firebox-root",
                    "-O",
                    "^has_journal",
                    "-m",
                    "0",
                    "-d",
                    str(rootfs),
                    str(tmp),
                    f"{size_mb}M",
                ]
            )
            os.chmod(tmp, 0o644)  # read by each VM's unprivileged QEMU
            os.rename(tmp, disk)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        say(f"root disk ready in {time.monotonic() - started:.0f} s")
    return disk
