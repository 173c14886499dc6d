"""microvm benchmark: snapshot restores beside the jail and a cold boot of the same guest.

Measured in one run, each backend through its own daemon (started here on a free loopback
port, stopped by PID at the end):

  * create → agent ready (``Sandbox.create()`` returns once the agent has said hello), and
    create → first ``run_code("1 + 1")`` result, with the warm pool off and on;
  * ``run_code("x += 1")`` and ``commands.run("true")`` round trips in a live sandbox;
  * memory per idle sandbox: the PSS (from /proc/<pid>/smaps_rollup on the host) of every
    process in each sandbox's cgroup, with N idle sandboxes up at once; and how many such
    sandboxes fit in 16 GiB (for the microvm, after the template's RAM, held once per template);
  * the floor: a cold QEMU boot of the same guest (kernel, initramfs, root disk; no
    snapshot) to the agent's hello, unjailed.

    .venv/bin/python bench/bench_microvm.py [--runs 20] [--idle 10]

Prints medians and writes them, with the raw samples, to bench/results/microvm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, first_result, sandbox_pss_mb, timed  # beside this file

from firebox import Sandbox, images
from firebox.agent_client import AgentClient
from firebox.backends.agent_files import stage
from firebox.backends.microvm import initramfs, qemu, snapshot
from firebox.images import vmboot
from firebox.images.cache import image_root
from firebox.testing import LocalDaemon

BUDGET_MB = 16 * 1024


def measure(backend: str, runs: int, idle: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    # the restore of a VM costs more CPU than a jail: give its pool time to refill
    pace = 1.5 if backend == "microvm" else 0.5
    for label, pool in (("no pool", 0), ("warm pool", 2)):
        with LocalDaemon(isolation=backend, pool_size=pool) as daemon:
            os.environ.update(daemon.env())
            out[f"{backend}: create → agent ready ({label})"] = first_result(
                runs, None, pace, warmup=1
            )
            out[f"{backend}: create → first run_code result ({label})"] = first_result(
                runs, lambda sbx: sbx.run_code("1 + 1"), pace, warmup=1
            )
            if pool:
                continue
            with Sandbox.create() as live:
                live.run_code("x = 0")
                out[f"{backend}: run_code('x += 1') round trip"] = timed(
                    lambda: live.run_code("x += 1"), runs * 2
                )
                out[f"{backend}: commands.run('true') round trip"] = timed(
                    lambda: live.commands.run("true"), runs * 2
                )
            boxes = [Sandbox.create(timeout=600) for _ in range(idle)]
            try:
                for sbx in boxes:
                    sbx.run_code("1")  # a used sandbox: its python context has run a cell
                time.sleep(3)  # idle
                out[f"{backend}: PSS per idle sandbox (MB)"] = [
                    sandbox_pss_mb(daemon, sbx.sandbox_id) for sbx in boxes
                ]
            finally:
                for sbx in boxes:
                    sbx.kill()
    return out


async def cold_boots(runs: int) -> list[float]:
    """A cold QEMU boot of the same guest to the agent's hello: no snapshot, no jail."""
    pieces = vmboot.boot_pieces()
    rootfs = images.build_image(images.DEFAULT_TEMPLATE)
    disk = vmboot.root_disk(rootfs)
    initrd = initramfs.build(pieces, stage(image_root()), image_root() / "vmboot-initramfs", 64, "")
    binary = qemu.qemu_binary()
    assert binary is not None
    samples = []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="firebox-coldboot-"))
        try:
            snapshot.make_rw_disk(work / "rw.img", 256)
            vm = qemu.VmConfig(
                vmlinux=pieces.vmlinux,
                initramfs=initrd,
                root_disk=disk,
                rw_disk=work / "rw.img",
                rw_format="raw",
                agent_socket=work / "agent.sock",
                qmp_socket=work / "qmp.sock",
                memory_mb=512,
                cpus=1,
                accel="tcg",
                mem_path="/dev/shm",
                share_ram=False,
            )
            start = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *qemu.argv(binary, vm),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                reader, writer = await qemu.connect_unix(work / "agent.sock", 120, proc=proc)
                agent = AgentClient(reader, writer)
                await agent.wait_hello(120)
                samples.append((time.perf_counter() - start) * 1000)
                await agent.close()
            finally:
                proc.kill()
                await proc.wait()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle", type=int, default=10, help="idle sandboxes for the PSS figure")
    ap.add_argument("--cold-boots", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the daemons run sandboxes as unprivileged host uids)")
        return 1

    results: dict[str, list[float]] = {}
    results["cold QEMU boot of the same guest → agent ready (TCG, no snapshot)"] = asyncio.run(
        cold_boots(args.cold_boots)
    )
    for backend in ("microvm", "jail"):
        results.update(measure(backend, args.runs, args.idle))

    medians = {k: statistics.median(v) for k, v in results.items()}
    template_mb = snapshot_ram_mb()
    print(
        f"\nfirebox microvm benchmark — {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, medians of {args.runs} runs\n"
    )
    for name, med in medians.items():
        unit = "MB" if "MB" in name else "ms"
        print(f"  {name:62} {med:9.1f} {unit}")
    cold = medians["cold QEMU boot of the same guest → agent ready (TCG, no snapshot)"]
    print()
    targets = [
        ("microvm: create → agent ready (no pool)", 100),
        ("microvm: create → first run_code result (no pool)", 250),
        ("microvm: create → first run_code result (warm pool)", 50),
        ("microvm: run_code('x += 1') round trip", 30),
    ]
    for name, limit in targets:
        med = medians[name]
        print(
            f"  {name}: {med:.0f} ms = {med / cold:.3f}× a cold boot "
            f"(target ≤ {limit} ms: {'met' if med <= limit else 'NOT met'})"
        )
    fits = {}
    for backend, shared in (("microvm", template_mb), ("jail", 0.0)):
        per = medians[f"{backend}: PSS per idle sandbox (MB)"]
        fits[backend] = int((BUDGET_MB - shared) // per) if per else 0
        extra = f", after {shared:.0f} MB of template RAM held once" if shared else ""
        print(
            f"  {backend}: {per:.1f} MB PSS per idle sandbox → {fits[backend]} fit in 16 GiB"
            + extra
        )
    print(f"  (microvm target ≥ 200: {'met' if fits['microvm'] >= 200 else 'NOT met'})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "microvm.json").write_text(
        json.dumps(
            {
                "medians": medians,
                "samples": results,
                "template_ram_mb": template_mb,
                "idle_sandboxes_in_16GiB": fits,
                "runs": args.runs,
                "date": time.strftime("%Y-%m-%d"),
            },
            indent=2,
        )
    )
    return 0


def snapshot_ram_mb() -> float:
    """The template RAM a daemon holds once per template (a sealed memfd of the whole RAM)."""
    found = sorted(snapshot.snapshots_dir(image_root()).glob("python-*/mem"))
    return found[-1].stat().st_size / 2**20 if found else 0.0


if __name__ == "__main__":
    sys.exit(main())
