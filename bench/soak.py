"""An hour of churn against one daemon: does anything drift while thousands of sandboxes come
and go?

    .venv/bin/python bench/soak.py [--minutes 60] [--workers 4] [--backend jail|microvm]
                                   [--pool-size 0]

Not part of run.py, nor of CI: it takes the hour (``--minutes 2`` is a quick check that it
works). As root, after the README's set-up. One daemon of its own (``LocalDaemon``: its own
FIREBOX_HOME, stopped by PID); ``--workers`` threads with the sync SDK each loop create →
``run_code("1 + 1")`` → ``commands.run("echo hi")`` → kill, back to back. No warm pool by
default, so that every create is a cold start: one whose cost drifts shows.

Every minute: the median latency of the creates started in it, their number and the errors; the
daemon's RSS and open fds (sampled every 5 s: the minute's last RSS and its fewest fds, as
sandboxes in flight hold some); and the dying memory cgroups, removed cgroups the kernel still
holds (pages charged to them pin them). On cgroup v2 that is ``nr_dying_descendants`` in the
``cgroup.stat`` of the daemon's cgroup parent: its own only. v1 has no such count; the estimate
is the memory line's ``num_cgroups`` in /proc/cgroups (every memory cgroup the kernel holds,
dying ones included) less the directories under /sys/fs/cgroup/memory, counted recursively (the
live ones, the root included). That is host-wide: other work on the host (a test suite's
daemons) moves it too. And the stray files of the daemon's run directory (``/run/firebox/<owner
key>``): a sandbox's ``<id>.tail`` whose supervisor's ``<id>.sock`` is gone.

At the end, the workers stopped and after ~5 s of quiet: the first minute's median create
against the last minute's (the target: within 10 %); the daemon's RSS and fds at rest against
their values at rest before the first minute (fds must come back, RSS may grow 30 %,
``--rss-tolerance``); the dying cgroups' growth, per 1000 sandboxes (reported, not judged: the
kernel frees them under memory pressure). Once the daemon is stopped its run directory must be
empty (or gone). Prints the minutes and the verdicts; writes bench/results/soak-<date>.json.
Exit status 1 on an error or a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS
from load import daemon_usage, stray_files

from firebox import Sandbox
from firebox.backends.owner import Owner
from firebox.testing import LocalDaemon


def dying_memory_cgroups(parent: str) -> int:
    top = Path("/sys/fs/cgroup")
    if (top / "cgroup.controllers").exists():  # v2: the parent's own count
        for line in (top / parent / "cgroup.stat").read_text().splitlines():
            if line.startswith("nr_dying_descendants"):
                return int(line.split()[1])
        return 0
    held = 0
    for line in Path("/proc/cgroups").read_text().splitlines():
        f = line.split()
        if f[0] == "memory":
            held = int(f[2])
    return held - sum(1 for _ in os.walk(top / "memory"))


class Churn:
    def __init__(self, d: LocalDaemon) -> None:
        self.opts = {"api_key": d.key, "api_url": d.url}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.creates: list[tuple[float, float]] = []  # (when it started, ms)
        self.errors: list[dict[str, Any]] = []

    def once(self) -> None:
        started = time.monotonic()
        t = time.perf_counter()
        op = "create"
        sbx = None
        try:
            sbx = Sandbox.create(timeout=600, **self.opts)
            ms = (time.perf_counter() - t) * 1000
            op = "run_code"
            if (got := sbx.run_code("1 + 1").text) != "2":
                raise RuntimeError(f"1 + 1 gave {got!r}")
            op = "command"
            if (out := sbx.commands.run("echo hi").stdout) != "hi\n":
                raise RuntimeError(f"echo hi gave {out!r}")
            op = "kill"
            if not sbx.kill():
                raise RuntimeError("kill found it gone")
            with self.lock:
                self.creates.append((started, ms))
        except Exception as e:
            with self.lock:
                self.errors.append({"at_s": started, "op": op, "class": type(e).__name__,
                                    "message": str(e)[:300]})  # fmt: skip
            if sbx is not None and op != "kill":
                with contextlib.suppress(Exception):
                    sbx.kill()
        finally:
            if sbx is not None:
                sbx.close()

    def worker(self) -> None:
        while not self.stop.is_set():
            self.once()


def at_rest(pid: int, before: tuple[float, int] | None = None) -> tuple[float, int]:
    """The daemon's RSS and fds after ~5 s of quiet (up to 30 s more for the fds to return)."""
    time.sleep(5)
    now = daemon_usage(pid)
    for _ in range(30):
        if before is None or now[1] <= before[1]:
            break
        time.sleep(1)
        now = daemon_usage(pid)
    return now


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=60)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--backend", default="jail", choices=["jail", "microvm"])
    p.add_argument("--pool-size", type=int, default=0)
    p.add_argument("--rss-tolerance", type=float, default=0.30)
    args = p.parse_args()
    minutes: list[dict[str, float]] = []
    with LocalDaemon(isolation=args.backend, pool_size=args.pool_size) as d:
        assert d.proc is not None
        pid = d.proc.pid
        run_dir = Owner.of_home(d.home).run_dir
        churn = Churn(d)
        for _ in range(3):  # first-use costs off the record
            churn.once()
        churn.creates.clear()
        if churn.errors:
            raise SystemExit(f"the warm-up failed: {churn.errors}")
        rest_before = at_rest(pid)
        dying_before = dying_memory_cgroups(d.cgroup_parent)
        load_avg = os.getloadavg()
        workers = [threading.Thread(target=churn.worker) for _ in range(args.workers)]
        start = time.monotonic()
        for w in workers:
            w.start()
        for m in range(args.minutes):
            begin, end = start + 60 * m, start + 60 * (m + 1)
            fds = []
            while (now := time.monotonic()) < end:
                time.sleep(min(5.0, end - now))
                rss, fd = daemon_usage(pid)
                fds.append(fd)
            with churn.lock:
                ms = [x for t, x in churn.creates if begin <= t < end]
                errors = sum(begin <= e["at_s"] < end for e in churn.errors)
            minutes.append({
                "minute": m + 1, "sandboxes": len(ms),
                "create_p50_ms": statistics.median(ms) if ms else float("nan"),
                "rss_mb": rss, "fds_fewest": min(fds), "fds_most": max(fds),
                "dying_memory_cgroups": dying_memory_cgroups(d.cgroup_parent),
                "stray_run_dir_files": stray_files(run_dir), "errors": errors,
            })  # fmt: skip
            print(f"minute {m + 1}: {minutes[-1]}", file=sys.stderr)
        churn.stop.set()
        for w in workers:
            w.join()
        rest_after = at_rest(pid, rest_before)
        dying_after = dying_memory_cgroups(d.cgroup_parent)
        d.stop()
        time.sleep(2)
        left = sorted(os.listdir(run_dir)) if run_dir.is_dir() else []

    total = len(churn.creates)
    first, last = minutes[0]["create_p50_ms"], minutes[-1]["create_p50_ms"]
    drift = last / first - 1
    rss_growth = rest_after[0] / rest_before[0] - 1
    dying_growth = dying_after - dying_before
    checks = [
        ("create p50, last minute vs first", f"{first:.1f} ms", f"{last:.1f} ms",
         f"{drift:+.1%}", "within 10 %", abs(drift) <= 0.10),
        ("daemon RSS at rest", f"{rest_before[0]:.1f} MB", f"{rest_after[0]:.1f} MB",
         f"{rss_growth:+.1%}", f"≤ +{args.rss_tolerance:.0%}", rss_growth <= args.rss_tolerance),
        ("daemon fds at rest", f"{rest_before[1]}", f"{rest_after[1]}",
         f"{rest_after[1] - rest_before[1]:+d}", "+0", rest_after[1] <= rest_before[1]),
        ("dying memory cgroups", f"{dying_before}", f"{dying_after}",
         f"{dying_growth:+d} ({1000 * dying_growth / max(total, 1):.0f} per 1000 sandboxes)",
         "reported", True),
        ("left in the run directory once the daemon stopped", "", "", f"{len(left)} files",
         "0", not left),
        ("errors", "", "", f"{len(churn.errors)}", "0", not churn.errors),
    ]  # fmt: skip
    lines = [
        f"{args.minutes} min, {args.workers} workers, {args.backend}, pool {args.pool_size}: "
        f"{total} sandboxes ({total / (60 * args.minutes):.1f}/s); load average at the start "
        f"{load_avg[0]:.1f} on {os.cpu_count()} cores",
        "",
        "| minute | sandboxes | create p50 | daemon RSS | daemon fds (fewest–most) "
        "| dying memory cgroups | stray run-dir files | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in minutes:
        lines.append(
            f"| {r['minute']} | {r['sandboxes']} | {r['create_p50_ms']:.1f} ms "
            f"| {r['rss_mb']:.1f} MB | {r['fds_fewest']}–{r['fds_most']} "
            f"| {r['dying_memory_cgroups']} | {r['stray_run_dir_files']} | {r['errors']} |"
        )
    lines += ["", "| check | start | end | change | target | met |", "|---|---|---|---|---|---|"]
    for name, a, b, change, target, ok in checks:
        lines.append(f"| {name} | {a} | {b} | {change} | {target} | {'yes' if ok else '**no**'} |")
    lines += [f"- {e['op']}: {e['class']}: {e['message']}" for e in churn.errors[:20]]
    print("\n".join(lines))

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"soak-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "args": vars(args), "load_avg": load_avg, "minutes": minutes,
        "rest_before": rest_before, "rest_after": rest_after, "dying_before": dying_before,
        "dying_after": dying_after, "create_ms": [x for _, x in churn.creates],
        "run_dir": str(run_dir), "left_in_run_dir": left, "errors": churn.errors,
        "table": lines,
    }, indent=2))  # fmt: skip
    print(f"samples: {path}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
