"""Core benchmark: sandbox create → first command / run_code result, and round trips.

Measured side by side in one run against the two floors a jail cannot beat:
  * bare ``python3 -c pass`` by the interpreter's real path (no version-manager shim);
  * bare ``bwrap … python3 -c pass`` over the same root image, as the same unprivileged uid.

Starts its own daemon on a free loopback port (state in a temp dir), stops it by PID at the end,
prints medians and ratios, and writes them to bench/results/core.json.

    .venv/bin/python bench/bench_core.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from common import RESULTS, first_result, timed  # beside this file; puts the repository on the path

from firebox import Sandbox, images
from firebox.server.config import ServerConfig
from firebox.testing import LocalDaemon

__all__ = ["first_result", "timed"]  # where other scripts found them first


def measure_daemon(label: str, pool_size: int, runs: int) -> dict[str, list[float]]:
    """create → first result and round trips against a daemon with the given pool size."""
    out: dict[str, list[float]] = {}
    with LocalDaemon(pool_size=pool_size) as daemon:
        os.environ.update(daemon.env())
        out[f"create → first command result ({label})"] = first_result(
            runs, lambda sbx: sbx.commands.run("true"), 0.5
        )
        out[f"create → first run_code result ({label})"] = first_result(
            runs, lambda sbx: sbx.run_code("1 + 1"), 1.0
        )
        if pool_size == 0:
            with Sandbox.create() as sbx:
                out["commands.run('true') round trip"] = timed(
                    lambda: sbx.commands.run("true"), runs * 3
                )
                sbx.run_code("x = 0")
                out["run_code('x += 1') round trip"] = timed(
                    lambda: sbx.run_code("x += 1"), runs * 3
                )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()

    rootfs = images.build_image(images.DEFAULT_TEMPLATE)
    python = os.path.realpath("/usr/bin/python3")
    uid = ServerConfig().uid_base
    bare_bwrap = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--ro-bind",
        str(rootfs),
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--",
        "/usr/bin/python3",
        "-c",
        "pass",
    ]
    results: dict[str, list[float]] = {}
    results["bare python3 -c"] = timed(
        lambda: subprocess.run([python, "-c", "pass"], check=True), args.runs
    )
    results["bare bwrap python3 -c"] = timed(
        lambda: subprocess.run(bare_bwrap, check=True, user=uid, group=uid, extra_groups=[]),
        args.runs,
    )

    for label, pool_size in (("warm pool", 2), ("no pool", 0)):
        results.update(measure_daemon(label, pool_size, args.runs))

    medians = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"\nfirebox core benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, medians of {args.runs} runs\n"
    )
    for name, med in medians.items():
        print(f"  {name:45} {med:8.2f} ms")
    base_py = medians["bare python3 -c"]
    base_bw = medians["bare bwrap python3 -c"]
    print()
    for what in ("command", "run_code"):
        for label in ("warm pool", "no pool"):
            create = medians[f"create → first {what} result ({label})"]
            print(
                f"  create → first {what} result, {label}: {create / base_py:.2f}× bare "
                f"python3, {create / base_bw:.2f}× bare bwrap (target ≤ 40 ms: "
                f"{'met' if create <= 40 else 'NOT met'})"
            )
    for name in ("commands.run('true') round trip", "run_code('x += 1') round trip"):
        rtt = medians[name]
        print(f"  {name}: {rtt:.2f} ms (target ≤ 3 ms: {'met' if rtt <= 3 else 'NOT met'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "core.json").write_text(
        json.dumps({"medians_ms": medians, "runs": args.runs}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
