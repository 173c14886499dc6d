"""Many clients at once against one daemon: each call's latency under load, no error but 429
past the daemon's capacity, and nothing left behind once it is over.

    .venv/bin/python bench/load.py [--clients 50] [--seconds 60] [--max-sandboxes N]
                                   [--backend jail|microvm] [--pool-size 2]

As root, after the README's set-up. One daemon of its own (``LocalDaemon``: its own
FIREBOX_HOME, stopped by PID), started with ``--max-sandboxes`` below the number of clients
(by default half of them less one: 24 for 50; pooled sandboxes count) so that some creates are
refused (429). Each client, a thread with the sync SDK, loops until the time is up: create
(timeout 600) → ``run_code`` of a small cell → ``commands.run("echo hi")`` → ``files.write`` +
``files.read`` of 64 KiB → one time in four ``pause``, ``Sandbox.connect`` (the resume) and
``run_code`` again (the first cell's variable must still be there) → kill. Every call's
latency (a refused call's back-off left out) and outcome is recorded, and every answer checked
(a wrong one is an error).

A 429 is expected: the client backs off for the answer's Retry-After plus up to half of it
again (jitter), and retries. The SDK's RateLimitException carries no headers, so a raw
``POST /sandboxes`` made at capacity (at most every 10 s) reads the header; without one a
client waits 1 s. Anything but a 429 is an unexpected error, and is listed.

Leaks: before the run (after two warm-up iterations, one with a pause), and again once every
client is done and the daemon has ended its sandboxes (after ~5 s of quiet, each figure's least
over snapshots a second apart: three, or after the run up to 30 until back where it started), a
snapshot of what the daemon's home holds on the host: its sandboxes as listed, the processes in
the cgroups under its cgroup parent, its supervisors (``firebox.supervisor.main`` processes
holding a socket in ``/run/firebox/<owner key>``) and that directory's stray files (a
``<id>.tail`` whose ``<id>.sock`` is gone), its cgroup directories (every v1 hierarchy, or v2),
its mounts (mountinfo lines naming its owner key, i.e. its jail disks under ``jail-rw/<key>``:
other daemons' are not its own), the disk used under ``jail-rw/<key>`` and ``vm/<key>`` of the
image directory, and the daemon's RSS and open fds. All must return to where they started but
the RSS, allowed 30 % (``--rss-tolerance``); and once the daemon is stopped, nothing of its own
may remain.

Prints a table per operation (count, p50, p99, 429s, errors), the unexpected errors and the
leak table; writes everything to bench/results/load-<date>.json. Exit status 1 on an unexpected
error, a leak, or a 429 without Retry-After.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
from common import RESULTS

from firebox import Sandbox
from firebox.backends.owner import Owner
from firebox.exceptions import RateLimitException
from firebox.testing import LocalDaemon

OPS = ("create", "run_code", "command", "write", "read", "pause", "resume", "kill")
PAYLOAD = 64 * 1024
DEFAULT_BACKOFF = 1.0  # s, when a 429 says nothing of when to retry
PROBE_EVERY = 10.0  # s between raw POST /sandboxes reading Retry-After
GRACE = 120.0  # s past the deadline a started iteration may still retry a 429
T = TypeVar("T")


# --- what the daemon's home holds on the host --------------------------------------------------


def _hierarchies() -> list[Path]:
    top = Path("/sys/fs/cgroup")
    if (top / "cgroup.controllers").exists():  # v2
        return [top]
    return [h for h in top.iterdir() if (h / "cgroup.procs").exists()]


def _cgroup_dirs(parent: str) -> list[Path]:
    """Every cgroup directory under ``parent`` (itself excluded), in every hierarchy."""
    found = []
    for h in _hierarchies():
        for root, dirs, _ in os.walk(h / parent.strip("/")):
            found += [Path(root) / d for d in dirs]
    return found


def _cgroup_procs(parent: str) -> set[int]:
    pids: set[int] = set()
    for h in _hierarchies():
        for root, _, _ in os.walk(h / parent.strip("/")):
            try:
                pids.update(int(p) for p in (Path(root) / "cgroup.procs").read_text().split())
            except OSError:
                continue
    return pids


def supervisor_pids(run_dir: Path) -> list[int]:
    """``firebox.supervisor.main`` processes holding a socket bound under ``run_dir``."""
    prefix = str(run_dir) + "/"
    inodes = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[7].startswith(prefix):
            inodes.add(f"socket:[{f[6]}]")
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            if b"firebox.supervisor.main" not in (proc / "cmdline").read_bytes():
                continue
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def stray_files(run_dir: Path) -> int:
    """Files of the run directory that belong to no live sandbox: a ``<id>.tail`` whose
    supervisor's ``<id>.sock`` is gone (a live sandbox's supervisor listens on its socket)."""
    names = set(os.listdir(run_dir)) if run_dir.is_dir() else set()
    return sum(n.endswith(".tail") and n[:-5] + ".sock" not in names for n in names)


def _disk_mb(*paths: Path) -> float:
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue
    return total / 2**20


def daemon_usage(pid: int) -> tuple[float, int]:
    """The daemon's RSS (MB) and open fds."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """The daemon's open fds by kind: socket, pipe, anon_inode:[…], or the file's directory."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":[")[0] if ":[" in target else os.path.dirname(target)] += 1
    return kinds


