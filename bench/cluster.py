"""A cluster's costs on this host: what the gateway adds to a call, and how fast two gateways
place creates.

    .venv/bin/python bench/cluster.py [--calls N] [--creates N] [--clients N]

As root. Brings up the tests' cluster (tests/cluster/harness.py: PostgreSQL, an OCI
registry, three jail nodes each in a network namespace of its own, two gateways; everything
stopped by PID and removed after) and measures, one run:

- the round trip of a command (``sandbox.commands.run("true")``) to one sandbox, through a
  gateway and straight to its node, interleaved call by call so that both meet the same host
  load; medians and p95, and the gateway's overhead as the difference of the medians and the
  median of the pairwise differences;
- placement throughput: ``--creates`` sandboxes created by ``--clients`` threads spread over
  both gateways (pool off: each create boots a sandbox), creates per second, and how they
  spread over the nodes; the baseline, the same creates straight to one node. All three
  nodes share this host's two cores: the figure is the cluster machinery's, not scale-out.

Writes bench/results/cluster-<date>.json and .md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import RESULTS, ROOT

sys.path.insert(0, str(ROOT))
from firebox import Sandbox  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": round(statistics.median(xs), 3),
        "p95": round(xs[int(len(xs) * 0.95) - 1], 3),
    }


def round_trips(c: Cluster, calls: int) -> dict[str, Any]:
    via = Sandbox.create(timeout=600, **c.sdk(0))
    try:
        with c.db() as db:
            url = db.execute(
                "SELECT n.url FROM sandboxes s JOIN nodes n ON n.name = s.node WHERE s.id = %s",
                (via.sandbox_id,),
            ).fetchone()[0]
        direct = Sandbox.connect(via.sandbox_id, api_key=c.key, api_url=url)
        for sbx in (via, direct):  # warm: connections kept, code paths loaded
            for _ in range(20):
                sbx.commands.run("true")
        gw: list[float] = []
        node: list[float] = []
        for _ in range(calls):
            for sbx, into in ((via, gw), (direct, node)):
                t = time.perf_counter()
                sbx.commands.run("true")
                into.append((time.perf_counter() - t) * 1000)
        pairs = [a - b for a, b in zip(gw, node, strict=True)]
        return {
            "calls": calls,
            "gateway_ms": _ms(gw),
            "node_ms": _ms(node),
            "overhead_ms_of_medians": round(statistics.median(gw) - statistics.median(node), 3),
            "overhead_ms_pairwise_median": round(statistics.median(pairs), 3),
            "ratio": round(statistics.median(gw) / statistics.median(node), 3),
        }
    finally:
        via.kill()


def direct_creates(c: Cluster, creates: int, clients: int) -> dict[str, Any]:
    """The baseline: the same creates straight to one node, no gateway, no placement."""
    opts = {"api_key": c.key, "api_url": c.nodes[0].url}

    def make(_: int) -> tuple[Sandbox, float]:
        t = time.perf_counter()
        sbx = Sandbox.create(timeout=600, **opts)
        return sbx, (time.perf_counter() - t) * 1000

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        made = list(pool.map(make, range(creates)))
    took = time.perf_counter() - began
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda m: m[0].kill(), made))
    return {
        "creates_per_second": round(creates / took, 2),
        "create_ms": _ms([ms for _, ms in made]),
    }


def placement(c: Cluster, creates: int, clients: int) -> dict[str, Any]:
    with c.db() as db:
        states = dict(db.execute("SELECT name, state FROM nodes").fetchall())

    def make(i: int) -> tuple[Sandbox, float]:
        t = time.perf_counter()
        sbx = Sandbox.create(timeout=600, **c.sdk(i % len(c.gateways)))
        return sbx, (time.perf_counter() - t) * 1000

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        made = list(pool.map(make, range(creates)))
    took = time.perf_counter() - began
    with c.db() as db:
        rows = db.execute(
            "SELECT node FROM sandboxes WHERE id = ANY(%s)", ([s.sandbox_id for s, _ in made],)
        ).fetchall()
    spread = Counter(r[0] for r in rows)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda m: m[0].kill(), made))
    return {
        "creates": creates,
        "clients": clients,
        "seconds": round(took, 2),
        "creates_per_second": round(creates / took, 2),
        "create_ms": _ms([ms for _, ms in made]),
        "spread": dict(sorted(spread.items())),
        "node_states_before": states,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--creates", type=int, default=60)
    p.add_argument("--clients", type=int, default=8)
    args = p.parse_args()
    with Cluster() as c:
        result = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cluster_up_seconds": round(c.timings["up"], 1),
            "round_trip": round_trips(c, args.calls),
            "placement": placement(c, args.creates, args.clients),
            "one_node_direct": direct_creates(c, args.creates, args.clients),
        }
    stamp = time.strftime("%Y-%m-%d-%H%M%S")
    (RESULTS / f"cluster-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    rt, pl = result["round_trip"], result["placement"]
    table = "\n".join(
        [
            "| figure | value |",
            "|---|---|",
            f"| command round trip via gateway, p50 / p95 | {rt['gateway_ms']['p50']} / "
            f"{rt['gateway_ms']['p95']} ms |",
            f"| same, straight to the node, p50 / p95 | {rt['node_ms']['p50']} / "
            f"{rt['node_ms']['p95']} ms |",
            f"| gateway overhead (difference of medians; median of pairs) | "
            f"{rt['overhead_ms_of_medians']}; {rt['overhead_ms_pairwise_median']} ms |",
            f"| placement: {pl['creates']} creates, {pl['clients']} clients, 2 gateways | "
            f"{pl['creates_per_second']} creates/s (create p50 {pl['create_ms']['p50']} ms) |",
            f"| same creates straight to one node (baseline) | "
            f"{result['one_node_direct']['creates_per_second']} creates/s (create p50 "
            f"{result['one_node_direct']['create_ms']['p50']} ms) |",
            f"| spread over nodes | {pl['spread']} |",
        ]
    )
    (RESULTS / f"cluster-{stamp}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
