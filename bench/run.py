"""The benchmark: every figure of firebox beside its floors and peers, in one run.

    .venv/bin/python bench/run.py [--runs N] [--quick] [--density-budget-mb MB]

As root, after the README's set-up and `bench/peers/install.sh` (once). In this order:

  1. the floors and peers of bench/peers (baselines.py): bare python, bare bwrap, a cold QEMU
     boot, gVisor runsc, llm-sandbox on Docker and on bubblewrap, epicbox; each skipped with
     its reason when it cannot run here;
  2. firebox on each backend, microvm, gvisor then jail, warm pool off and on (firebox_figures.py),
     each through a daemon of its own; on the pool-off one also the daemon's overhead per
     call (overhead.py) and the density;
  3. what each backend costs your code (compute.py): compute cells in a sandbox of each
     backend beside the same cells run bare in a chroot of the image.

Writes the raw samples to bench/results/run-<date>.json and latest.json and the table of
medians, p95, ratios and targets to bench/results/latest.md (report.py), which it prints too.
Then looks for anything of this run left behind (leftovers.py) and says so. Everything started
is stopped by PID: daemons, drivers, the Docker engine, runsc sandboxes, QEMU.

--quick is a smoke run of a few minutes: few samples, a 1 GiB density budget, 1 cold boot.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import compute
import leftovers
import overhead
import report
from baselines import PeerPlan, measure_peers
from firebox_figures import BACKENDS, DEFAULT_POOL, Plan, measure_backend

from firebox import images

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 2**20
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.procs").exists() else "v1"
    distro = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            distro = line.split("=", 1)[1].strip('"')
    return (
        f"{platform.node()}: {distro}, kernel {platform.release()}, {os.cpu_count()} cores "
        f"({model}), {mem} GiB, cgroup {cgroup}, Python {platform.python_version()}"
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, help="samples per create figure (default 12; quick 3)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    ap.add_argument(
        "--density-budget-mb",
        type=int,
        help="memory budget the idle sandboxes are grown to (default 4096; quick 1024)",
    )
    ap.add_argument(
        "--backend", choices=BACKENDS, action="append", help="only this firebox backend"
    )
    ap.add_argument("--skip-peers", action="store_true", help="no floors or peers (development)")
    ap.add_argument("--skip-compute", action="store_true", help="no compute cells (development)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: the daemons run sandboxes as unprivileged host uids", file=sys.stderr)
        return 1
    quick = args.quick
    runs = args.runs or (3 if quick else 12)
    plan = Plan(
        runs=runs,
        file_runs=1 if quick else 3,
        creates=8 if quick else 24,
        density_budget_mb=args.density_budget_mb or (1024 if quick else 4096),
        density_seconds=45 if quick else 240,
        log=log,
    )
    peer_plan = PeerPlan(
        runs=runs, cold_boot_runs=1 if quick else 3, idle=3 if quick else 8, log=log
    )
    backends = args.backend or list(BACKENDS)
    argv = ["bench/run.py", *sys.argv[1:]]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    mounts = leftovers.mounts_before()
    log(f"image: {images.build_image(images.DEFAULT_TEMPLATE)}")  # built already: a lookup

    figures: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    if not args.skip_peers:
        measure_peers(peer_plan, figures, baselines)
    for backend in backends:
        measure_backend(backend, plan, figures)
    computed: dict[str, Any] = {}
    if not args.skip_compute:
        homes = plan.details.setdefault("homes", [])
        computed = compute.measure(backends, 1 if quick else 3, log=log, homes=homes)

    over: dict[str, Any] = {}
    for backend, got in plan.details.get("overhead", {}).items():
        over[backend] = {
            "samples": {k: [round(v, 4) for v in vs] for k, vs in got.items()},
            "medians": {k: statistics.median(v) for k, v in got.items()},
            "derived": overhead.breakdown(got),
        }
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d"),
            "started": started,
            "command": ".venv/bin/python " + shlex.join(argv),
            "machine": machine(),
            "runs": runs,
            "quick": quick,
            "file_mb": plan.file_mb,
            "file_runs": plan.file_runs,
            "creates": plan.creates,
            "clients": list(plan.clients),
            "pool_size_on": DEFAULT_POOL,
            "density_budget_mb": plan.density_budget_mb,
            "json_name": report.json_name(),
        },
        "figures": figures,
        "overhead": over,
        "density": plan.details.get("density", {}),
        "throughput": plan.details.get("throughput", {}),
        "baselines": baselines,
        "compute": computed,
    }
    report.summarize(results)
    log("looking for anything left behind")
    results["leftovers"] = leftovers.find(plan.details.get("homes", []), mounts)
    results["meta"]["wall_s"] = round(time.monotonic() - T0, 1)
    raw_path, md_path = report.write(results)
    print(md_path.read_text())
    log(f"wrote {raw_path}, {md_path.parent / 'latest.json'} and {md_path}")
    if results["leftovers"]:
        log("LEFT BEHIND:\n  " + "\n  ".join(results["leftovers"]))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
