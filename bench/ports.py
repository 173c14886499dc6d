"""Ports and terminals: a server in a sandbox reached through its preview host, beside the
same server reached directly on the host's loopback (the floor), and a terminal's echo.

    .venv/bin/python bench/ports.py [--backends jail,gvisor,microvm] [--runs N] [--mb N]

As root. The server is tests/ports/server.py (python's standard library), run in a sandbox of
each backend (a daemon of its own per backend: ``LocalDaemon``, own FIREBOX_HOME, loopback,
stopped by PID, pool off) and, for the floor, by the host's python on a free loopback port.
Figures, medians of ``--runs``:

- HTTP round trip: ``GET /`` on one kept-alive client (the proxy opens a connection to the
  sandbox per request: that is part of what is measured);
- throughput: a ``--mb`` MB download and upload, MB/s;
- WebSocket round trip: one 64-byte message echoed, on one open socket;
- terminal echo: one key typed into a terminal session (``sandbox.pty``) until its echo shows.

Writes bench/results/ports-<date>.json and .md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from common import RESULTS, ROOT, timed

sys.path.insert(0, str(ROOT))
from firebox import PtySize, Sandbox  # noqa: E402
from firebox.testing import LocalDaemon, free_port  # noqa: E402
from tests.ports.helpers import WebSocket, start_server  # noqa: E402 (the test's own server)

SERVER = ROOT / "tests" / "ports" / "server.py"
PORT = 8000
MB = 1 << 20


class _Direct:
    """What the floor is reached with: the host's loopback, no daemon."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(SERVER), str(self.port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _throughput(c: httpx.Client, mb: int) -> tuple[float, float]:
    t = time.perf_counter()
    with c.stream("GET", f"/big?mb={mb}") as r:
        got = sum(len(chunk) for chunk in r.iter_bytes())
    down = got / MB / (time.perf_counter() - t)
    block = b"x" * (1 << 16)

    def body() -> Any:
        for _ in range(mb * MB // len(block)):
            yield block

    t = time.perf_counter()
    r = c.post("/upload", content=body())
    r.raise_for_status()
    up = mb / (time.perf_counter() - t)
    return down, up


def _ws_round_trips(daemon_like: Any, host: str, headers: dict[str, str], runs: int) -> list[float]:
    ws = WebSocket(daemon_like, host, "/ws", headers)
    try:
        message = "m" * 64

        def once() -> None:
            ws.send(message)
            assert ws.receive() == message

        return timed(once, runs)
    finally:
        ws.close()


def _figures(
    client: httpx.Client, ws_target: Any, host: str, headers: dict[str, str], runs: int, mb: int
) -> dict[str, Any]:
    rt = timed(lambda: client.get("/").raise_for_status(), runs)
    downs, ups = zip(*(_throughput(client, mb) for _ in range(3)), strict=True)
    return {
        "http_round_trip_ms": rt,
        "download_mb_s": list(downs),
        "upload_mb_s": list(ups),
        "ws_round_trip_ms": _ws_round_trips(ws_target, host, headers, runs),
    }


def _pty_echo(sbx: Sandbox, runs: int) -> list[float]:
    seen = bytearray()
    lock = threading.Lock()
    arrived = threading.Event()

    def on_data(data: bytes) -> None:
        with lock:
            seen.extend(data)
        arrived.set()

    term = sbx.pty.create(PtySize(rows=24, cols=80), on_data=on_data, timeout=0, cmd="/bin/cat")
    try:
        out = []
        for i in range(runs + 2):
            key = bytes([ord("a") + i % 26])
            with lock:
                start = len(seen)
            arrived.clear()
            t = time.perf_counter()
            sbx.pty.send_stdin(term.pid, key)
            while True:
                arrived.wait(30)
                with lock:
                    if key in seen[start:]:
                        break
                arrived.clear()
            if i >= 2:
                out.append(1000 * (time.perf_counter() - t))
        return out
    finally:
        sbx.pty.kill(term.pid)


def measure(backend: str, runs: int, mb: int) -> dict[str, Any]:
    d = LocalDaemon(isolation=backend, pool_size=0).start()
    try:
        os.environ.update(d.env())
        sbx = Sandbox.create(timeout=1800)
        try:
            start_server(sbx, PORT)
            host = sbx.get_host(PORT)
            headers = {"Firebox-Traffic-Token": sbx.traffic_access_token}
            with httpx.Client(base_url=d.url, headers={"Host": host, **headers}, timeout=120) as c:
                got = _figures(c, d, host, headers, runs, mb)
            got["pty_echo_ms"] = _pty_echo(sbx, runs)
            return got
        finally:
            sbx.kill()
    finally:
        d.stop()


def floor(runs: int, mb: int) -> dict[str, Any]:
    direct = _Direct()
    try:
        host = f"127.0.0.1:{direct.port}"
        with httpx.Client(base_url=f"http://{host}", timeout=120) as c:
            return _figures(c, direct, host, {}, runs, mb)
    finally:
        direct.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backends", default="jail,gvisor,microvm")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    results: dict[str, Any] = {"floor (host loopback)": floor(args.runs, args.mb)}
    for backend in args.backends.split(","):
        print(f"measuring {backend}...", file=sys.stderr, flush=True)
        results[backend] = measure(backend, args.runs, args.mb)
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ports-{stamp}.json").write_text(json.dumps(results, indent=1))
    md = _table(results, args)
    (RESULTS / f"ports-{stamp}.md").write_text(md)
    print(md)
    return 0


def _table(results: dict[str, Any], args: argparse.Namespace) -> str:
    base = results["floor (host loopback)"]
    rows = [
        ("HTTP `GET /` round trip", "http_round_trip_ms", "ms"),
        (f"{args.mb} MB download", "download_mb_s", "MB/s"),
        (f"{args.mb} MB upload", "upload_mb_s", "MB/s"),
        ("WebSocket 64 B echo round trip", "ws_round_trip_ms", "ms"),
        ("terminal: a key until its echo", "pty_echo_ms", "ms"),
    ]
    names = list(results)
    out = [
        f"`.venv/bin/python bench/ports.py --backends {args.backends} --runs {args.runs} "
        f"--mb {args.mb}`, medians (÷ the floor where it has the figure)",
        "",
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, key, unit in rows:
        cells = []
        for name in names:
            values = results[name].get(key)
            if not values:
                cells.append("—")
                continue
            m = statistics.median(values)
            cell = f"{m:.3g} {unit}"
            if name != names[0] and base.get(key):
                ratio = m / statistics.median(base[key])
                cell += f" ({ratio:.2f}×)"
            cells.append(cell)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
