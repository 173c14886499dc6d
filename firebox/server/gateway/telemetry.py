"""The gateway's own metrics, for Prometheus: ``GET /metrics`` on a gateway (the admin key).

A node serves its own at its own address (server/telemetry.py); a gateway's are about the
routing: requests by kind of route, creates by outcome, the nodes by state as it last read
them. The WebSocket relay's port-proxy byte counts are the daemon's metric, counted here too.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from firebox.server.gateway.directory import Directory
from firebox.server.telemetry import CONTENT_TYPE, REGISTRY

__all__ = ["CONTENT_TYPE", "PLACEMENTS", "REQUESTS", "attach", "scrape"]

REQUESTS = Counter(
    "firebox_gateway_requests",
    "Requests a gateway routed, by kind of route (sandbox, create, list, keyed, any, …)",
    ["route"],
    registry=REGISTRY,
)
PLACEMENTS = Counter(
    "firebox_gateway_placements",
    "Creates a gateway placed, by outcome: placed, refused (every node said no), no_place",
    ["outcome"],
    registry=REGISTRY,
)


class _Nodes(Collector):
    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "firebox_gateway_nodes", "The cluster's nodes by state, as last read", labels=["state"]
        )
        for state, n in sorted(Tally(x.state for x in self.directory.nodes.values()).items()):
            family.add_metric([state], n)
        yield family


def attach(directory: Directory) -> None:
    REGISTRY.register(_Nodes(directory))


def scrape() -> bytes:
    return generate_latest(REGISTRY)
