"""The daemon's own metrics, for Prometheus: ``GET /metrics`` (the admin key), in the text
format ``prometheus_client`` writes.

Counters move where the work happens (a create, an answered error, an admission refusal, egress
and port-proxy connections and their bytes); what is a state rather than an event (sandboxes by
state and backend, the warm pool's levels) is read from the manager when scraped. One registry
per daemon process, of its own (not the library's global one).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from firebox.server.manager import SandboxManager

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

CREATES = Counter(
    "firebox_creates",
    "Sandbox creates answered, by outcome: ok, or the API error code",
    ["outcome"],
    registry=REGISTRY,
)
CREATE_SECONDS = Histogram(
    "firebox_create_seconds",
    "Time from a create's arrival to its sandbox's readiness (successful creates)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
ERRORS = Counter("firebox_errors", "API errors answered, by code", ["code"], registry=REGISTRY)
ADMISSION_REFUSALS = Counter(
    "firebox_admission_refusals",
    "Sandbox starts refused for the host's room (creates and pool refills), by which limit",
    ["limit"],
    registry=REGISTRY,
)
EGRESS_CONNECTIONS = Counter(
    "firebox_egress_connections",
    "Connections sandboxes made out through the egress proxy, by verdict",
    ["verdict"],
    registry=REGISTRY,
)
EGRESS_BYTES = Counter(
    "firebox_egress_bytes",
    "Bytes through the egress proxy: out (from sandboxes) and in (to them)",
    ["direction"],
    registry=REGISTRY,
)
PORT_CONNECTIONS = Counter(
    "firebox_port_proxy_connections",
    "Requests and WebSockets to sandboxes' ports, by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)
PORT_BYTES = Counter(
    "firebox_port_proxy_bytes",
    "Bytes through the port proxy: in (to sandboxes) and out (from them)",
    ["direction"],
    registry=REGISTRY,
)


class _Now(Collector):
    """What is, read at each scrape."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        sandboxes = GaugeMetricFamily(
            "firebox_sandboxes", "Sandboxes by state and backend", labels=["state", "backend"]
        )
        tally = Tally((s.state, s.backend) for s in self.manager.all_live())
        for state in ("running", "paused"):
            sandboxes.add_metric([state, self.manager.backend.name], 0)
        for (state, backend), n in tally.items():
            sandboxes.add_metric([state, backend], n)
        yield sandboxes
        pool = GaugeMetricFamily(
            "firebox_pool_waiting", "Booted sandboxes waiting in the warm pool", labels=["pool"]
        )
        for key, n in self.manager.pool.levels().items():
            pool.add_metric([key], n)
        yield pool
        yield GaugeMetricFamily(
            "firebox_pool_size", "Sandboxes each warm pool keeps", value=self.manager.pool.size
        )


_attached: list[_Now] = []


def attach(manager: SandboxManager) -> None:
    """Read ``manager``'s state at each scrape (once per daemon)."""
    for old in _attached:
        REGISTRY.unregister(old)
    _attached[:] = [_Now(manager)]
    REGISTRY.register(_attached[0])


def scrape() -> bytes:
    return generate_latest(REGISTRY)
