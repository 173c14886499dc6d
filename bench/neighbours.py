"""A neighbour's speed while another sandbox pushes at a limit: the neighbour's
``run_code("x += 1")`` round trip, idle against while a hostile sandbox spins its CPU,
fork-bombs, churns memory or fills its disk, per backend.

    .venv/bin/python bench/neighbours.py [--rounds N] [--backends jail,microvm]

A figure, not a promise (docs/SPECIFICATION.md promises none): tests/security/test_exhaustion.py
asserts only that every call of the neighbour's is answered, right, within its deadline. Both
sandboxes have the default size. Once the load has said it is at its limit, idle and busy
samples interleave, ``--rounds`` times: the load's process group stopped (SIGSTOP), 3 idle
round trips; continued (SIGCONT), 3 busy ones. So whatever else loads the host weighs on both
alike. Prints each load's medians, p95 and busy ÷ idle; writes every sample to
bench/results/neighbours.json.

Starts one daemon per backend (firebox.testing.LocalDaemon, a home of its own, no warm pool),
stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from typing import Any

import httpx
from common import RESULTS
from report import p95

from firebox import CommandExitException, Sandbox
from firebox.testing import LocalDaemon

BOMB = """
import os, sys, time
n = 0
try:
    for _ in range(5000):
        if os.fork() == 0:
            time.sleep(20); os._exit(0)
        n += 1
except OSError as e:
    print("failed after", n, e, flush=True)
"""
SPIN = "print('spinning', flush=True)\nwhile True:\n    pass\n"
# each load loops until killed; what it prints once it is at its limit
LOADS: dict[str, tuple[str, str]] = {
    "cpu spin": ("python3 /tmp/spin.py", "spinning"),
    "fork bomb": ("while true; do python3 /tmp/bomb.py; done", "failed after"),
    "memory churn": (
        "while true; do python3 -c 'b = bytearray(1024**3)'; echo ended $?; done",
        "ended 137",
    ),
    "disk fill": (
        "while true; do dd if=/dev/zero of=/home/user/fill bs=1M count=300; "
        "rm -f /home/user/fill; done",
        "No space left on device",
    ),
}
AT_LIMIT_WITHIN = 120.0  # seconds a load may take to say it is at its limit
PER_ROUND = 3  # round trips per idle and per busy stretch


def round_trips(sbx: Sandbox, n: int) -> list[float]:
    """ms of each of ``n`` ``run_code("x += 1")`` calls."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        sbx.run_code("x += 1", timeout=60)
        out.append((time.perf_counter() - start) * 1000)
    return out


def at_limit(handle: Any, marker: str) -> bool:
    """Whether the load printed ``marker`` within AT_LIMIT_WITHIN; its output is read on in a
    thread of its own (unread output would pause it) until it is killed."""
    seen = threading.Event()

    def read() -> None:
        try:
            for _ in handle:
                if marker in handle.stdout[-4096:] + handle.stderr[-4096:]:
                    seen.set()
        except Exception:  # noqa: BLE001 (killed or gone: the reading ends)
            pass

    threading.Thread(target=read, daemon=True).start()
    return seen.wait(AT_LIMIT_WITHIN)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 2),
        "p95": round(p95(samples), 2),
        "n": len(samples),
    }


def measure(daemon: LocalDaemon, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Sandbox.create(timeout=3600) as hostile, Sandbox.create(timeout=3600) as neighbour:
        hostile.files.write("/tmp/bomb.py", BOMB)
        hostile.files.write("/tmp/spin.py", SPIN)
        neighbour.run_code("x = 0")
        round_trips(neighbour, 5)  # warm-up, off the record
        for load, (cmd, marker) in LOADS.items():
            handle = hostile.commands.run(cmd, background=True, timeout=0)
            idle: list[float] = []
            busy: list[float] = []
            try:
                if not at_limit(handle, marker):
                    out[load] = {"error": f"never said {marker!r} in {AT_LIMIT_WITHIN:.0f} s"}
                    continue
                signal = f"/sandboxes/{hostile.sandbox_id}/commands/{handle.pid}/signal"
                with daemon_client(daemon) as c:
                    for _ in range(rounds):
                        c.post(signal, json={"signal": "SIGSTOP"}).raise_for_status()
                        time.sleep(0.2)
                        idle += round_trips(neighbour, PER_ROUND)
                        c.post(signal, json={"signal": "SIGCONT"}).raise_for_status()
                        time.sleep(0.5)
                        busy += round_trips(neighbour, PER_ROUND)
            finally:
                handle.kill()
                recover(hostile)
            quiet, loaded = summary(idle), summary(busy)
            out[load] = {
                "idle_ms": idle,
                "busy_ms": busy,
                "idle": quiet,
                "busy": loaded,
                "busy_over_idle": round(loaded["median"] / quiet["median"], 2),
            }
    return out


def daemon_client(daemon: LocalDaemon) -> httpx.Client:
    return httpx.Client(base_url=daemon.url, headers={"X-API-Key": daemon.key}, timeout=60)


def recover(sbx: Sandbox) -> None:
    """Wait until the hostile sandbox runs commands again (a bomb's last processes exit)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sbx.commands.run("rm -f /home/user/fill", timeout=60)
            return
        except CommandExitException:
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="idle/busy alternations per load")
    parser.add_argument("--backends", default="jail,microvm")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the daemons run sandboxes as unprivileged host uids")
        return 2
    results: dict[str, Any] = {
        "host": f"{platform.node()}, {os.cpu_count()} cores, kernel {platform.release()}",
        "rounds": args.rounds,
        "per_round": PER_ROUND,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for backend in args.backends.split(","):
        with LocalDaemon(isolation=backend, pool_size=0) as daemon:
            os.environ.update(daemon.env())
            results[backend] = measure(daemon, args.rounds)
        print(f"{backend}: run_code('x += 1') round trip of a neighbour, ms")
        print(f"  {'while the other':14s} {'idle median':>12s} {'p95':>8s} {'busy median':>12s}"
              f" {'p95':>8s} {'busy/idle':>9s}")  # fmt: skip
        for load, r in results[backend].items():
            if "error" in r:
                print(f"  {load:14s} {r['error']}")
                continue
            print(
                f"  {load:14s} {r['idle']['median']:12.1f} {r['idle']['p95']:8.1f} "
                f"{r['busy']['median']:12.1f} {r['busy']['p95']:8.1f} {r['busy_over_idle']:9.2f}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "neighbours.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"every sample: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