def snapshot(d: LocalDaemon, running: bool = True) -> dict[str, float]:
    owner = Owner.of_home(d.home)
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    snap: dict[str, float] = {
        "processes in its cgroups": len(_cgroup_procs(d.cgroup_parent)),
        "supervisors": len(supervisor_pids(owner.run_dir)),
        "stray run-dir files": stray_files(owner.run_dir),
        "cgroup dirs": len(_cgroup_dirs(d.cgroup_parent)),
        "mounts": sum(owner.key in line for line in mounts),
        "disk MB": round(_disk_mb(owner.jail_disks, owner.vm_dirs), 1),
    }
    if running:
        assert d.proc is not None
        snap["sandboxes listed"] = len(Sandbox.list(api_key=d.key, api_url=d.url))
        rss, snap["daemon fds"] = daemon_usage(d.proc.pid)
        snap["daemon RSS MB"] = round(rss, 1)
    return snap


def leaks(before: dict[str, float], after: dict[str, float], rss_tol: float) -> list[str]:
    out = []
    for k, b in before.items():
        allowed = b * (1 + rss_tol) if k == "daemon RSS MB" else b + (0.5 if k == "disk MB" else 0)
        if after[k] > allowed:
            out.append(f"{k}: {b:g} → {after[k]:g}")
    return out


def quiet_snapshot(d: LocalDaemon, before: dict[str, float] | None, rss_tol: float) -> dict:
    """What the daemon holds at rest: after ~5 s of quiet, each figure's least over snapshots a
    second apart (the daemon's own 5-s metrics sampling holds an fd or two for a moment), three
    of them; or with ``before``, as many as it takes to be back within it, up to 30."""
    time.sleep(5)
    samples: list[dict[str, float]] = []
    while True:
        samples.append(snapshot(d))
        least = {k: min(s[k] for s in samples) for k in samples[0]}
        done = len(samples) >= 3 if before is None else not leaks(before, least, rss_tol)
        if done or len(samples) >= 30:
            return least
        time.sleep(1)


# --- the clients -------------------------------------------------------------------------------


class WrongResult(Exception):
    pass


class Failed(Exception):
    """An unexpected error, already recorded."""


def expect(got: T, want: T, what: str) -> T:
    if got != want:
        raise WrongResult(f"{what}: {str(got)[:80]!r}, not {str(want)[:80]!r}")
    return got


class RetryAfter:
    """When to retry a 429: the Retry-After of a raw ``POST /sandboxes`` made at capacity."""

    def __init__(self, d: LocalDaemon) -> None:
        self.d = d
        self.lock = threading.Lock()
        self.probes: list[dict[str, Any]] = []
        self.seconds: float | None = None
        self.last = -math.inf

    def delay(self) -> float:
        with self.lock:
            if time.monotonic() - self.last > PROBE_EVERY:
                self.last = time.monotonic()
                self._probe()
        base = self.seconds if self.seconds is not None else DEFAULT_BACKOFF
        return base + random.uniform(0, base / 2)

    def _probe(self) -> None:
        headers = {"X-API-Key": self.d.key}
        r = httpx.post(
            f"{self.d.url}/sandboxes", json={"template": "python", "timeout": 60},
            headers=headers, timeout=60,
        )  # fmt: skip
        value = r.headers.get("retry-after")
        self.probes.append({"status": r.status_code, "retry_after": value})
        if r.status_code == 429 and value is not None:
            with contextlib.suppress(ValueError):  # an HTTP date: not ours to send
                self.seconds = float(value)
        elif r.is_success:  # room meanwhile: give it back, and look again sooner
            sid = r.json()["sandbox_id"]
            httpx.delete(f"{self.d.url}/sandboxes/{sid}", headers=headers, timeout=60)
            self.last -= PROBE_EVERY - 1


