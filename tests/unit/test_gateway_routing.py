"""Which node a request is for (server/gateway/routing.py), and the order placement tries
nodes in (server/cluster/placement.py): pure functions, checked without a cluster."""

from __future__ import annotations

import random

import pytest

from firebox.server.cluster.nodes import Node
from firebox.server.cluster.placement import candidates
from firebox.server.gateway.routing import Route, route

ID = "sbx_0123456789abcdef"
DOMAIN = "fbx.example.com"


@pytest.mark.parametrize(
    ("method", "path", "headers", "want"),
    [
        ("POST", f"/sandboxes/{ID}/commands", {}, Route("sandbox", "firebox", ID)),
        ("GET", f"/sandboxes/{ID}", {}, Route("sandbox", "firebox", ID)),
        ("POST", f"/e2b/sandboxes/{ID}/pause", {}, Route("sandbox", "e2b", ID)),
        ("GET", f"/e2b/v2/sandboxes/{ID}/logs", {}, Route("sandbox", "e2b", ID)),
        # E2B's in-sandbox traffic names its sandbox in a header, whatever the path
        (
            "POST",
            "/process.Process/Start",
            {b"e2b-sandbox-id": ID.encode()},
            Route("sandbox", "e2b", ID),
        ),
        # a preview host, in either form of the id, whatever the path
        (
            "GET",
            "/x",
            {b"host": f"8000-{ID.replace('_', '-')}.{DOMAIN}".encode()},
            Route("sandbox", "port", ID),
        ),
        ("GET", "/", {b"host": f"3000-{ID}.{DOMAIN}:443".encode()}, Route("sandbox", "port", ID)),
        # another domain's host is not a preview
        ("GET", "/health", {b"host": f"8000-{ID}.evil.example".encode()}, Route("health")),
        ("POST", "/sandboxes", {}, Route("create", "firebox")),
        ("POST", "/e2b/sandboxes", {}, Route("create", "e2b")),
        ("GET", "/sandboxes", {}, Route("list", "firebox")),
        ("GET", "/e2b/v2/sandboxes", {}, Route("list", "e2b")),
        ("DELETE", "/snapshots/snap_1", {}, Route("snapshot", "firebox", ref="snap_1")),
        ("GET", "/snapshots", {}, Route("any")),
        ("POST", "/templates/app/warm", {}, Route("warm")),
        ("POST", "/templates/builds", {}, Route("keyed")),
        ("GET", "/e2b/templates/t1/builds/b1/status", {}, Route("keyed", "e2b")),
        ("POST", "/e2b/v3/templates", {}, Route("keyed", "e2b")),
        ("POST", "/mcp", {}, Route("keyed")),
        ("GET", "/dashboard/api/overview", {}, Route("overview")),
        ("GET", "/dashboard/api/events", {}, Route("events")),
        ("GET", "/dashboard/app.js", {}, Route("any")),
        ("GET", "/keys", {}, Route("any")),
        ("GET", "/metrics", {}, Route("metrics")),
        # not an id: never taken for one
        ("GET", "/sandboxes/../keys", {}, Route("any")),
        ("GET", "/sandboxes/sbx_XYZ/commands", {}, Route("any")),
    ],
)
def test_each_request_goes_where_its_sandbox_is(
    method: str, path: str, headers: dict[bytes, bytes], want: Route
) -> None:
    assert route(method, path, headers, DOMAIN) == want


def _node(name: str, state: str = "active", running: int = 0, lease: float = 5.0) -> Node:
    capacity = {"running": running, "memory_free_mb": 16000, "cpus": 2, "load": 0.5, "warm": []}
    return Node(name, f"http://{name}:7070", "jail", state, None, 100, capacity, lease)


def test_placement_never_offers_a_draining_lost_or_expired_node() -> None:
    nodes = [
        _node("a"),
        _node("b", state="draining"),
        _node("c", state="lost"),
        _node("d", lease=-1.0),
    ]
    for seed in range(20):
        assert [n.name for n in candidates(nodes, "python", {}, random.Random(seed))] == ["a"]


def test_placement_prefers_the_emptier_of_two_and_offers_the_rest_after() -> None:
    nodes = [_node("a"), _node("b"), _node("c")]
    counts = {"a": 90, "b": 10, "c": 50}
    for seed in range(20):
        order = [n.name for n in candidates(nodes, "python", counts, random.Random(seed))]
        assert sorted(order) == ["a", "b", "c"]
        first_two = order[:2]
        assert first_two == sorted(first_two, key=counts.__getitem__)  # the sampled, by room
    # over many creates the emptiest node is chosen most, the fullest least
    firsts = [candidates(nodes, "python", counts, random.Random(s))[0].name for s in range(300)]
    assert firsts.count("b") > firsts.count("c") > firsts.count("a")


def test_a_warm_template_outweighs_a_few_sandboxes() -> None:
    cold, warm = _node("cold"), _node("warm")
    warm.capacity["warm"].append("python")
    order = candidates([cold, warm], "python", {"cold": 0, "warm": 5}, random.Random(1))
    assert order[0].name == "warm"
