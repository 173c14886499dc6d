"""firebox's own figures, on one backend, each through a daemon of its own (LocalDaemon).

Per backend, two daemons in turn, each on a free loopback port, stopped by PID:

  * pool off (``--pool-size 0``), with admission opened wide for the density figure
    (``--max-sandboxes 4096 --min-free-memory-mb 256 --min-free-disk-mb 256``: those bounds
    must not be what stops the growth; this benchmark's own guard on the host's available
    memory is);
  * pool on: the daemon's default pool (``ServerConfig.pool_size``, 2 per template).

On each: create → first ``commands.run("true")`` and → first ``run_code("1+1")`` results
(bench/common.first_result: paced so a pool has refilled), round trips of
``commands.run("true")`` and ``run_code("x += 1")`` in one live sandbox, ``files.write`` /
``files.read`` of a 100 MB file, and creates per second with 1, 2 and 8 concurrent clients.
On the pool-off daemon also the daemon-overhead calls (overhead.py) and the density.

Every figure lands in ``Figures``: ``figures[key][subject]`` is ``{"unit", "samples"}``, or
``{"failed": why}`` if measuring it raised (the run goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import overhead
from common import (
    cpu_seconds,
    first_result,
    pss_mb,
    sandbox_pids,
    sandbox_pss_mb,
    timed,
)

from firebox import AsyncSandbox, Sandbox
from firebox.server.config import ServerConfig
from firebox.testing import LocalDaemon

BACKENDS = ("microvm", "gvisor", "jail")
DEFAULT_POOL = ServerConfig().pool_size
DENSITY_ARGS = [
    *("--max-sandboxes", "4096"),
    *("--min-free-memory-mb", "256"),
    *("--min-free-disk-mb", "256"),
]
HOST_FLOOR_MB = 2048  # the density growth stops before the host's available memory falls below
GIB16_MB = 16 * 1024
FILE_PATH = "/home/user/bench-blob.bin"
# seconds of sleep before each create of a first-result figure (common.first_result): with a
# pool, time for it to refill (a restored VM also runs its warm-up cell and command); without,
# time for the previous sandbox's clean-up
PACE = {
    ("microvm", False): 0.4,
    ("microvm", True): 1.5,
    ("jail", False): 0.3,
    ("jail", True): 1.0,
    # a restore from the template's checkpoint takes ~1 s of the host's CPU
    ("gvisor", False): 0.5,
    ("gvisor", True): 2.0,
}

Entry = dict[str, Any]
Figures = dict[str, dict[str, Entry]]


@dataclass
class Plan:
    runs: int  # samples of each latency figure (round trips: 3× as many)
    file_mb: int = 100
    file_runs: int = 3
    creates: int = 24  # per throughput figure
    clients: tuple[int, ...] = (1, 2, 8)
    density_budget_mb: int = 4096
    density_seconds: float = 240.0  # a cap on the growth per backend
    log: Callable[[str], None] = print
    details: dict[str, Any] = field(default_factory=dict)


def subject(backend: str, pool: bool) -> str:
    return f"firebox {backend}" + (" +pool" if pool else "")


def samples(unit: str, values: list[float]) -> Entry:
    return {"unit": unit, "samples": [round(v, 4) for v in values]}


class Recorder:
    """Puts each figure in ``figures``, or why it failed, and says how long it took."""

    def __init__(self, figures: Figures, log: Callable[[str], None]) -> None:
        self.figures = figures
        self.log = log

    def put(self, key: str, who: str, entry: Entry) -> None:
        self.figures.setdefault(key, {})[who] = entry

    def attempt(self, what: str, who: str, fn: Callable[[], dict[str, Entry]]) -> None:
        start = time.monotonic()
        try:
            got = fn()
        except Exception as exc:  # noqa: BLE001  (recorded and printed; the run goes on)
            self.log(f"  {who}: {what} FAILED: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            for key in what.split(","):
                self.put(key, who, {"failed": f"{type(exc).__name__}: {exc}"[:300]})
            return
        for key, entry in got.items():
            self.put(key, who, entry)
        self.log(f"  {who}: {what} ({time.monotonic() - start:.1f} s)")


# --- the figures -----------------------------------------------------------------------------


def first_results(backend: str, pool: bool, runs: int) -> dict[str, Entry]:
    pace = PACE[(backend, pool)]
    return {
        "create_first_command": samples(
            "ms", first_result(runs, lambda sbx: sbx.commands.run("true"), pace)
        ),
        "create_first_python": samples(
            "ms", first_result(runs, lambda sbx: sbx.run_code("1+1"), pace)
        ),
    }


def round_trips(live: Sandbox, runs: int) -> dict[str, Entry]:
    live.run_code("x = 0")
    return {
        "command_round_trip": samples("ms", timed(lambda: live.commands.run("true"), runs)),
        "python_round_trip": samples("ms", timed(lambda: live.run_code("x += 1"), runs)),
    }


_blobs: dict[int, bytes] = {}


def blob(size_mb: int) -> bytes:
    if size_mb not in _blobs:
        _blobs[size_mb] = os.urandom(size_mb << 20)
    return _blobs[size_mb]


def file_throughput(live: Sandbox, size_mb: int, runs: int) -> dict[str, Entry]:
    """MB/s (MiB) of ``files.write`` of ``size_mb`` random bytes (a bytes object, one request)
    then ``files.read(format="bytes")`` of it, ``runs`` times; the first write makes the file."""
    data = blob(size_mb)
    writes, reads = [], []
    for _ in range(runs):
        start = time.perf_counter()
        live.files.write(FILE_PATH, data, request_timeout=600)
        writes.append(size_mb / (time.perf_counter() - start))
        start = time.perf_counter()
        got = live.files.read(FILE_PATH, format="bytes", request_timeout=600)
        reads.append(size_mb / (time.perf_counter() - start))
        if len(got) != len(data):
            raise RuntimeError(f"read back {len(got)} bytes of {len(data)}")
        del got
    live.files.remove(FILE_PATH)
    return {"file_write": samples("MB/s", writes), "file_read": samples("MB/s", reads)}


def creates_per_second(clients: int, total: int) -> tuple[float, float]:
    """``total`` creates, each followed by its kill, by ``clients`` concurrent AsyncSandbox
    clients sharing the count: (creates per wall second, wall seconds)."""

    async def run() -> float:
        remaining = total

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                sbx = await AsyncSandbox.create(timeout=300)
                try:
                    await sbx.kill()
                finally:
                    await sbx.aclose()

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - start

    wall = asyncio.run(run())
    return total / wall, wall


def throughput(plan: Plan, who: str, settle: float) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    walls = {}
    for clients in plan.clients:
        time.sleep(settle)  # a pool full again, the previous kills cleaned up
        rate, wall = creates_per_second(clients, plan.creates)
        out[f"creates_per_s_{clients}"] = samples("/s", [rate])
        walls[clients] = round(wall, 3)
    plan.details.setdefault("throughput", {})[who] = {"creates": plan.creates, "wall_s": walls}
    return out


# --- density ----------------------------------------------------------------------------------


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def memfd_mb(pid: int) -> float:
    """Memory held in the memfds ``pid`` has open (a microvm daemon's template RAM, held once
    per template for every VM to map): their allocated size."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("/memfd:"):
                total += os.stat(fd).st_blocks * 512
    return total / 2**20


