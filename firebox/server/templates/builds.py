"""Template builds: each a task of the daemon with a status, a log that clients follow, a
deadline, and cancel.

A build resolves its base (bases.py), then takes its steps in order. A step that makes a layer
is found in the layer cache by its key, or run in a build sandbox of its own (runner.py) and
stored. The layers are then flattened into the template's tree, the template is started once
with its start command to check that it becomes ready (start.py), and its names and tags are
recorded (catalog.py). A failed step stops the build with a reason that names the step, its
command, its exit code and the end of its output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firebox.images import layers
from firebox.images._fs import remove_tree, tree_size
from firebox.images.cache import LOCK_TIMEOUT, content_key, locked
from firebox.server.errors import ApiError
from firebox.server.templates.catalog import StartConfig, TemplateRecord
from firebox.server.templates.distribute import trees_root

TERMINAL = ("ready", "error", "cancelled")


@dataclass(frozen=True)
class LogEntry:
    offset: int
    timestamp: str
    level: str
    step: int | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"type": "log", **self.__dict__}


@dataclass
class Build:
    """One build's state, as its clients see it."""

    id: str
    owner: str
    name: str
    tags: tuple[str, ...]
    status: str = "waiting"
    reason: dict[str, Any] | None = None
    entries: list[LogEntry] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def log(self, message: str, level: str = "info", step: int | None = None) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        self.entries.append(LogEntry(len(self.entries), stamp, level, step, message))
        self._wake()

    def finish(self, status: str, reason: dict[str, Any] | None = None) -> None:
        self.status, self.reason, self.finished_at = status, reason, time.time()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_json(self, logs_from: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "build_id": self.id,
            "template_id": self.id,
            "name": self.name,
            "tags": list(self.tags),
            "status": self.status,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if logs_from is not None:
            body["log_entries"] = [e.as_json() for e in self.entries[logs_from:]]
        return body

    async def follow(self, offset: int, wait: float) -> AsyncIterator[dict[str, Any]]:
        """Log entries from ``offset`` as they come, then the final status; gives up waiting
        for more after ``wait`` seconds without news (the client asks again)."""
        while True:
            changed = self._changed
            while offset < len(self.entries):
                yield self.entries[offset].as_json()
                offset += 1
            if self.done:
                yield {"type": "status", "status": self.status, "reason": self.reason}
                return
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                return


def failure(message: str, step: int | None = None, **more: Any) -> dict[str, Any]:
    return {"message": message, "step": step, **more}


class BuildFailed(Exception):
    def __init__(self, reason: dict[str, Any]) -> None:
        super().__init__(reason["message"])
        self.reason = reason


def tree_key(base_key: str, layer_keys: list[str]) -> str:
    """A flattened tree is named by what it is made of: builds that end in the same layers
    (a rebuild with every step cached, two names for one recipe) share it."""
    return "tree-" + content_key([base_key, layer_keys], 20)


def write_tree(
    base: Path, diffs: list[Path], key: str, record: dict[str, Any], progress: Any
) -> tuple[Path, int]:
    """The flattened tree ``key`` (``diffs`` over ``base``), made unless it exists; its
    rootfs and size. An image.json beside it, as image entries have, lets a microVM's root
    disk be made there too."""
    final = trees_root() / key
    final.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # a pull of the same tree from the template registry (distribute.py) takes this lock too
    with locked(final.parent / f"{key}.lock", LOCK_TIMEOUT, progress):
        if (final / "image.json").is_file():
            progress("the template's tree is already made (every step was cached)")
            size = int(json.loads((final / "image.json").read_text())["size_bytes"])
            return final / "rootfs", size
        return final / "rootfs", _flatten_into(final, base, diffs, key, record, progress)


def _flatten_into(
    final: Path, base: Path, diffs: list[Path], key: str, record: dict[str, Any], progress: Any
) -> int:
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=final.parent))
    try:
        tmp.chmod(0o755)
        (tmp / "rootfs").mkdir(mode=0o755)
        layers.flatten(base, diffs, tmp / "rootfs", progress)
        size = tree_size(tmp / "rootfs")
        marker = {"format": 1, "name": key, "key": key, "size_bytes": size, **record}
        (tmp / "image.json").write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "image.json").is_file():
                raise
            remove_tree(tmp)  # another build made the same tree meanwhile
    except BaseException:
        with contextlib.suppress(Exception):
            remove_tree(tmp)
        raise
    return size


def remove_entry(entry: Path) -> None:
    """Remove a build's tree (its directory under templates/, with the root disk a microVM
    made beside it)."""
    if entry.parent == trees_root():  # never anything else
        remove_tree(entry)


def new_build_id() -> str:
    return "bld_" + secrets.token_hex(8)


def new_build(owner: str, name: str, tags: tuple[str, ...], build_id: str | None = None) -> Build:
    return Build(build_id or new_build_id(), owner, name, tags)


def record_for(
    build: Build,
    rootfs: Path,
    base: str,
    base_tree: Path,
    layer_keys: list[str],
    start: StartConfig,
    steps: int,
    size: int,
    pool_size: int | None,
) -> TemplateRecord:
    return TemplateRecord(
        build_id=build.id,
        owner=build.owner,
        name=build.name,
        tags=build.tags,
        rootfs=str(rootfs),
        base=base,
        base_tree=str(base_tree),
        layers=tuple(layer_keys),
        start=start,
        steps=steps,
        size_bytes=size,
        build_seconds=round(time.time() - build.started_at, 1),
        built_at=time.time(),
        pool_size=pool_size,
    )


def no_such_build(build_id: str) -> ApiError:
    return ApiError(
        "not_found", f"no build {build_id} for this key (builds are kept until the daemon stops)"
    )
