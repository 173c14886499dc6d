"""cgroups: real limits on this host's cgroups (v1 or v2, as root): what each limit does to a
process, and that destroying a cgroup ends everything in it. The logic of both versions
against fake trees is tests/unit/test_cgroups.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.confine import cgroups
from firebox.confine.cgroups import CgroupSet, Limits, fs
from firebox.confine.cgroups.group import RMDIR_TIMEOUT

MiB = 1 << 20

HOST = cgroups.detect()
real = pytest.mark.skipif(
    os.geteuid() != 0 or HOST.version is None or bool(HOST.missing()),
    reason=f"needs root and cgroup memory/pids/cpu ({HOST.reason or 'not root'})",
)


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"firebox-unit-{os.getpid()}"
    yield name
    cgroups.cleanup_stale(name)
    for mount in set(HOST.mounts.values()):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(mount / name)


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its (re)parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def start_in(cg: CgroupSet, code: str) -> subprocess.Popen[bytes]:
    """Start python running ``code`` only once it is inside ``cg``: it first blocks on stdin."""
    gate_r, gate_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.stdin.read(1)\n{code}"],
            stdin=gate_r,
            stdout=subprocess.PIPE,
        )
        cg.add(proc.pid)
        os.write(gate_w, b"g")
    finally:
        os.close(gate_r)
        os.close(gate_w)
    return proc


@real
def test_memory_limit_kills_and_is_counted(parent: str) -> None:
    cg = cgroups.create("mem", Limits(64 * MiB, 64, 1.0), parent)
    proc = start_in(cg, "b = b'x' * (200 << 20)\nprint('survived')")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -9 and out == b""
    events = cg.memory_events()
    assert events["oom_kill"] >= 1, events
    if HOST.version == 2:  # v1's failcnt stays 0 on some kernels (6.18 here) even after OOM
        assert events["max"] >= 1, events
    cg.destroy()
    assert not any(d.exists() for d in cg.paths)


@real
def test_pids_limit_stops_a_fork_loop(parent: str) -> None:
    cg = cgroups.create("pids", Limits(256 * MiB, 20, 1.0), parent)
    code = """
import os, time
n = 0
for _ in range(100):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print(n, flush=True)
time.sleep(60)
"""
    proc = start_in(cg, code)
    assert proc.stdout is not None
    forked = int(proc.stdout.readline())
    assert 0 < forked < 20
    assert cg.pids_events() >= 1
    assert len(cg.procs()) == forked + 1
    cg.destroy()
    assert proc.wait(timeout=30) == -9
    assert not any(d.exists() for d in cg.paths)


@real
def test_cpu_quota_throttles(parent: str) -> None:
    cg = cgroups.create("cpu", Limits(256 * MiB, 20, 0.1), parent)
    # 0.3 s of CPU, however long the host takes to give it: at a tenth of a core that is at
    # least three periods over quota, whatever else runs beside
    proc = start_in(cg, "import time\nwhile time.process_time() < 0.3: pass")
    proc.wait(timeout=60)
    stats = fs.read_kv(cg.dirs["cpu"] / "cpu.stat")
    assert stats["nr_throttled"] >= 1, stats
    cg.destroy()


@real
def test_destroy_kills_a_process_tree_and_removes_everything(parent: str) -> None:
    cg = cgroups.create("tree", Limits(256 * MiB, 50, 1.0), parent)
    proc = start_in(
        cg,
        "import subprocess, time\n"
        "kids = [subprocess.Popen(['sleep', '60']) for _ in range(5)]\n"
        "print('ready', flush=True)\ntime.sleep(60)",
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    pids = cg.procs()
    assert proc.pid in pids and len(pids) == 6
    t = time.monotonic()
    cg.destroy()
    # destroy never hangs: it gives itself KILL_TIMEOUT + RMDIR_TIMEOUT and raises past them
    # (a deadline, with a loaded host's slack, not a speed)
    assert time.monotonic() - t < cgroups.KILL_TIMEOUT + RMDIR_TIMEOUT + 5
    assert proc.wait(timeout=30) == -9
    assert all(gone(pid) for pid in pids)
    assert not any(d.exists() for d in cg.paths)
    cg.destroy()  # idempotent


@real
def test_cleanup_stale_on_real_cgroups(parent: str) -> None:
    a = cgroups.create("stale_a", Limits(64 * MiB, 10, 1.0), parent)
    b = cgroups.create("stale_b", Limits(64 * MiB, 10, 1.0), parent)
    proc = start_in(a, "import time\ntime.sleep(60)")
    assert cgroups.cleanup_stale(parent, keep={"stale_b"}) == 1
    assert proc.wait(timeout=30) == -9
    assert not any(d.exists() for d in a.paths) and all(d.exists() for d in b.paths)
    assert cgroups.attach("stale_b", parent).procs() == []
