"""File-system helpers for half-built trees: find mounts, remove safely, measure size."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import ImageBuildError

_OCTAL = re.compile(r"\\([0-7]{3})")


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
