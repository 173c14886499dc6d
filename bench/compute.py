"""What each backend costs your code: the same compute cells in a sandbox of each backend and
run bare by the image's own python, medians side by side with their ratio to bare.

    .venv/bin/python bench/compute.py [--runs N] [--backends jail,microvm,gvisor] [--cpus N]

As root. Cells (numpy arrays, the pandas frame and the chart's data are made outside the timed
part): a python loop of 1M additions; a numpy 500×500 matmul; a pandas groupby over 1M rows; a
matplotlib line chart saved as a PNG into a BytesIO (Agg); the same chart shown with
``plt.show()`` (captured by the interpreter as a PNG result); a cold ``import pandas, numpy,
matplotlib`` in a new ``python3 -c`` process.

Two figures per cell: *in cell*, ``time.perf_counter`` around the code inside the interpreter
(for the cold import: printed by the new process around its imports); *via SDK*, the wall time
of ``run_code`` (``commands.run`` for the cold import), channel and daemon included.

Bare: one python process of the default template's image (``firebox.images.image_path``),
chrooted into it as root, in a mount namespace of its own where the image is read-only, with
a tmpfs /tmp and a /proc (nothing it does can change the image every sandbox runs on). It runs
the same cells, exec'd in one namespace as IPython runs them; one per backend, its samples
alternated one by one with the sandbox's (on a shared host the load drifts within seconds).
Its *whole* figure is the cell itself (nothing stands between the caller and the code), and
for the cold import the new process's wall time. ``plt.show()`` bare is what the capture
does: ``savefig`` to PNG with ``bbox_inches="tight"``, base64-encoded.

Each backend gets a daemon of its own (``LocalDaemon``: own FIREBOX_HOME, loopback, stopped by
PID, pool off) and one sandbox with ``--cpus`` cores (default: the host's, as bare has). A
backend whose daemon or first sandbox does not start is reported unavailable, with why. One
warm-up, then the median of ``--runs``. Writes bench/results/compute-<date>.json and .md;
bench/run.py runs it as its last section.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import RESULTS

from firebox import Sandbox, images, testing
from firebox.testing import LocalDaemon

WARMUP = 1
START_DEADLINE = 900.0  # s, for a daemon to answer
LONG = 1800  # s: a first create builds a microVM's snapshot; a cell under emulation is slow
COLD_IMPORT = (
    "import time; t = time.perf_counter(); import pandas, numpy, matplotlib; "
    "print((time.perf_counter() - t) * 1000)"
)
CHART = (
    "import io, base64\nimport numpy as np\nimport matplotlib\nmatplotlib.use('Agg')\n"
    "import matplotlib.pyplot as plt\nx = np.linspace(0, 10, 1000)\ny = np.sin(x)\n"
)
# the timing wraps the cell's code in the cell itself, so the channel's round trip is not in it
TIMED = (
    "import time as _time\n_t0 = _time.perf_counter()\n{body}\n"
    "_ms = (_time.perf_counter() - _t0) * 1000\n"
)
# what the bare figures must show to compare like with like: the same cores, the same libraries
PROBE = (
    "import os as _os, sys as _sys, numpy as _np, pandas as _pd, matplotlib as _mpl\n"
    "_probe = {'cpus': _os.cpu_count(), 'affinity': len(_os.sched_getaffinity(0)), "
    "'python': _sys.version.split()[0], 'numpy': _np.__version__, 'pandas': _pd.__version__, "
    "'matplotlib': _mpl.__version__}\n"
)


@dataclass(frozen=True)
class Cell:
    key: str
    title: str
    setup: str = ""  # run once before, not timed
    body: str = ""
    bare_body: str | None = None  # where bare has no interpreter to capture for it
    command: str | None = None  # a new process instead of a cell


CELLS = [
    Cell("loop", "python loop, 1M × `s += i*i`", body="s = 0\nfor i in range(1_000_000): s += i*i"),
    Cell(
        "matmul",
        "numpy 500×500 matmul",
        setup="import numpy as np\na = np.random.rand(500, 500)",
        body="_r = a @ a",
    ),
    Cell(
        "groupby",
        "pandas groupby, 1M rows",
        setup="import numpy as np, pandas as pd\ndf = pd.DataFrame({'k': np.random.randint("
        "0, 1000, 1_000_000), 'v': np.random.rand(1_000_000)})",
        body="_r = df.groupby('k')['v'].mean()",
    ),
    Cell(
        "savefig",
        "matplotlib line chart → `savefig` PNG (BytesIO)",
        setup=CHART,
        body="fig, ax = plt.subplots()\nax.plot(x, y)\n_buf = io.BytesIO()\n"
        "fig.savefig(_buf, format='png')\nplt.close(fig)",
    ),
    Cell(
        "show",
        "the same chart, `plt.show()` captured",
        setup=CHART,
        body="plt.figure()\nplt.plot(x, y)\nplt.show()",
        bare_body="fig = plt.figure()\nplt.plot(x, y)\n_buf = io.BytesIO()\nfig.savefig(_buf, "
        "format='png', bbox_inches='tight')\nbase64.b64encode(_buf.getvalue())\nplt.close(fig)",
    ),
    Cell("import", "cold `import pandas, numpy, matplotlib` (new process)", command=COLD_IMPORT),
]

# Bare: the image's python in the chroot, driven a request a line on its stdin, a JSON answer a
# line on its stdout, so that its samples alternate with the sandbox's one by one (on a shared
# host the load drifts within seconds). Cells share one namespace, as in the sandbox's context.
DRIVER = """
import json, subprocess, sys, time
ns = {"__name__": "__main__"}
for line in sys.stdin:
    req = json.loads(line)
    try:
        if "setup" in req:
            exec(req["setup"], ns)
            reply = {"probe": ns.get("_probe")}
        elif "command" in req:
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", req["command"]], check=True,
                                  capture_output=True, text=True)
            wall = (time.perf_counter() - t0) * 1000
            reply = {"inside": float(done.stdout.split()[-1]), "wall": wall}
        else:
            exec(req["timed"], ns)
            reply = {"inside": ns["_ms"], "wall": ns["_ms"]}
    except Exception as exc:
        reply = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(reply), flush=True)
