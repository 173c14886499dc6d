"""Idle processes held up at once, for the floors' memory figure."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from .base import process_tree, pss_mb

IDLE_SECONDS = 3.0


def idle_pss(argvs: list[list[str]], **popen: Any) -> list[float]:
    """Start each argv (which prints a line once ready, then waits on stdin), let them all idle
    for a few seconds, and return the PSS in MB of each one's process tree. They are stopped
    afterwards by closing their stdin, then by PID."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, **popen
            )
            procs.append(proc)
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"{argv[0]} exited before it was ready ({proc.wait()})")
        time.sleep(IDLE_SECONDS)
        return [pss_mb(process_tree(p.pid)) for p in procs]
    finally:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()
