"""A smoke run of the peers (not the benchmark): every figure of each peer, a few samples.

    .venv/bin/python bench/peers [--runs 3] [--idle 3] [--size-mb 20] [NAME ...]

Prints one JSON object per peer: its medians (or why a figure or the peer is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

# run as `python bench/peers`: import the package by its name, from bench/
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers import METRICS, PEERS, Peer, Unsupported, by_name, docker_engine  # noqa: E402
from peers.base import Samples, Throughput  # noqa: E402
from peers.driven import DockerDriverPeer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--idle", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=20)
    args = ap.parse_args()
    classes = [by_name(n) for n in args.names] if args.names else PEERS
    with contextlib.ExitStack() as stack:
        if any(issubclass(c, DockerDriverPeer) for c in classes) and not docker_engine.available():
            stack.enter_context(docker_engine.held())  # one engine and image for all of them
        return run(classes, args)


def run(classes: list[type[Peer]], args: argparse.Namespace) -> int:
    failed = False
    for cls in classes:
        peer = cls()
        report: dict[str, object] = {"peer": peer.name, "kind": peer.kind}
        if (reason := peer.available()) is not None:
            report["skipped"] = reason
            print(json.dumps(report), flush=True)
            continue
        with peer:
            for metric in METRICS:
                got: Samples | Throughput
                try:
                    if metric == "file_throughput":
                        got = peer.file_throughput(args.size_mb)
                    elif metric == "idle_memory_mb":
                        got = peer.idle_memory_mb(args.idle)
                    else:
                        got = getattr(peer, metric)(args.runs)
                except Exception as exc:  # noqa: BLE001  (reported, the rest goes on)
                    failed = True
                    report[metric] = f"FAILED: {type(exc).__name__}: {exc}"
                    continue
                if isinstance(got, Unsupported):
                    report[metric] = f"n/a: {got.reason}"
                elif isinstance(got, dict):
                    report[metric] = {
                        k: f"n/a: {v.reason}" if isinstance(v, Unsupported) else round(v, 1)
                        for k, v in got.items()
                    }
                else:
                    report[metric] = round(statistics.median(got), 2)
                    report[metric + "_samples"] = [round(s, 2) for s in got]
            engine = getattr(peer, "engine", None)
            if isinstance(engine, docker_engine.DockerEngine):
                report["engine_pss_mb"] = round(engine.engine_pss_mb(), 1)
        print(json.dumps(report), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
