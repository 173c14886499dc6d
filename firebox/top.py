"""``firebox sandbox top``: the key's sandboxes and what each uses now, for a person.

Each row is a sandbox's latest sample from the daemon's sampler (``get_metrics``: measured
from the host, every 5 s), refreshed every ``--interval`` seconds until Ctrl-C, or printed once
with ``--once``.
"""

from __future__ import annotations

import sys
import time

from firebox import FireboxException, Sandbox, SandboxMetrics

MiB = 1 << 20
HEADER = f"{'SANDBOX':22} {'TEMPLATE':12} {'STATE':8} {'CPU':>7} {'MEMORY':>17} {'DISK':>17}"


def _amount(used: int | None, total: int | None) -> str:
    if used is None:
        return "-"
    return f"{used / MiB:.0f}/{total / MiB:.0f} MB" if total else f"{used / MiB:.0f} MB"


def rows() -> list[str]:
    out = [HEADER]
    for info in Sandbox.list():
        latest: SandboxMetrics | None = None
        try:
            samples = Sandbox.get_metrics(info.sandbox_id)
            latest = samples[-1] if samples else None
        except FireboxException:  # it ended meanwhile
            continue
        cpu = "-"
        mem = disk = "-"
        if latest is not None:
            if latest.cpu_used_pct is not None:
                cpu = f"{latest.cpu_used_pct:.0f}% of {latest.cpu_count:g}"
            mem = _amount(latest.mem_used, latest.mem_total)
            disk = _amount(latest.disk_used, latest.disk_total)
        out.append(
            f"{info.sandbox_id:22} {info.template:12.12} {info.state:8} {cpu:>7} {mem:>17} "
            f"{disk:>17}"
        )
    return out


def top(once: bool = False, interval: float = 2.0) -> int:
    clear = sys.stdout.isatty() and not once
    try:
        while True:
            lines = rows()
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            print("\n".join(lines), flush=True)
            if once:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
