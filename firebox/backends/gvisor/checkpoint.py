"""Template checkpoints: a template's sandbox booted once, warmed, and checkpointed with
``runsc checkpoint``; sandboxes of that shape are then ``runsc restore``s of it.

Under gVisor a python context's first start is what costs: IPython and the data stack read
thousands of files through the sentry (3-5 s of imports here, against 0.8 s natively). A
restore brings the agent back with its fork server and its python context already warm.

A checkpoint is a directory under ``<image dir>/gvisor-checkpoints/<template>-<key>/``:

    checkpoint.img …   what runsc wrote (the sentry's memory and kernel state)
    disk/              the template sandbox's writable places as they were (jail/rwdisk.py's
                       save): each restored sandbox's disk starts as this, so every file the
                       checkpointed processes hold is where they left it
    point.json         what it was made from; its presence means complete

The key hashes what the saved state depends on: the image tree, the agent's code, runsc's
version and platform, and the sandbox's memory and process limits (the sentry sizes itself at
boot). A sandbox of any other shape starts cold.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from firebox.images.cache import image_root

VERSION = 4  # 2: uncompressed; 3: without zero pages; 4: the CPU limit in the agent's env
MARKER = "point.json"
DISK = "disk"


@dataclass(frozen=True)
class Shape:
    """What a checkpoint is made from."""

    template: str
    rootfs: Path
    agent_lib: Path  # its name is the digest of the agent's code (agent_files.stage)
    runsc: str  # version and platform
    memory_mb: int
    processes: int
    cpu_count: float = 1.0  # the agent's thread pools are sized by it (its environment)

    @property
    def key(self) -> str:
        st = self.rootfs.stat()
        parts = [
            str(VERSION),
            str(self.rootfs.resolve()),
            f"{st.st_ino}:{st.st_mtime_ns}",
            self.agent_lib.name,
            self.runsc,
            str(self.memory_mb),
            str(self.processes),
            f"{self.cpu_count:g}",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return f"{self.template}-{self.key}"


def root() -> Path:
    return image_root() / "gvisor-checkpoints"


def ready(shape: Shape) -> Path | None:
    """The complete checkpoint of ``shape``, or None."""
    entry = root() / shape.name
    return entry if (entry / MARKER).is_file() else None


def workdir(shape: Shape) -> Path:
    """A fresh directory to make ``shape``'s checkpoint in (``seal`` finishes it)."""
    root().mkdir(mode=0o711, parents=True, exist_ok=True)
    tmp = root() / f".{shape.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o711)
    return tmp


def seal(tmp: Path, shape: Shape) -> Path:
    """Mark ``tmp`` complete and move it into place (a concurrent maker's wins)."""
    record = {
        "template": shape.template,
        "rootfs": str(shape.rootfs),
        "runsc": shape.runsc,
        "shape": [shape.memory_mb, shape.processes, shape.cpu_count],
    }
    (tmp / MARKER).write_text(json.dumps(record))
    entry = root() / shape.name
    try:
        tmp.rename(entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def prune(rootfs: Path | None = None, keep: Path | None = None) -> int:
    """Remove checkpoints made of trees that are gone, or of ``rootfs`` (being deleted), and
    those ``keep`` (just made) replaces: of its tree and shape, made by an older agent or
    runsc. A sandbox restored from one no longer needs it (its memory was read whole)."""
    removed = 0
    kept = _record(keep) if keep is not None else None
    for entry in root().iterdir() if root().is_dir() else ():
        if entry.name.startswith(".") or entry == keep:
            continue
        record = _record(entry)
        if record is None:
            continue  # being made
        made_of = Path(record["rootfs"])
        replaced = kept is not None and all(
            record.get(k) == kept.get(k) for k in ("template", "rootfs", "shape")
        )
        if not made_of.is_dir() or made_of == rootfs or replaced:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _record(entry: Path) -> dict | None:
    try:
        record = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "rootfs" in record else None
