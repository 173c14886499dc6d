"""The files of cgroupfs, as every other cgroups module touches them: names, reads, writes,
making and removing directories. Tests replace ``mkdir``/``rmdir`` (and may wrap ``write``)
here to run the same code against a plain temporary tree."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")  # what a sandbox needs, in every version
# v1 hierarchies a sandbox also joins where the host mounts them, though no limit needs them:
# cpuacct counts its CPU time (v2 counts it in cpu.stat, with no controller of its own), and
# freezer pauses it (v2 has cgroup.freeze in every cgroup)
ACCOUNTING = ("cpuacct", "freezer")
CPU_PERIOD_US = 100_000
PARENT_ENV = "FIREBOX_CGROUP_PARENT"
DEFAULT_PARENT = "firebox"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class CgroupError(OSError):
    """A cgroup could not be created, changed or removed; the message says what to do.

    An OSError because every cause is a filesystem operation on cgroupfs, so callers that
    already handle OSError around process management handle this too.
    """

    def __str__(self) -> str:
        return str(self.strerror) if self.strerror else super().__str__()


def mkdir(path: Path) -> None:
    # The kernel fills a new cgroup directory with its interface files.
    os.mkdir(path)


def rmdir(path: Path) -> None:
    os.rmdir(path)  # allowed on cgroupfs despite the interface files; EBUSY while populated


def read(path: Path) -> str:
    return path.read_text()


def write(path: Path, value: object) -> None:
    # No O_CREAT: a missing interface file means a controller that isn't enabled, and creating
    # a plain file would hide that.
    data = str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except FileNotFoundError:
        controller = path.name.split(".")[0]
        raise CgroupError(
            errno.ENOENT,
            f"{path} does not exist: the {controller} controller is not enabled for this "
            "cgroup (see detect().reason)",
        ) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise CgroupError(e.errno, f"writing {data.decode()!r} to {path}: {e.strerror}") from e
    finally:
        os.close(fd)


def read_kv(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, pids.events, memory.oom_control)."""
    out = {}
    for line in read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def read_int(path: Path) -> int:
    return int(read(path).strip())


def check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"cgroup {what} {name!r} must be 1-128 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def is_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def parent_name(parent: str | None) -> str:
    """``parent`` (a path of names under each hierarchy's root), checked; by default
    ``$FIREBOX_CGROUP_PARENT`` or ``firebox``."""
    parent = parent or os.environ.get(PARENT_ENV) or DEFAULT_PARENT
    for part in parent.split("/"):
        check_name(part, "parent")
    return parent


def make(path: Path, exist_ok: bool = False) -> None:
    try:
        mkdir(path)
    except FileExistsError:
        if exist_ok:  # a shared parent, possibly made by a concurrent create()
            return
        raise CgroupError(
            errno.EEXIST,
            f"{path} already exists: a leftover of a crashed daemon? cleanup_stale() removes it",
        ) from None
    except OSError as e:
        raise CgroupError(e.errno, f"cannot create cgroup {path}: {e.strerror}") from e


def ensure_parents(root: Path, parent: str, enable: Callable[[Path], None] | None = None) -> Path:
    """Make ``root/parent`` level by level; ``enable`` (v2) is called on each level, the root
    first, to let its children use the controllers."""
    level = root
    if enable is not None:
        enable(level)
    for part in parent.split("/"):
        level = level / part
        if not level.is_dir():
            make(level, exist_ok=True)
        if enable is not None:
            enable(level)
    return level
