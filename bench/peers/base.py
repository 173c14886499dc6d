"""What every peer and floor shares: the interface, the clock, and the host-side memory figure.

A peer is measured in the project's own interpreter (.venv), except for the work that needs a
third-party package: that runs in the peers' venv through ``peers_venv.VenvDriver``.

Every measurement returns samples (ms, or MB for memory) or an ``Unsupported`` that says why
the peer has no such figure; ``file_throughput`` returns {"write_mb_s", "read_mb_s"}, each MB/s
or an ``Unsupported``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from common import cgroup_procs, pss_mb, timed  # noqa: E402  (bench/ is on the path)

from firebox import images  # noqa: E402
from firebox.server.config import ServerConfig  # noqa: E402

# the interpreter's real path, not a shim a version manager may have put first on PATH
PYTHON = os.path.realpath("/usr/bin/python3")
PY_COMMAND = "print(1)"  # what the floors run as their "command"
PY_CODE = "print(1+1)"  # the python every peer runs, through its own API


@dataclass(frozen=True)
class Unsupported:
    """A figure the peer does not have, and why (printed by the benchmark)."""

    reason: str

    def __bool__(self) -> bool:
        return False


Samples = list[float] | Unsupported
# {"write_mb_s": …, "read_mb_s": …}: each MB/s, or why that direction has no figure
Throughput = dict[str, float | Unsupported] | Unsupported


class Peer:
    """One peer or floor. ``available()`` before ``setup()``; ``teardown()`` always after it.

    Subclasses set ``name``, ``kind`` ("floor" or "peer") and ``notes`` (how each figure is
    measured for this peer, keyed by the method's name) and override what they offer.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "peer"
    notes: ClassVar[dict[str, str]] = {}

    def available(self) -> str | None:
        """None when this peer can run here, else the reason it is skipped."""
        return None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        """Stop everything setup() and the measurements started (by PID) and remove it."""

    def create_to_first_command(self, runs: int) -> Samples:
        return Unsupported("not offered by this peer")

    def create_to_first_python(self, runs: int) -> Samples:
        return Unsupported("not offered by this peer")

    def command_round_trip(self, runs: int) -> Samples:
        return Unsupported("not offered by this peer")

    def python_round_trip(self, runs: int) -> Samples:
        return Unsupported("not offered by this peer")

    def file_throughput(self, size_mb: int = 100) -> Throughput:
        return Unsupported("no files API")

    def idle_memory_mb(self, n: int) -> Samples:
        return Unsupported("not offered by this peer")

    def __enter__(self) -> Peer:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def collect(sample: Callable[[], float], runs: int, warmup: int = 1) -> list[float]:
    """``runs`` samples of ``sample()``, which times its own operation (ms) and does any clean-up
    (a kill, a delete) after its clock stops; the first ``warmup`` are dropped."""
    out = [sample() for _ in range(runs + warmup)]
    return out[warmup:]


def clock_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


# --- the host-side memory figure ------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (by /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in out and Path(f"/proc/{p}").exists():
            out.append(p)
            todo += children(p)
    return out


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def remove_cgroup(path: str) -> list[str]:
    """rmdir cgroup ``path`` and every cgroup under it in each hierarchy (v1) or the one (v2),
    deepest first. Returns what could not be removed (a cgroup that still has processes)."""
    left = []
    roots = [Path("/sys/fs/cgroup") / path.strip("/")]
    roots += [h / path.strip("/") for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()]
    for root in roots:
        if not (root / "cgroup.procs").exists():
            continue
        dirs = sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, root]:
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
    return left


# --- what several peers need ----------------------------------------------------------------


def rootfs() -> Path | None:
    """firebox's built ``python`` image (a root filesystem directory), or None."""
    return images.image_path("python")


def no_rootfs_reason() -> str | None:
    if rootfs() is None:
        return "firebox's python image is not built (scripts/install builds it)"
    return None


def unprivileged_uid() -> int:
    """The uid the bare bwrap floor runs as: firebox's first sandbox uid."""
    return ServerConfig().uid_base


def need_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root (run the benchmark as root)"


def need_binaries(*paths: str) -> str | None:
    def found(p: str) -> bool:
        return os.access(p, os.X_OK) if os.path.isabs(p) else shutil.which(p) is not None

    missing = [p for p in paths if not found(p)]
    if missing:
        return f"not installed: {', '.join(missing)} (bench/peers/install.sh installs it)"
    return None


def run_checked(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv``; on failure raise with its stderr (a peer that fails is not a figure)."""
    proc = subprocess.run(argv, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv[:6]))}…: exit {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace')[-800:]}"
        )
    return proc


__all__ = [
    "BENCH",
    "PYTHON",
    "PY_CODE",
    "PY_COMMAND",
    "Peer",
    "Samples",
    "Throughput",
    "Unsupported",
    "clock_ms",
    "collect",
    "cgroup_procs",
    "need_binaries",
    "need_root",
    "no_rootfs_reason",
    "parent_pid",
    "process_tree",
    "pss_mb",
    "remove_cgroup",
    "rootfs",
    "run_checked",
    "timed",
    "unprivileged_uid",
]
