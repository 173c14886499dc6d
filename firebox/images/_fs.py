"""File-system helpers for half-built trees: find mounts, remove safely, measure size, and look
paths up inside a tree as its own root would."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path, PurePosixPath

from .errors import ImageBuildError

_OCTAL = re.compile(r"\\([0-7]{3})")
MAX_LINKS = 40  # as the kernel's ELOOP limit


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``path``, deepest first (the order to unmount them)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    top = os.path.realpath(path)
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point == top or point.startswith(top + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a half-built root tree, unmounting anything a killed debootstrap left behind.

    debootstrap mounts proc and sysfs inside the target and, in LXC, bind-mounts the host's
    /dev; removing the tree with those still mounted would delete host device nodes. So we
    unmount first and refuse to delete if anything is still mounted.
    """
    if not path.exists():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    left = mounts_under(path)
    if left:
        raise ImageBuildError(
            f"not deleting {path}: still mounted at {', '.join(left)}; unmount these "
            "(umount --lazy) and remove the directory by hand"
        )
    shutil.rmtree(path)


def tree_size(path: Path) -> int:
    """Bytes on disk used by a tree (hard-linked files counted once, mounts not crossed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    top_dev = path.lstat().st_dev
    for dirpath, dirnames, filenames in os.walk(path):
        for name in list(dirnames) + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_dev != top_dev:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == top_dev]
    return total


def resolve_in_tree(root: Path, rel: str, *, follow_last: bool = True) -> Path:
    """``root/rel`` with every symlink on the way followed *inside* ``root``, as the sandbox,
    whose ``/`` the tree is, would follow it: an absolute target starts again at ``root`` and
    ``..`` stops at it. Never resolved on the host, where an absolute link would point at the
    host's own files. The result has no symlink in it but (unless ``follow_last``) the last
    component; the part from the first missing component on is kept as written.
    """
    todo = [part for part in reversed(PurePosixPath(rel).parts) if part != "/"]
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop()
        if name == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, name)
        if todo or follow_last:
            try:
                is_link = stat.S_ISLNK(os.lstat(here).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                is_link = False  # missing: nothing further can be a link either
            if is_link:
                links += 1
                if links > MAX_LINKS:
                    raise ImageBuildError(f"too many levels of symbolic links under {here}")
                target = os.readlink(here)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed([p for p in PurePosixPath(target).parts if p != "/"]))
                continue
        done.append(name)
    return root.joinpath(*done)