class Load:
    def __init__(self, d: LocalDaemon, deadline: float) -> None:
        self.opts = {"api_key": d.key, "api_url": d.url}
        self.deadline = deadline
        self.retry = RetryAfter(d)
        self.lock = threading.Lock()
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.limited: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.by_class: Counter[str] = Counter()
        self.errors: list[dict[str, str]] = []
        self.iterations = 0

    def call(self, op: str, fn: Callable[[], T], give_up: float | None = None) -> T | None:
        """``fn()`` timed; a 429 retried after a back-off until ``give_up`` (then None);
        anything else recorded and raised as Failed."""
        give_up = self.deadline + GRACE if give_up is None else give_up
        while True:
            start = time.perf_counter()
            try:
                out = fn()
            except RateLimitException:
                with self.lock:
                    self.limited[op] += 1
                if time.monotonic() > give_up:
                    if op == "create":
                        return None
                    self.fail(op, RuntimeError(f"still refused (429) {GRACE:.0f} s past the end"))
                time.sleep(self.retry.delay())
                continue
            except Exception as e:
                self.fail(op, e)
            with self.lock:
                self.ms[op].append((time.perf_counter() - start) * 1000)
            return out

    def fail(self, op: str, e: BaseException) -> NoReturn:
        with self.lock:
            self.failures[op] += 1
            self.by_class[type(e).__name__] += 1
            self.errors.append({"op": op, "class": type(e).__name__, "message": str(e)[:300]})
        raise Failed from e

    def iteration(self, rng: random.Random, pause: bool | None = None) -> bool:
        """One create → … → kill (with a pause and resume one time in four, unless ``pause``
        says); False once creates stop (the time is up)."""
        made: list[Sandbox] = []
        killed = False
        try:
            sbx = self.call(
                "create", lambda: Sandbox.create(timeout=600, **self.opts), self.deadline
            )
            if sbx is None:
                return False
            made.append(sbx)
            self.call("run_code", lambda: expect(sbx.run_code("x = 41; x + 1").text, "42", "cell"))
            self.call("command", lambda: expect(sbx.commands.run("echo hi").stdout, "hi\n", "echo"))
            data = rng.randbytes(PAYLOAD)
            path = "/home/user/blob.bin"
            self.call("write", lambda: sbx.files.write(path, data))
            self.call("read", lambda: expect(sbx.files.read(path, format="bytes") == data, True,
                                             "the 64 KiB read back"))  # fmt: skip
            if (rng.random() < 0.25) if pause is None else pause:
                self.call("pause", lambda: sbx.pause())
                again = self.call("resume", lambda: Sandbox.connect(sbx.sandbox_id, **self.opts))
                assert again is not None
                made.append(again)
                self.call("run_code", lambda: expect(again.run_code("x").text, "41", "x resumed"))
            self.call("kill", lambda: expect(made[-1].kill(), True, "kill"))
            killed = True
            with self.lock:
                self.iterations += 1
        except Failed:
            pass
        finally:
            if made and not killed:  # best effort, after an error
                try:
                    made[-1].kill()
                except Exception as e:
                    with self.lock:
                        self.errors.append({"op": "cleanup kill", "class": type(e).__name__,
                                            "message": str(e)[:300]})  # fmt: skip
            for s in made:
                s.close()
        return True

    def client(self, i: int) -> None:
        rng = random.Random(i)
        while time.monotonic() < self.deadline and self.iteration(rng):
            pass


