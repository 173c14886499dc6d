"""A new code context's cost: create → ready, its first cell, a restart, and the memory each
python context adds, per backend.

    .venv/bin/python bench/contexts.py [--runs N] [--backends jail,microvm]

Every python context after a sandbox's first is forked from the user's fork server
(firebox/agent/forkserver.py). In a jail the first such context also starts the fork server,
so it is reported apart ("first extra context"): that is what every context cost when each was
a python started anew. A microVM's template has the fork server in its snapshot already.

Memory: the sandbox's PSS on the host (bench/common.py) before and after ``--runs`` python
contexts each ran a cell using pandas, divided by their number.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import sandbox_pss_mb

from firebox import Sandbox
from firebox.testing import LocalDaemon


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def measure(backend: str, runs: int) -> None:
    with LocalDaemon(isolation=backend, pool_size=0) as daemon:
        os.environ.update(daemon.env())
        with Sandbox.create(timeout=600) as sbx:
            sbx.run_code("1")  # the default context ready: what follows is the contexts' own
            before = sandbox_pss_mb(daemon, sbx.sandbox_id)
            start = time.perf_counter()
            first = sbx.create_code_context()
            first_ms = ms(start)
            creates, cells, restarts = [], [], []
            contexts = [first]
            for _ in range(runs):
                start = time.perf_counter()
                ctx = sbx.create_code_context()
                creates.append(ms(start))
                start = time.perf_counter()
                sbx.run_code("import pandas as pd; len(pd.DataFrame({'a': [1, 2]}))", context=ctx)
                cells.append(ms(start))
                contexts.append(ctx)
            for ctx in contexts[1:]:
                start = time.perf_counter()
                sbx.restart_code_context(ctx)
                restarts.append(ms(start))
                sbx.run_code("import pandas as pd; len(pd.DataFrame({'a': [1, 2]}))", context=ctx)
            per_context = (sandbox_pss_mb(daemon, sbx.sandbox_id) - before) / len(contexts)
    print(
        f"{backend:8}  first extra context {first_ms:7.1f} ms | median of {runs}: "
        f"create {statistics.median(creates):7.1f} ms, first cell (pandas) "
        f"{statistics.median(cells):7.1f} ms, restart {statistics.median(restarts):7.1f} ms | "
        f"PSS per python context {per_context:5.1f} MB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backends", default="jail,microvm")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        measure(backend, args.runs)


if __name__ == "__main__":
    main()
