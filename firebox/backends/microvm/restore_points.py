"""The snapshots a microVM backend restores its sandboxes from, as it holds them: each made
once (a cold boot of its template, template.py, or found made by another process), leased
while this backend may restore from it (images/leases.py), its RAM in a sealed memfd, and an
empty overlay on its writable disk to copy for each sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from firebox.backends.base import BackendError
from firebox.backends.microvm import snapshot
from firebox.images import leases
from firebox.images.cache import image_root

log = logging.getLogger("firebox.microvm")

# boots the template cold and saves the snapshot (template.boot, bound to the backend)
BootTemplate = Callable[[snapshot.SnapshotSpec], Awaitable[Path]]


@dataclass(eq=False)
class RestorePoint:
    entry: Path  # the snapshot's directory
    spec: snapshot.SnapshotSpec | None  # None: a running sandbox's snapshot (saved.py)
    ram_fd: int  # a sealed memfd of its RAM, mapped copy-on-write by every clone
    blank: Path  # an empty qcow2 overlay on its rw.img: a copy of it is a sandbox's disk
    lease: int

    def close(self) -> None:
        """Every VM restored from it is gone: others may prune it now."""
        for fd in (self.ram_fd, self.lease):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.blank.unlink(missing_ok=True)


async def load(snap: snapshot.SnapshotSpec, vm_dirs: Path, boot: BootTemplate) -> RestorePoint:
    """``snap``, made now if no one has, leased to us, its RAM loaded."""
    root = image_root()
    while True:  # until it is ours to use: a prune elsewhere may take it meanwhile
        entry = snapshot.ready(root, snap) or await _made(snap, boot)
        lease = await asyncio.to_thread(
            leases.hold, entry, lambda _: snapshot.ready(root, snap) is not None
        )
        if lease is not None:
            break
    try:
        ram_fd = await asyncio.to_thread(snapshot.load_ram, entry)
        # an empty overlay on the snapshot's disk, copied for each sandbox (a copy of a small
        # file, where running qemu-img each time costs ~10 ms)
        vm_dirs.mkdir(mode=0o711, parents=True, exist_ok=True)
        blank = vm_dirs / f".blank-{snap.name}.qcow2"
        await run(
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
            "-b", str(entry / "rw.img"), str(blank),
        )  # fmt: skip
    except BaseException:
        os.close(lease)
        raise
    return RestorePoint(entry, snap, ram_fd, blank, lease)


async def _made(snap: snapshot.SnapshotSpec, boot: BootTemplate) -> Path:
    """The snapshot made now (a cold boot), or by another process while we waited."""
    root = image_root()
    lock_fd = await asyncio.to_thread(snapshot.lock, root, snap)
    try:
        entry = snapshot.ready(root, snap)
        if entry is None:
            log.warning("making the %s snapshot %s (a cold boot, once)", snap.template, snap.key)
            started = time.monotonic()
            entry = await boot(snap)
            log.warning("snapshot %s made in %.1f s", snap.name, time.monotonic() - started)
        return entry
    finally:
        os.close(lock_fd)


async def prune_stale(snap: snapshot.SnapshotSpec) -> None:
    """Remove ``snap``'s template's snapshots that nothing can restore any more and nobody
    holds (each is ~300 MB)."""
    stale = await asyncio.to_thread(snapshot.stale, image_root(), snap)
    removed = await asyncio.to_thread(leases.prune, stale)
    if removed:
        log.warning("removed snapshots no one can restore any more: %s", ", ".join(removed))


async def prune_made_from(entry: Path) -> None:
    """Remove the snapshots whose root disk lies in the image entry ``entry`` (a template's
    tree, deleted) that nobody holds."""
    made = await asyncio.to_thread(snapshot.made_from, image_root(), entry)
    removed = await asyncio.to_thread(leases.prune, made)
    if removed:
        log.warning("removed snapshots of a deleted template: %s", ", ".join(removed))


async def prune_orphans() -> list[str]:
    """Remove the snapshots whose root disk is gone and that nobody holds."""
    return await asyncio.to_thread(leases.prune, snapshot.orphans(image_root()))


async def run(*cmd: str, timeout: float = 30.0) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BackendError(f"{cmd[0]} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BackendError(f"{' '.join(cmd)} failed: {err.decode(errors='replace').strip()}")