"""
# In a mount namespace of its own (gone with the process): the image read-only, /tmp and /proc
# its own, then chroot. Python writes no bytecode; matplotlib's cache goes to that /tmp.
CHROOT = (
    'r=$1; shift; mount --bind "$r" "$r" && mount -o remount,bind,ro "$r" && '
    'mount -t tmpfs -o size=256m tmpfs "$r/tmp" && mount -t proc proc "$r/proc" && '
    'exec chroot "$r" "$@"'
)
BARE_ENV = [
    *("PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "MPLCONFIGDIR=/tmp/matplotlib"),
    *("PYTHONDONTWRITEBYTECODE=1", "LANG=C.UTF-8"),
]


class Bare:
    """The image's own python, chrooted into it, no sandbox; stopped by its PID."""

    def __init__(self, rootfs: Path) -> None:
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", CHROOT]
        argv += ["sh", str(rootfs), "/usr/bin/env", "-i", *BARE_ENV, "/usr/bin/python3"]
        self.proc = subprocess.Popen(
            [*argv, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, **request: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bare python exited ({self.proc.wait(10)}); see stderr above")
        reply = json.loads(line)
        if "failed" in reply:
            raise RuntimeError(f"bare: {reply['failed']}")
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # its loop ends
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def sandbox_sample(sbx: Sandbox, cell: Cell) -> tuple[float, float]:
    """(ms in the cell, ms of the SDK's call) of one run of ``cell`` in ``sbx``."""
    start = time.perf_counter()
    if cell.command is not None:
        command = f"python3 -c {shlex.quote(cell.command)}"
        out = sbx.commands.run(command, timeout=LONG, request_timeout=LONG)
        return float(out.stdout.split()[-1]), (time.perf_counter() - start) * 1000
    code = TIMED.format(body=cell.body) + "print('@ms', repr(_ms))"
    execution = sbx.run_code(code, request_timeout=LONG)
    elapsed = (time.perf_counter() - start) * 1000
    check(execution)
    if cell.key == "show" and not any(r.png for r in execution.results):
        raise RuntimeError("plt.show() gave no PNG result")
    found = re.search(r"@ms (\S+)", "".join(execution.logs.stdout))
    if found is None:
        raise RuntimeError(f"no timing in the cell's output: {execution.logs}")
    return float(found.group(1)), elapsed


def run_cell(sbx: Sandbox, bare: Bare, cell: Cell, runs: int) -> dict[str, Any]:
    if cell.command is None:
        check(sbx.run_code(cell.setup or "pass", request_timeout=LONG))
        bare.ask(setup=cell.setup)
    got: dict[str, Any] = {
        "sandbox": {"inside": [], "wall": []},
        "bare": {"inside": [], "wall": []},
    }
    for i in range(WARMUP + runs):
        # which goes first alternates too, so neither always follows the other's work
        for side in ("bare", "sandbox") if i % 2 else ("sandbox", "bare"):
            if side == "sandbox":
                inside, wall = sandbox_sample(sbx, cell)
            else:
                reply = (
                    bare.ask(command=cell.command)
                    if cell.command is not None
                    else bare.ask(timed=TIMED.format(body=cell.bare_body or cell.body))
                )
                inside, wall = reply["inside"], reply["wall"]
            if i >= WARMUP:
                got[side]["inside"].append(inside)
                got[side]["wall"].append(wall)
    return got


def check(execution: Any) -> Any:
    if execution.error is not None:
        raise RuntimeError(f"{execution.error.name}: {execution.error.value}")
    return execution


def measure_backend(
    backend: str, rootfs: Path, runs: int, cpus: float, log: Callable[[str], None], homes: list[str]
) -> dict[str, Any]:
    daemon = LocalDaemon(isolation=backend, pool_size=0)  # no pool refill beside the cells
    homes.append(str(daemon.home))
    try:
        # a microVM daemon makes its template's snapshot before it answers: a cold boot, minutes
        # under emulation on a loaded host, past the deadline LocalDaemon keeps for tests
        deadline, testing.START_DEADLINE = testing.START_DEADLINE, START_DEADLINE
        try:
            daemon.start()
        except Exception as exc:  # noqa: BLE001  (a backend that cannot run here: reported)
            lines = [line for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
            why = lines[0].split(";")[0] + (
                f" (its log's last line: {lines[-1]})" if len(lines) > 1 else ""
            )
            return {"unavailable": why[:400]}
        finally:
            testing.START_DEADLINE = deadline
        try:
            sbx = Sandbox.create(
                timeout=3600,
                limits={"cpu_count": cpus},
                api_url=daemon.url,
                api_key=daemon.key,
                request_timeout=LONG,
            )
        except Exception as exc:  # noqa: BLE001  (a daemon up whose sandboxes cannot start)
            return {"unavailable": f"no sandbox starts: {type(exc).__name__}: {exc}"[:300]}
        out: dict[str, Any] = {"cpus": cpus, "cells": {}}
        with sbx:
            bare = Bare(rootfs)
            try:
                code = PROBE + "import json\nprint(json.dumps(_probe))"
                probe = check(sbx.run_code(code, request_timeout=LONG))
                out["probe"] = json.loads("".join(probe.logs.stdout).splitlines()[-1])
                out["bare_probe"] = bare.ask(setup=PROBE)["probe"]
                for cell in CELLS:
                    start = time.monotonic()
                    try:
                        out["cells"][cell.key] = run_cell(sbx, bare, cell, runs)
                    except Exception as exc:  # noqa: BLE001  (recorded; the other cells go on)
                        out["cells"][cell.key] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
                    log(f"  {backend}: {cell.key} ({time.monotonic() - start:.1f} s)")
            finally:
                bare.close()
        return out
    except Exception as exc:  # noqa: BLE001  (its sandbox failed: the other backends go on)
        return {"failed": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        daemon.stop()
        shutil.rmtree(daemon.home, ignore_errors=True)


def measure(
    backends: list[str],
    runs: int,
    cpus: float | None = None,
    log: Callable[[str], None] = print,
    homes: list[str] | None = None,
) -> dict[str, Any]:
    """Each backend in turn, beside bare; the samples, their medians and ratios to bare."""
    cpus = cpus or float(os.cpu_count() or 1)
    homes = [] if homes is None else homes
    results: dict[str, Any] = {"runs": runs, "warmup": WARMUP, "backends": {}}
    rootfs = images.image_path(images.DEFAULT_TEMPLATE)
    results["rootfs"] = str(rootfs)
    for backend in backends:
        log(f"compute: {backend}, beside bare")
        if rootfs is None:
            got = {"unavailable": "the default template's image is not built (scripts/install)"}
        else:
            got = measure_backend(backend, rootfs, runs, cpus, log, homes)
        results["backends"][backend] = got
        if "unavailable" in got or "failed" in got:
            log(f"  {backend}: {got.get('unavailable') or got.get('failed')}")
    summarize(results)
    return results


def summarize(results: dict[str, Any]) -> None:
    """Adds to each cell of each backend ``median`` ({sandbox, bare} × {inside, wall}) and
    ``ratio`` ({inside, wall}: the sandbox's median ÷ bare's)."""
    for env in results["backends"].values():
        for got in env.get("cells", {}).values():
            if "failed" in got:
                continue
            med = {side: {m: statistics.median(v) for m, v in got[side].items()} for side in got}
            got["median"] = med
            got["ratio"] = {m: med["sandbox"][m] / med["bare"][m] for m in ("inside", "wall")}


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def markdown_lines(results: dict[str, Any]) -> list[str]:
    out = [
        "",
        "## What each backend costs your code (medians, ms)",
        "",
        f"Median of {results['runs']} after {results['warmup']} warm-up (bench/compute.py), "
        "each backend's samples alternated one by one with bare's. *in cell*: `perf_counter` "
        "around the code inside the interpreter (the cold import: inside the new process); "
        "*via SDK*: the wall time of `run_code` or `commands.run`. Bare: the image's python "
        "chrooted into it on the host, no sandbox; its *whole* is the cell itself (the cold "
        "import: the new process's wall time). Bare's `plt.show()` is `savefig` to PNG "
        "(`bbox_inches='tight'`) and base64, what the capture does.",
    ]
    for name, env in results["backends"].items():
        out += ["", f"### {name}", ""]
        for key, why in (("unavailable", "unavailable"), ("failed", "FAILED")):
            if key in env:
                out.append(f"{why}: {env[key]}")
        if "cells" not in env:
            continue
        out += [
            "| cell | bare in cell | in cell | ÷ bare | bare whole | via SDK | ÷ bare |",
            "|---|---|---|---|---|---|---|",
        ]
        notes = []
        for cell in CELLS:
            got = env["cells"].get(cell.key, {})
            if "median" not in got:
                out.append(f"| {cell.title} | FAILED |" + " |" * 5)
                notes.append(f"- {cell.key}: FAILED: {got.get('failed', 'not run')}")
                continue
            med, ratio = got["median"], got["ratio"]
            row = [cell.title]
            for m in ("inside", "wall"):
                row += [ms(med["bare"][m]), ms(med["sandbox"][m]), f"{ratio[m]:.2f}×"]
            out.append("| " + " | ".join(row) + " |")
        out += ["", *notes]
        for who, probe in (("sandbox", env.get("probe")), ("bare", env.get("bare_probe"))):
            if probe:
                out.append(
                    f"- {who}: {probe['cpus']} cpus ({probe['affinity']} usable), python "
                    f"{probe['python']}, numpy {probe['numpy']}, pandas {probe['pandas']}, "
                    f"matplotlib {probe['matplotlib']}"
                    + (f"; asked for {env['cpus']:g} cores" if who == "sandbox" else "")
                )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="samples per figure (default 3)")
    ap.add_argument("--backends", default="jail,microvm,gvisor", help="comma-separated")
    ap.add_argument("--cpus", type=float, help="cores each sandbox asks for (default: the host's)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the daemons and the chroot need it", file=sys.stderr)
        return 1
    t0, load = time.monotonic(), os.getloadavg()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    backends = [b for b in args.backends.split(",") if b]
    results = measure(backends, args.runs, args.cpus, log)
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": ".venv/bin/python " + shlex.join(["bench/compute.py", *sys.argv[1:]]),
        "wall_s": round(time.monotonic() - t0, 1),
        "loadavg_start": load,
        "loadavg_end": os.getloadavg(),
    }
    text = "\n".join(markdown_lines(results)) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"compute-{time.strftime('%Y-%m-%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    meta = results["meta"]
    stem.with_suffix(".md").write_text(
        f"# compute, {meta['date']}\n\n`{meta['command']}`; {meta['wall_s']} s; 1-min load "
        f"average {load[0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end\n{text}"
    )
    log(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
