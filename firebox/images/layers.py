"""The layer cache of template builds, and the flattening of layers into a template's tree.

A layer is what one build step changed, in overlayfs's on-disk form (the upper directory of
the step's build sandbox, confine/overlay.py): new and changed files as they are, a deleted
path as a 0/0 character device (a whiteout), a directory whose lower contents are hidden with
``trusted.overlay.opaque`` set to ``y``. It is stored under the image root by a key that
hashes everything that produced it (its parent's key, the step, the contents of copied
files: server/templates/steps.py), so a step already made on this host, by any template that
shares the prefix, is found instead of run::

    layers/<key>/diff         the step's changes
    layers/<key>/layer.json   what made it, its size; its presence means "complete"
    layers/<key>.use          leases (leases.py): a template being built or kept holds them

Layers are immutable once complete. A template's tree is their flattening over the base
(``flatten``): a hard-link copy of the base, then each layer applied in order, every file a
hard link to the layer's own, so a template costs its directories and inodes, not its data.
Everything here runs as host root over trees written by sandbox code: no path is followed
through a symlink, and nothing in the trees is executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import leases
from ._fs import remove_tree, tree_size
from .cache import image_root
from .errors import ImageBuildError

MARKER = "layer.json"
COPY_DEADLINE = 600.0
OPAQUE = "trusted.overlay.opaque"


def root() -> Path:
    return image_root() / "layers"


def find(key: str) -> Path | None:
    """The diff of the complete layer ``key``, or None."""
    entry = root() / key
    return entry / "diff" if (entry / MARKER).is_file() else None


def info(key: str) -> dict[str, Any] | None:
    try:
        data = json.loads((root() / key / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _run(cmd: list[str], what: str) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=COPY_DEADLINE)
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{what} took over {COPY_DEADLINE:.0f} s") from None
    if out.returncode != 0:
        raise ImageBuildError(f"{what} failed: {out.stderr.strip()[-1000:]}")


def commit(key: str, upper: Path, record: dict[str, Any]) -> Path:
    """Store the upper directory ``upper`` as layer ``key`` (kept if another build stored it
    first: the same key is the same content); returns its diff."""
    if (found := find(key)) is not None:
        return found
    base = root()
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=base))
    try:
        tmp.chmod(0o755)
        # cp -a keeps owners, modes, times, hard links within the layer, xattrs (the opaque
        # marks, file capabilities) and the whiteouts, and never follows a symlink
        _run(["cp", "-a", "--", str(upper), str(tmp / "diff")], f"storing layer {key}")
        _defuse(tmp / "diff")
        size = tree_size(tmp / "diff")
        marker = {**record, "key": key, "size_bytes": size, "created": time.time()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(tmp, base / key)
        except OSError:
            if find(key) is None:  # not a concurrent commit of the same key
                raise
            remove_tree(tmp)
    except BaseException:
        if tmp.exists():
            remove_tree(tmp)
        raise
    found = find(key)
    assert found is not None
    return found


def _defuse(tree: Path) -> None:
    """No set-id bit and no file capability survives into a layer: they do nothing in a
    sandbox (no_new_privs), and a setuid-root file a build made, sitting in the image
    directory, could make any local user of the host root."""
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            if stat.S_ISREG(st.st_mode):
                with contextlib.suppress(OSError):  # none there (ENODATA)
                    os.removexattr(path, "security.capability", follow_symlinks=False)


def hold(key: str) -> int | None:
    """A lease on layer ``key`` for as long as the descriptor stays open (leases.py)."""
    return leases.hold(root() / key, lambda entry: (entry / MARKER).is_file())


def prune(keep: Iterable[str]) -> list[str]:
    """Remove the layers not in ``keep`` that nobody holds; their keys."""
    wanted = set(keep)
    base = root()
    stale = [
        entry
        for entry in (base.iterdir() if base.is_dir() else ())
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in wanted
    ]
    return leases.prune(stale, remove_tree)


# -- flattening -------------------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _clear(directory: str) -> None:
    for name in os.listdir(directory):
        _remove(os.path.join(directory, name))


def _set_meta(path: str, st: os.stat_result) -> None:
    os.lchown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _apply(diff: Path, target: Path) -> None:
    """Apply one layer onto ``target`` as overlayfs would show it. Walking top-down, every
    directory of ``target`` we descend into was made (or checked to be a real directory) here
    first, so no later write goes through a symlink the layers planted."""
    top = str(diff)
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        into = os.path.normpath(os.path.join(target, rel))
        for name in [*dirnames, *filenames]:
            src = os.path.join(dirpath, name)
            dst = os.path.join(into, name)
            st = os.lstat(src)
            if _is_whiteout(st):
                _remove(dst)
            elif stat.S_ISDIR(st.st_mode):
                try:
                    old = os.lstat(dst)
                    if not stat.S_ISDIR(old.st_mode):
                        os.unlink(dst)
                        os.mkdir(dst)
                    elif _opaque(src):
                        _clear(dst)
                except FileNotFoundError:
                    os.mkdir(dst)
                _set_meta(dst, st)
            else:
                _remove(dst)
                if stat.S_ISREG(st.st_mode):
                    os.link(src, dst, follow_symlinks=False)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                    _set_meta(dst, st)
                elif stat.S_ISFIFO(st.st_mode):
                    os.mkfifo(dst)
                    _set_meta(dst, st)
                # sockets and device nodes: a build sandbox cannot make devices, and a socket
                # file is nothing without its process
        # directory times change as entries are added: set them again once it is complete
        if rel != ".":
            _set_meta(into, os.lstat(dirpath))


def flatten(base: Path, diffs: list[Path], target: Path, progress: Callable[[str], None]) -> None:
    """Fill the empty directory ``target`` with ``base`` and ``diffs`` applied in order."""
    started = time.monotonic()
    # cp -al: the base's files hard-linked, its directories made anew
    _run(["cp", "-a", "-l", "--", f"{base}/.", str(target)], "linking the base tree")
    for diff in diffs:
        _apply(diff, target)
    progress(f"flattened {len(diffs)} layer(s) in {time.monotonic() - started:.1f} s")