def density(daemon: LocalDaemon, backend: str, plan: Plan) -> dict[str, Entry]:
    """Idle sandboxes (each created, then ``run_code("1")`` once, then left alone) are added
    until the PSS summed over all of them (from /proc/<pid>/smaps_rollup of each sandbox's
    cgroup processes), plus what is held once for all (the microvm's template RAM in the
    daemon, the jail's zygote), would pass the budget; steps halve as the budget nears, to one
    sandbox at a time."""
    assert daemon.proc is not None

    def held_once() -> float:
        # for all sandboxes together: a microVM template's RAM in the daemon; the jail's
        # zygote (its PSS share, which shrinks as more sandboxes share its pages); nothing
        # for gVisor (each restore holds its own copy of the checkpoint's memory)
        if backend == "microvm":
            return memfd_mb(daemon.proc.pid) if daemon.proc is not None else 0.0
        if backend == "gvisor":
            return 0.0
        return pss_mb(daemon.zygote_pids())

    shared = held_once()
    budget = plan.density_budget_mb
    boxes: list[Sandbox] = []
    history: list[tuple[int, float, float]] = []  # (sandboxes, PSS sum, s)
    reached, total_reached, per = 0, 0.0, 0.0
    stop = ""
    t0 = time.monotonic()
    deadline = t0 + plan.density_seconds
    try:
        while not stop:
            step = 4 if not per else max(1, int((budget - shared - total_reached) / per / 2))
            for _ in range(step):
                if mem_available_mb() < HOST_FLOOR_MB:
                    stop = f"the host's available memory fell under {HOST_FLOOR_MB} MB"
                    break
                if time.monotonic() > deadline:
                    stop = f"the growth's time cap ({plan.density_seconds:.0f} s)"
                    break
                try:
                    sbx = Sandbox.create(timeout=1800)
                    boxes.append(sbx)
                    sbx.run_code("1")
                except Exception as exc:  # noqa: BLE001  (what stopped the growth: reported)
                    stop = f"a create failed: {type(exc).__name__}: {exc}"[:300]
                    break
            time.sleep(1.0)  # idle
            total = sum(sandbox_pss_mb(daemon, b.sandbox_id) for b in boxes)
            history.append((len(boxes), round(total, 1), round(time.monotonic() - t0, 1)))
            now_shared = held_once()
            if total + now_shared > budget:
                stop = stop or "the budget"
                break
            reached, total_reached, shared = len(boxes), total, now_shared
            per = total / reached
        # every one of them idle a while (as bench_microvm measures them), and what CPU idling
        # costs (a microVM's guest under TCG keeps its timer ticking in emulation)
        kept = [p for b in boxes[:reached] for p in sandbox_pids(daemon, b.sandbox_id)]
        cpu_before, start = cpu_seconds(kept), time.monotonic()
        time.sleep(3.0)
        idle_cpu = (cpu_seconds(kept) - cpu_before) / (time.monotonic() - start)
        per_box = [sandbox_pss_mb(daemon, b.sandbox_id) for b in boxes[:reached]]
        daemon_mb = pss_mb([daemon.proc.pid])
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: b.kill(), boxes))
        for b in boxes:
            b.close()
    per_mean = total_reached / reached if reached else 0.0
    fit16 = int((GIB16_MB - shared) // per_mean) if per_mean else 0
    plan.details.setdefault("density", {})[subject(backend, False)] = {
        "budget_mb": budget,
        "shared_mb": round(shared, 1),
        "reached": reached,
        "pss_sum_mb_at_reached": round(total_reached, 1),
        "stopped_by": stop,
        "history": history,
        "daemon_pss_mb": round(daemon_mb, 1),
        "idle_cpu_pct_per_sandbox": round(100 * idle_cpu / reached, 2) if reached else None,
        "per_16gib": fit16,
    }
    return {
        "idle_pss": samples("MB", per_box),
        "idle_fit_budget": samples("sandboxes", [reached]),
        "idle_per_16gib": samples("sandboxes", [fit16]),
    }


# --- one backend ------------------------------------------------------------------------------


FIGURE_KEYS = [
    "create_first_command",
    "create_first_python",
    "command_round_trip",
    "python_round_trip",
    "file_write",
    "file_read",
    "creates_per_s_1",
    "creates_per_s_2",
    "creates_per_s_8",
    "idle_pss",
    "idle_fit_budget",
    "idle_per_16gib",
]


def measure_backend(backend: str, plan: Plan, figures: Figures) -> None:
    rec = Recorder(figures, plan.log)
    for pool in (False, True):
        who = subject(backend, pool)
        try:
            measure_daemon(backend, pool, plan, rec)
        except Exception as exc:  # noqa: BLE001  (its daemon or live sandbox: the rest goes on)
            traceback.print_exc()
            why = f"{type(exc).__name__}: {exc}"[:300]
            plan.log(f"{who}: FAILED: {why}")
            for key in FIGURE_KEYS:
                if who not in figures.get(key, {}) and (not pool or not key.startswith("idle")):
                    rec.put(key, who, {"failed": why})


def measure_daemon(backend: str, pool: bool, plan: Plan, rec: Recorder) -> None:
    who, runs = subject(backend, pool), plan.runs
    plan.log(f"{who}: starting its daemon")
    daemon = LocalDaemon(
        isolation=backend, pool_size=None if pool else 0, args=[] if pool else DENSITY_ARGS
    )
    plan.details.setdefault("homes", []).append(str(daemon.home))
    try:
        with daemon:
            os.environ.update(daemon.env())
            rec.attempt(
                "create_first_command,create_first_python",
                who,
                lambda: first_results(backend, pool, runs),
            )
            with Sandbox.create(timeout=1800) as live:
                # a steady state: a pool refilling after this create would share the cores
                time.sleep(PACE[(backend, pool)] * 2)
                rec.attempt(
                    "command_round_trip,python_round_trip", who, lambda: round_trips(live, runs * 3)
                )
                rec.attempt(
                    "file_write,file_read",
                    who,
                    lambda: file_throughput(live, plan.file_mb, plan.file_runs),
                )
                if not pool:
                    rec.attempt(
                        "overhead",
                        who,
                        lambda: overhead_calls(daemon, live, runs * 3, backend, plan),
                    )
            settle = PACE[(backend, pool)] * 2
            rec.attempt(
                ",".join(f"creates_per_s_{c}" for c in plan.clients),
                who,
                lambda: throughput(plan, who, settle),
            )
            if not pool:
                rec.attempt(
                    "idle_pss,idle_fit_budget,idle_per_16gib",
                    who,
                    lambda: density(daemon, backend, plan),
                )
    finally:
        overhead.forget_home(daemon.home)


def overhead_calls(
    daemon: LocalDaemon, live: Sandbox, runs: int, backend: str, plan: Plan
) -> dict[str, Entry]:
    got = overhead.measure(backend, daemon, live.sandbox_id, runs)
    plan.details.setdefault("overhead", {})[backend] = got
    return {}


__all__ = ["BACKENDS", "DEFAULT_POOL", "DENSITY_ARGS", "Plan", "measure_backend", "subject"]
