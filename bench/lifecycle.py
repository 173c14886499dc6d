"""Pause, resume and a daemon restart, per backend, in one run:

    .venv/bin/python bench/lifecycle.py [--cycles N] [--adopt-jail 50] [--adopt-microvm 6]

As root, after the README's set-up. Per backend, daemons of their own (own FIREBOX_HOME,
stopped by PID):

- pause: ms for ``sbx.pause()`` of a warm sandbox (a python context with a variable, a file);
- resume → first result: ms from ``Sandbox.resume(id)`` to ``run_code`` of the paused
  context's variable answered (the target: ≤ 300 ms microVM, ≤ 50 ms jail);
- a paused sandbox's footprint: what it holds on disk for its pause (a microVM's saved state
  and its disk overlay) and in memory (a frozen jail keeps its cgroup's memory);
- re-adoption: a daemon SIGKILLed with N live sandboxes, the next one started: seconds from
  its start to serving with all N adopted, against the same daemon started on an empty home
  in the same run (the target: ≤ 5 s for 50);
- a supervisor's memory (PSS) and the run_code round trip through it;
- snapshots and forks: a snapshot of a warm sandbox (seconds, size); 10 sandboxes started at
  once from it, seconds until all are created and until all answer a command (the target:
  ≤ 2 s microVM), each one's PSS on the host; one more from it left idle for 5 s, then its
  first command and its second (what the first costs after a restore); and
  ``fork(count=10)``, which takes its own snapshot first, end to end.

Prints a table; writes the samples to bench/results/lifecycle-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import RESULTS, pss_kb, sandbox_pss_mb, timed

from firebox import Sandbox
from firebox.backends.owner import Owner
from firebox.testing import LocalDaemon


def _du(path: Path) -> int:
    total = 0
    for p in path.rglob("*") if path.is_dir() else ():
        if p.is_file():
            total += p.stat().st_blocks * 512
    return total


def _supervisor_pids(run_dir: Path) -> list[int]:
    socks = {str(p) for p in run_dir.glob("*.sock")}
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[7] in socks:
            inodes.add(f"socket:[{f[6]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def pause_resume(backend: str, cycles: int, settle: float) -> dict[str, object]:
    with LocalDaemon(isolation=backend, pool_size=0) as d:
        opts = {"api_key": d.key, "api_url": d.url}
        sbx = Sandbox.create(timeout=3600, **opts)
        sbx.run_code("x = 41")
        sbx.files.write("/home/user/f.txt", "kept")
        round_trip = timed(lambda: sbx.run_code("x"), 30)
        owner = Owner.of_home(d.home)
        sup = _supervisor_pids(owner.run_dir)
        sup_pss = [pss_kb(p) / 1024 for p in sup]
        running_pss = sandbox_pss_mb(d, sbx.sandbox_id)
        pauses, resumes, resumes_alone, disk, mem = [], [], [], [], []
        for _ in range(cycles):
            start = time.perf_counter()
            sbx.pause()
            pauses.append((time.perf_counter() - start) * 1000)
            mem.append(sandbox_pss_mb(d, sbx.sandbox_id))
            # paused for a while (a microVM's pause is baked into a RAM file meanwhile)
            time.sleep(settle)
            disk.append(_du(owner.vm_dirs / sbx.sandbox_id) / 2**20)
            start = time.perf_counter()
            again = Sandbox.resume(sbx.sandbox_id, **opts)
            resumes_alone.append((time.perf_counter() - start) * 1000)
            assert again.run_code("x").text == "41"
            resumes.append((time.perf_counter() - start) * 1000)
            time.sleep(0.5)
        start = time.perf_counter()
        snap = sbx.create_snapshot()
        snapshot_s = time.perf_counter() - start

        def from_snapshot(_: int) -> tuple[Sandbox, float]:
            made = Sandbox.create(snapshot=snap.snapshot_id, timeout=600, **opts)
            created = time.perf_counter() - start
            made.commands.run("true")  # it answers
            return made, created

        start = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            got = list(pool.map(from_snapshot, range(10)))
        forks_s = time.perf_counter() - start
        made = [m for m, _ in got]
        forks_created_s = max(c for _, c in got)
        # where the time to answer goes: a sandbox's first command after it has sat idle
        # (under emulation its QEMU translates the guest's spawn path anew) and its second
        idle = Sandbox.create(snapshot=snap.snapshot_id, timeout=600, **opts)
        time.sleep(5)
        first_cmd_ms, second_cmd_ms = (
            timed(lambda: idle.commands.run("true"), 1, warmup=0)[0],
            timed(lambda: idle.commands.run("true"), 1, warmup=0)[0],
        )
        idle.kill()
        fork_pss = [sandbox_pss_mb(d, f.sandbox_id) for f in made]
        for f in made:
            f.kill()
        Sandbox.delete_snapshot(snap.snapshot_id, **opts)
        start = time.perf_counter()
        forks = sbx.fork(count=10, timeout=600)
        for f in forks:
            if isinstance(f, Sandbox):
                f.commands.run("true")
        fork_call_s = time.perf_counter() - start
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
        sbx.kill()
    return {
        "backend": backend,
        "snapshot_s": snapshot_s,
        "snapshot_mb": snap.size_bytes / 2**20,
        "forks_ready": len(made),
        "forks_s": forks_s,
        "forks_created_s": forks_created_s,
        "first_command_ms": first_cmd_ms,
        "second_command_ms": second_cmd_ms,
        "resume_alone_ms": resumes_alone,
        "fork_call_s": fork_call_s,
        "fork_pss_mb": fork_pss,
        "pause_ms": pauses,
        "resume_first_result_ms": resumes,
        "paused_disk_mb": disk,
        "paused_memory_mb": mem,
        "running_pss_mb": running_pss,
        "supervisor_pss_mb": sup_pss,
        "run_code_round_trip_ms": round_trip,
    }


def readoption(backend: str, n: int) -> dict[str, object]:
    parent = f"firebox-bench-adopt-{os.getpid()}-{backend}"
    with tempfile.TemporaryDirectory() as empty_home:
        empty = LocalDaemon(home=Path(empty_home), isolation=backend, pool_size=0)
        start = time.perf_counter()
        empty.start()
        empty_s = time.perf_counter() - start
        empty.stop()
    with tempfile.TemporaryDirectory() as home:
        first = LocalDaemon(
            home=Path(home), isolation=backend, pool_size=0, cgroup_parent=parent,
            on_stop="keep", args=["--max-sandboxes", str(n + 8)],
        )  # fmt: skip
        first.start()
        opts = {"api_key": first.key, "api_url": first.url}
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda _: Sandbox.create(timeout=3600, **opts), range(n)))
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
        second = LocalDaemon(
            home=Path(home), isolation=backend, pool_size=0, cgroup_parent=parent,
            args=["--max-sandboxes", str(n + 8)],
        )  # fmt: skip
        start = time.perf_counter()
        second.start()
        adopted_s = time.perf_counter() - start
        try:
            opts = {"api_key": second.key, "api_url": second.url}
            running = sum(Sandbox.get_info(s.sandbox_id, **opts).state == "running" for s in made)
        finally:
            second.stop()
    return {
        "backend": backend,
        "sandboxes": n,
        "adopted_running": running,
        "start_with_them_s": adopted_s,
        "start_empty_s": empty_s,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=7)
    p.add_argument("--backends", default="jail,microvm")
    p.add_argument("--adopt-jail", type=int, default=50)
    p.add_argument("--adopt-microvm", type=int, default=6)
    p.add_argument("--settle", type=float, default=10.0, help="seconds each pause lasts")
    args = p.parse_args()
    rows, adoptions = [], []
    for backend in args.backends.split(","):
        rows.append(pause_resume(backend, args.cycles, args.settle))
        n = args.adopt_jail if backend == "jail" else args.adopt_microvm
        adoptions.append(readoption(backend, n))
        print(f"{backend}: done", file=sys.stderr)
    med = statistics.median
    lines = [
        "| backend | pause | resume → first result (the resume alone) | paused: disk "
        "| paused: memory | running PSS | supervisor PSS | run_code round trip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {med(r['pause_ms']):.0f} ms "  # type: ignore[arg-type]
            f"| {med(r['resume_first_result_ms']):.0f} ms "  # type: ignore[arg-type]
            f"({med(r['resume_alone_ms']):.0f} ms) "  # type: ignore[arg-type]
            f"| {med(r['paused_disk_mb']):.0f} MB "  # type: ignore[arg-type]
            f"| {med(r['paused_memory_mb']):.0f} MB "  # type: ignore[arg-type]
            f"| {r['running_pss_mb']:.0f} MB "
            f"| {med(r['supervisor_pss_mb'] or [0]):.1f} MB "  # type: ignore[arg-type]
            f"| {med(r['run_code_round_trip_ms']):.2f} ms |"  # type: ignore[arg-type]
        )
    lines += [
        "",
        "| backend | snapshot of a warm sandbox | its size | 10 from it at once: all created "
        "| all answer | PSS each | fork(count=10), its snapshot included "
        "| one from it, idle 5 s: first / second command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['snapshot_s']:.2f} s | {r['snapshot_mb']:.0f} MB "
            f"| {r['forks_created_s']:.2f} s "
            f"| {r['forks_s']:.2f} s ({r['forks_ready']} ready) "
            f"| {med(r['fork_pss_mb'] or [0]):.0f} MB "  # type: ignore[arg-type]
            f"| {r['fork_call_s']:.2f} s "
            f"| {r['first_command_ms']:.0f} / {r['second_command_ms']:.0f} ms |"
        )
    lines += [
        "",
        "| backend | sandboxes SIGKILLed | adopted running | daemon start with them "
        "| on an empty home | difference |",
        "|---|---|---|---|---|---|",
    ]
    for a in adoptions:
        lines.append(
            f"| {a['backend']} | {a['sandboxes']} | {a['adopted_running']} "
            f"| {a['start_with_them_s']:.2f} s | {a['start_empty_s']:.2f} s "
            f"| {a['start_with_them_s'] - a['start_empty_s']:.2f} s |"  # type: ignore[operator]
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"lifecycle-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rows": rows, "adoptions": adoptions, "table": lines}, indent=2))
    print(f"samples: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
