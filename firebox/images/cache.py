"""Content-addressed cache of built root trees.

Layout under the image root (``$FIREBOX_IMAGE_DIR``, default ``/var/lib/firebox/images``)::

    <template>-<key>/rootfs       the tree handed to the sandbox backends
    <template>-<key>/image.json   recipe, build time and size; its presence means "complete"
    <template>-<key>/build.log    full output of the build
    <template>-<key>.lock         flock(2) lock serialising builders of that key
    <template>-<key>.build.log    log of the latest failed attempt (kept for debugging)
    .<template>-<key>.tmp-*       a build in progress
    oci-<key>/…                   the same for a base pulled from a registry (oci.py), keyed
                                  by its digest, with oci.json beside the rootfs

A build happens in a temporary directory beside the final one; ``image.json`` is written into
it last and the directory is then renamed into place, so an interrupted build never looks
complete. The key is a hash of everything that determines the tree, so a changed recipe simply
builds a new directory and readers switch over when it is complete.

Older versions of a template (other keys), and trees moved aside by ``force``, are left on
disk: a running sandbox may still have them mounted. Pruning them (once no sandbox uses them)
is a separate, not yet written, maintenance step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ._fs import remove_tree, tree_size
from .errors import ImageBuildError

IMAGE_DIR_ENV = "FIREBOX_IMAGE_DIR"
DEFAULT_IMAGE_DIR = Path("/var/lib/firebox/images")
LOCK_TIMEOUT = 30 * 60.0
MARKER = "image.json"

Progress = Callable[[str], None]
# builder(rootfs_target, log_path, progress): fills rootfs_target, writes its output to log_path.
Builder = Callable[[Path, Path, Progress], None]


def content_key(obj: object, length: int = 16) -> str:
    """The name of what ``obj`` (JSON data) describes: a hash of its canonical JSON. Every
    cache key (image recipes, OCI bases, snapshots, layers, trees) is made here."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a built tree; its hash names the cache entry."""

    template: str
    codename: str
    mirror: str
    variant: str
    packages: tuple[str, ...]
    recipe_version: int
    post_hash: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return content_key(self.as_dict())

    @property
    def name(self) -> str:
        return f"{self.template}-{self.key}"


class CacheKey(Protocol):
    """What names an entry: a ``Recipe``, or another kind of tree's key (an OCI base's)."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


def image_root(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(IMAGE_DIR_ENV) or DEFAULT_IMAGE_DIR)


def read_marker(entry: Path) -> dict[str, Any] | None:
    """The completion record of a cache entry, or None if the entry is not complete."""
    try:
        data = json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ready_rootfs(recipe: CacheKey, root: Path) -> Path | None:
    """The rootfs of a complete entry for exactly this recipe, else None."""
    entry = root / recipe.name
    marker = read_marker(entry)
    if marker is None or marker.get("key") != recipe.key:
        return None
    rootfs = entry / "rootfs"
    return rootfs if rootfs.is_dir() else None


@contextlib.contextmanager
def locked(path: Path, timeout: float, progress: Progress) -> Iterator[None]:
    # flock has no timeout of its own, so poll a non-blocking attempt until the deadline.
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    progress(f"waiting for another build of this image (pid {holder})")
                    told = True
                if time.monotonic() >= deadline:
                    raise ImageBuildError(
                        f"another process has held {path} for over {timeout / 60:.0f} min; "
                        "if no build is running any more, that process is stuck: stop it and "
                        "retry"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))  # only informational: lets a waiter say who it waits for
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_marker(entry: Path, recipe: CacheKey, started: float) -> None:
    record = {
        "format": 1,
        "name": recipe.name,
        "key": recipe.key,
        "recipe": recipe.as_dict(),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.time() - started, 1),
        "size_bytes": tree_size(entry / "rootfs"),
    }
    with open(entry / MARKER, "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _move_aside(entry: Path) -> None:
    # Never delete a tree that was complete: a sandbox may be running on it.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    entry.rename(entry.with_name(f".{entry.name}.replaced-{stamp}-{os.getpid()}"))


def build_cached(
    recipe: CacheKey,
    builder: Builder,
    *,
    root: Path,
    progress: Progress,
    force: bool = False,
    lock_timeout: float = LOCK_TIMEOUT,
) -> Path:
    """Return the rootfs for ``recipe``, building it with ``builder`` unless already cached."""
    if not force and (ready := ready_rootfs(recipe, root)):
        return ready
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError(
            f"cannot create the image directory {root}: {exc}; run as root or set "
            f"{IMAGE_DIR_ENV} to a writable directory"
        ) from exc
    entry = root / recipe.name
    with locked(root / f"{recipe.name}.lock", lock_timeout, progress):
        # Another builder may have finished while we waited for the lock.
        if not force and (ready := ready_rootfs(recipe, root)):
            progress(f"image {recipe.name} is ready")
            return ready
        # We hold the lock, so temp dirs of this key are leftovers of killed builds.
        for stale in root.glob(f".{recipe.name}.tmp-*"):
            progress(f"removing unfinished build {stale.name}")
            remove_tree(stale)
        started = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes 0700; sandboxes run as an unprivileged uid
        log_path = root / f"{recipe.name}.build.log"
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir(mode=0o755)
            builder(rootfs, log_path, progress)
            progress("recording image metadata")
            os.replace(log_path, tmp / "build.log")
            _write_marker(tmp, recipe, started)
            if entry.exists():
                _move_aside(entry)  # forced rebuild, or a damaged entry without a marker
            os.rename(tmp, entry)
            dir_fd = os.open(root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # make the rename durable before reporting success
            finally:
                os.close(dir_fd)
        except BaseException:
            try:
                remove_tree(tmp)
            except (ImageBuildError, OSError) as exc:
                progress(f"could not clean up {tmp}: {exc}")
            raise
    progress(f"image {recipe.name} built in {time.time() - started:.0f}s")
    return entry / "rootfs"
