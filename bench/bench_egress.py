"""Egress benchmark: what a network policy costs a sandbox, on each backend.

Measured against a loopback origin (127.0.0.3, lifted off the floor with --egress-permit and
named ``origin.test`` with --egress-resolve, as the tests do), so no byte leaves the host:

  * create → ready with no pool, without and with a network policy (the policy adds the
    agent's proxy port before the hand-over);
  * a small HTTP GET through the proxy from inside (curl), against the same GET from the host
    straight to the origin (the floor);
  * download throughput of a 100 MB body through the proxy.

Starts its own daemons (stopped by PID), prints medians, writes bench/results/egress.json.

    .venv/bin/python bench/bench_egress.py [--runs 10] [--backends jail,microvm]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import timed  # noqa: E402  (beside this file: run as a script)

from firebox import Sandbox  # noqa: E402
from firebox.testing import LocalDaemon  # noqa: E402

ORIGIN = "127.0.0.3"
BIG_MB = 100
POLICY = {"allow_out": ["origin.test"]}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        size = (BIG_MB << 20) if self.path == "/big" else 2
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * (1 << 20)
        left = size
        while left:
            n = min(left, len(chunk))
            self.wfile.write(chunk[:n])
            left -= n

    def log_message(self, *args: object) -> None:
        pass


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 1)


def measure(backend: str, runs: int, port: int) -> dict[str, object]:
    args = ["--egress-permit", f"{ORIGIN}/32", "--egress-resolve", f"origin.test={ORIGIN}"]
    out: dict[str, object] = {}
    with LocalDaemon(isolation=backend, pool_size=0, args=args) as d:
        os.environ.update(d.env())

        def create(**kw: object) -> None:
            Sandbox.create(**kw).kill()  # type: ignore[arg-type]

        plain = timed(create, runs)
        with_policy = timed(lambda: create(network=POLICY), runs)
        out["create_no_policy_ms"] = plain
        out["create_with_policy_ms"] = with_policy
        with Sandbox.create(network=POLICY) as sbx:
            url = f"http://origin.test:{port}"
            sbx.files.write("/tmp/get.sh", f"curl -s -o /dev/null {url}/small")
            inside = timed(lambda: sbx.commands.run("sh /tmp/get.sh"), runs)
            bare = timed(lambda: sbx.commands.run("true"), runs)
            out["get_through_proxy_ms"] = inside
            out["command_true_ms"] = bare
            r = sbx.commands.run(
                f"curl -s -o /dev/null -w '%{{speed_download}}' {url}/big", timeout=300
            )
            out["download_mb_s"] = [round(float(r.stdout) / 2**20, 1)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--backends", default="jail,microvm")
    args = p.parse_args()
    server = http.server.ThreadingHTTPServer((ORIGIN, 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    host_get = timed(
        lambda: subprocess.run(
            ["curl", "-s", "-o", "/dev/null", f"http://{ORIGIN}:{port}/small"], check=True
        ),
        args.runs,
    )
    results: dict[str, object] = {"host_curl_get_ms": host_get}
    for backend in args.backends.split(","):
        results[backend] = measure(backend, args.runs, port)
    server.shutdown()
    print(f"host: curl GET straight to the origin  {median(host_get):8.1f} ms")
    for backend in args.backends.split(","):
        r = results[backend]
        assert isinstance(r, dict)
        print(f"{backend}:")
        for key, samples in r.items():
            print(f"  {key:28s} {median(samples):8.1f}")
    out = ROOT / "bench" / "results" / "egress.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"raw samples: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