# --- the run -----------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else math.nan


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-sandboxes", type=int, help="default: half the clients, less one")
    p.add_argument("--backend", default="jail", choices=["jail", "microvm"])
    p.add_argument("--pool-size", type=int, default=2)
    p.add_argument("--rss-tolerance", type=float, default=0.30)
    args = p.parse_args()
    if args.max_sandboxes is None:
        args.max_sandboxes = max(2, args.clients // 2 - 1)
    extra = ["--max-sandboxes", str(args.max_sandboxes)]
    with LocalDaemon(isolation=args.backend, pool_size=args.pool_size, args=extra) as d:
        warm = Load(d, math.inf)  # first-use costs off the record, a pause among them
        warm.iteration(random.Random(0), pause=False)
        warm.iteration(random.Random(1), pause=True)
        if warm.errors:
            raise SystemExit(f"the warm-up failed: {warm.errors}")
        assert d.proc is not None
        before = quiet_snapshot(d, None, args.rss_tolerance)
        kinds_before = fd_kinds(d.proc.pid)
        load_avg = os.getloadavg()
        run = Load(d, time.monotonic() + args.seconds)
        started = time.monotonic()
        threads = [threading.Thread(target=run.client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        after = quiet_snapshot(d, before, args.rss_tolerance)
        kinds = fd_kinds(d.proc.pid)
        kinds.subtract(kinds_before)
        d.stop()
        time.sleep(2)
        stopped = snapshot(d, running=False)
    leaked = leaks(before, after, args.rss_tolerance)
    grew = {x.split(":")[0] for x in leaked}
    if "daemon fds" in grew and (diff := [f"{k} {n:+d}" for k, n in kinds.items() if n]):
        leaked.append(f"daemon fds by kind, after − before: {', '.join(diff)}")
    left = [k for k, v in stopped.items() if v]
    run_dir = Owner.of_home(d.home).run_dir
    left_names = sorted(os.listdir(run_dir)) if run_dir.is_dir() else []
    leaked += [f"{k} once stopped: {stopped[k]:g}" for k in left]
    if left_names:
        leaked.append(f"left in {run_dir}: {', '.join(left_names)}")
    seen_429 = [pr for pr in run.retry.probes if pr["status"] == 429]
    header_ok = bool(seen_429) and all(pr["retry_after"] is not None for pr in seen_429)

    lines = [
        f"{args.clients} clients, {wall:.0f} s, --max-sandboxes {args.max_sandboxes}, "
        f"{args.backend}, pool {args.pool_size}: {run.iterations} iterations "
        f"({run.iterations / wall:.1f}/s); load average at the start {load_avg[0]:.1f} "
        f"on {os.cpu_count()} cores",
        "",
        "| op | count | p50 | p99 | 429s | errors |",
        "|---|---|---|---|---|---|",
    ]
    for op in OPS:
        ms = run.ms[op]
        lines.append(
            f"| {op} | {len(ms)} | {pct(ms, 0.5):.1f} ms | {pct(ms, 0.99):.1f} ms "
            f"| {run.limited[op]} | {run.failures[op]} |"
        )
    retry_vals = sorted({str(pr["retry_after"]) for pr in seen_429})
    lines += [
        "",
        f"429 Retry-After: {'present' if header_ok else '**missing**'} "
        f"({len(seen_429)} raw probes answered 429, Retry-After {', '.join(retry_vals) or '—'}; "
        f"{len(run.retry.probes) - len(seen_429)} found room)",
        f"unexpected errors: {len(run.errors)}"
        + "".join(f"\n- {k}: {v}" for k, v in run.by_class.most_common()),
    ]
    lines += [f"  - {e['op']}: {e['class']}: {e['message']}" for e in run.errors[:20]]
    lines += ["", "| held on the host | before | after | daemon stopped |", "|---|---|---|---|"]
    for k in before:
        a = f"{after[k]:g}" + (" **leak**" if k in grew else "")
        gone = f"{stopped[k]:g}" + (" **leak**" if k in left else "") if k in stopped else "—"
        lines.append(f"| {k} | {before[k]:g} | {a} | {gone} |")
    lines.append(f"\nleaks: {'; '.join(leaked) or 'none'}")
    print("\n".join(lines))

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"load-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "args": vars(args), "wall_s": wall, "iterations": run.iterations, "load_avg": load_avg,
        "ms": run.ms, "limited": run.limited, "errors": run.errors, "probes": run.retry.probes,
        "before": before, "after": after, "stopped": stopped, "run_dir": str(run_dir),
        "left_in_run_dir": left_names,
        "leaks": leaked, "table": lines,
    }, indent=2))  # fmt: skip
    print(f"samples: {path}")
    return 1 if run.errors or leaked or not header_ok else 0


if __name__ == "__main__":
    sys.exit(main())
