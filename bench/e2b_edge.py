"""E2B's own SDKs against firebox's, through one daemon per backend, and the E2B edge's own
cost per call.

    .venv/bin/python bench/e2b_edge.py [--runs N] [--backends jail,microvm]

As root, after the README's set-up. For each backend, one daemon of its own (its own
FIREBOX_HOME, stopped by PID) and, alternating the two clients call by call:

- the SDKs: create → first command result, a command round trip (`true`), a `run_code`
  round trip (`1`), with firebox's SDK (firebox.Sandbox) and E2B's (e2b_code_interpreter);
- the edge alone: the same call by the same raw HTTP client to firebox's own route and to
  E2B's (a file stat: Connect unary in JSON against GET …/files/stat; a command run to its
  end; a code cell to its end), so the difference of the medians is what the E2B edge adds
  in the daemon, with neither SDK in the way (the target: at most 1 ms).

Prints a table of medians and ratios; writes the samples to bench/results/e2b-edge-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import RESULTS

from firebox.testing import LocalDaemon


def ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def alternate(a: Callable[[], object], b: Callable[[], object], runs: int) -> tuple[list, list]:
    """``runs`` samples of each, interleaved so drift on a loaded host hits both alike."""
    a(), b()  # warm both paths
    xs, ys = [], []
    for i in range(runs):
        if i % 2:
            ys.append(ms(b))
            xs.append(ms(a))
        else:
            xs.append(ms(a))
            ys.append(ms(b))
    return xs, ys


def _connect_stream(body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return struct.pack(">BI", 0, len(raw)) + raw


def measure(backend: str, runs: int, creates: int) -> dict[str, dict[str, list[float]]]:
    import httpx
    from e2b_code_interpreter import Sandbox as E2BSandbox

    from firebox import Sandbox

    out: dict[str, dict[str, list[float]]] = {}
    with LocalDaemon(isolation=backend) as daemon:
        env = {
            "FIREBOX_URL": daemon.url,
            "FIREBOX_API_KEY": daemon.key,
            "E2B_API_URL": f"{daemon.url}/e2b",
            "E2B_SANDBOX_URL": daemon.url,
            "E2B_API_KEY": daemon.key,
        }
        os.environ.update(env)

        def fb_first() -> None:
            with Sandbox.create(timeout=300) as s:
                s.commands.run("true")

        def e2b_first() -> None:
            s = E2BSandbox.create(timeout=300)
            try:
                s.commands.run("true")
            finally:
                s.kill()

        def pause() -> None:
            time.sleep(3.0)  # the warm pool refills between creates: steady state, not a burst

        fb, e2 = [], []
        for i in range(creates):  # alternating which goes first: neither meets a refill more
            for first in (fb_first, e2b_first) if i % 2 == 0 else (e2b_first, fb_first):
                (fb if first is fb_first else e2).append(ms(first))
                pause()
        out["create → first command"] = {"firebox SDK": fb, "E2B SDK": e2}

        fsb = Sandbox.create(timeout=1800)
        esb = E2BSandbox.connect(fsb.sandbox_id)  # the same sandbox, through E2B's SDK
        try:
            a, b = alternate(
                lambda: fsb.commands.run("true"), lambda: esb.commands.run("true"), runs
            )
            out["command round trip"] = {"firebox SDK": a, "E2B SDK": b}
            a, b = alternate(lambda: fsb.run_code("1"), lambda: esb.run_code("1"), runs)
            out["run_code round trip"] = {"firebox SDK": a, "E2B SDK": b}

            token = esb._envd_access_token
            sid = fsb.sandbox_id
            edge = {"E2b-Sandbox-Id": sid, "X-Access-Token": token}
            with httpx.Client(base_url=daemon.url, timeout=60) as c:
                native = {"X-API-Key": daemon.key}
                stat_native = lambda: c.get(  # noqa: E731
                    f"/sandboxes/{sid}/files/stat", params={"path": "/home/user"}, headers=native
                ).raise_for_status()
                stat_edge = lambda: c.post(  # noqa: E731
                    "/filesystem.Filesystem/Stat", json={"path": "/home/user"}, headers=edge
                ).raise_for_status()
                a, b = alternate(stat_native, stat_edge, runs)
                out["edge: file stat"] = {"firebox API": a, "E2B edge": b}

                # the same argv both ways (firebox's `cmd` would skip bash for a plain command)
                argv = ["/bin/bash", "-c", "true"]

                def cmd_native() -> None:
                    r = c.post(f"/sandboxes/{sid}/commands", json={"argv": argv}, headers=native)
                    assert b'"end"' in r.content, r.content

                stream = _connect_stream(
                    {"process": {"cmd": argv[0], "args": argv[1:]}, "stdin": False}
                )

                def cmd_edge() -> None:
                    r = c.post(
                        "/process.Process/Start",
                        content=stream,
                        headers={**edge, "content-type": "application/connect+json"},
                    )
                    assert b'"end"' in r.content, r.content

                a, b = alternate(cmd_native, cmd_edge, runs)
                out["edge: command to its end"] = {"firebox API": a, "E2B edge": b}

                def code_native() -> None:
                    r = c.post(f"/sandboxes/{sid}/code", json={"code": "1"}, headers=native)
                    assert b"end" in r.content, r.content

                def code_edge() -> None:
                    r = c.post(
                        "/execute",
                        json={"code": "1"},
                        headers={**edge, "E2b-Sandbox-Port": "49999"},
                    )
                    assert b"end_of_execution" in r.content, r.content

                a, b = alternate(code_native, code_edge, runs)
                out["edge: code cell to its end"] = {"firebox API": a, "E2B edge": b}
        finally:
            fsb.kill()
    return out


def table(results: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    lines = ["| backend | figure | firebox (p50 ms) | E2B (p50 ms) | ratio | difference |"]
    lines.append("|---|---|---|---|---|---|")
    for backend, figures in results.items():
        for figure, pair in figures.items():
            (_, xs), (_, ys) = pair.items()
            x, y = statistics.median(xs), statistics.median(ys)
            lines.append(
                f"| {backend} | {figure} | {x:.2f} | {y:.2f} | {y / x:.2f} | {y - x:+.2f} ms |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="round trips per figure")
    p.add_argument("--creates", type=int, default=10, help="creates per SDK")
    p.add_argument("--backends", default="jail,microvm")
    args = p.parse_args()
    results = {}
    for backend in args.backends.split(","):
        print(f"[e2b-edge] {backend}: measuring", file=sys.stderr, flush=True)
        results[backend] = measure(backend, args.runs, args.creates)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"e2b-edge-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"\nsamples: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
