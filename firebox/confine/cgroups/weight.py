"""A sandbox's share of the CPU and disk when it competes with its siblings: cgroup weights.

A weight only matters under contention: a sandbox alone on an idle host runs at full speed at
any weight. The warm pool starts and warms its sandboxes at the background weight, so that
they yield to the sandboxes in use beside them, and gives one the normal weight as it hands it
out (firebox/server/pool.py).

    set_weight(cg, background=True)    # pooled: the least the kernel allows
    set_weight(cg, background=False)   # in use: the kernel's default, what ``create`` leaves

CPU: v1 ``cpu.shares``, v2 ``cpu.weight`` (the cpu controller is one every set has).
Disk: v2 ``io.weight`` (io.cost) and ``io.bfq.weight`` (BFQ) where the io controller is
enabled for the set's parent (firebox does not enable it: the host's or its delegation's
choice); v1 ``blkio.weight`` (CFQ, gone since Linux 5.0) and ``blkio.bfq.weight`` where the
set has a blkio cgroup, which it has only if a blkio hierarchy is among those it joins (not
today: fs.ACCOUNTING; a blk-mq kernel without BFQ offers no v1 weight to join it for). Each
is written only where its file exists, so a host without any still gets the CPU weight.
"""

from __future__ import annotations

import errno
from pathlib import Path

from firebox.confine.cgroups import fs
from firebox.confine.cgroups.fs import CgroupError
from firebox.confine.cgroups.group import CgroupSet

# (file, normal, background): normal is the kernel's default for a new cgroup, background
# the least each file takes (the kernel's minimums: a pooled sandbox that competes with one in
# use gets about 0.2 % of the CPU against its 100 %, yet never starves on an idle host).
_CPU = {1: ("cpu.shares", "1024", "2"), 2: ("cpu.weight", "100", "1")}
_IO = {
    1: (("blkio.weight", "500", "10"), ("blkio.bfq.weight", "100", "1")),
    # a bare number is the default for every device, in both files and every kernel's syntax
    2: (("io.weight", "100", "1"), ("io.bfq.weight", "100", "1")),
}
# where each version keeps them: v1 a hierarchy per controller, v2 one directory for all
_IO_DIR = {1: "blkio", 2: "cpu"}


def weight_files(cg: CgroupSet) -> list[tuple[Path, str, str]]:
    """(path, normal, background) of every weight the set ``cg`` has: its CPU weight, which
    every set has, then the I/O weights its host offers it."""
    cpu_file, normal, background = _CPU[cg.version]
    found = [(cg.dirs["cpu"] / cpu_file, normal, background)]
    io_dir = cg.dirs.get(_IO_DIR[cg.version])
    if io_dir is not None:
        for name, normal, background in _IO[cg.version]:
            if (io_dir / name).exists():
                found.append((io_dir / name, normal, background))
    return found


def current(path: Path) -> str:
    """A weight file's value for every device: v2's io files say ``default 100`` first."""
    return fs.read(path).split("\n", 1)[0].split()[-1]


def set_weight(cg: CgroupSet, background: bool) -> None:
    """Give ``cg`` the background weights (the least) or the normal ones (the kernel's
    defaults). A file that has the value already is left alone, so a weight the host refused
    to lower is no error when raised again. Every file is tried even if one fails, so that a
    set being raised gets as much of its normal weight as it can; then CgroupError says what
    failed. A few small reads and writes that never wait on the sandbox (~20 µs here): this
    may run on the event loop."""
    failed = []
    for path, normal, low in weight_files(cg):
        want = low if background else normal
        try:
            if current(path) != want:
                fs.write(path, want)
        except (OSError, IndexError) as e:  # IndexError: an empty file, never seen
            failed.append(e)
    if failed:
        raise CgroupError(
            getattr(failed[0], "errno", None) or errno.EIO, "; ".join(map(str, failed))
        )
