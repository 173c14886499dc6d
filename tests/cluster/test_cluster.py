"""A cluster on this machine: PostgreSQL, an OCI registry, three nodes each in a network
namespace of its own, two gateways. What runs here is what runs on Kubernetes: the nodes and
gateways find each other only through PostgreSQL.

The tests share one cluster and run in order: the last ones restart and kill nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from firebox import (
    Sandbox,
    SandboxLostException,
    SandboxNotFoundException,
    Template,
)
from firebox.tools import Tools
from tests.cluster.harness import Cluster
from tests.ports.helpers import WebSocket, start_server

SMALL = 3  # node-3 holds at most this many sandboxes (its --max-sandboxes, no pool)
SPREAD = 60


# node-3 is small: the overfill test races for its last places
CLUSTER_OPTIONS = {"node_args": {2: ["--max-sandboxes", str(SMALL)]}}


def _node_of(c: Cluster, sandbox_id: str) -> str:
    with c.db() as db:
        row = db.execute("SELECT node FROM sandboxes WHERE id = %s", (sandbox_id,)).fetchone()
    assert row is not None, f"{sandbox_id} has no row"
    return str(row[0])


def _running_on(c: Cluster) -> Counter[str]:
    with c.db() as db:
        rows = db.execute(
            "SELECT node, COUNT(*) FROM sandboxes WHERE state = 'running' GROUP BY node"
        ).fetchall()
    return Counter({r[0]: int(r[1]) for r in rows})


def _firebox(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firebox.cli", *args, "--cluster-db", c.db_url],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sixty_sandboxes_spread_and_every_call_reaches_its_own(cluster: Cluster) -> None:
    c = cluster

    def make(i: int) -> Sandbox:
        sbx = Sandbox.create(timeout=600, metadata={"i": str(i)}, **c.sdk(i % 2))
        sbx.files.write("/tmp/me", sbx.sandbox_id)
        return sbx

    with ThreadPoolExecutor(6) as pool:
        made = list(pool.map(make, range(SPREAD)))
    try:
        where = Counter(_node_of(c, s.sandbox_id) for s in made)
        assert sum(where.values()) == SPREAD
        assert set(where) == {n.name for n in c.nodes}, where  # every node got some
        assert where["node-3"] <= SMALL, where
        # through the other gateway: each call reaches the sandbox it names
        listed = {s.sandbox_id for s in Sandbox.list(**c.sdk(1))}
        assert {s.sandbox_id for s in made} <= listed

        def check(i_sbx: tuple[int, Sandbox]) -> None:
            i, sbx = i_sbx
            again = Sandbox.connect(sbx.sandbox_id, **c.sdk((i + 1) % 2))
            assert again.files.read("/tmp/me") == sbx.sandbox_id
            assert again.commands.run("cat /tmp/me").stdout == sbx.sandbox_id
            if i % 10 == 0:  # a kernel per sandbox is slow to start: some of them
                assert again.run_code("open('/tmp/me').read()").text == sbx.sandbox_id

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(check, enumerate(made)))
    finally:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda s: s.kill(), made))


def test_a_preview_port_and_e2b_sdk_through_the_gateways(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    sbx = Sandbox.create(timeout=300, **c.sdk(0))
    try:
        sbx.files.write("/tmp/www/index.html", f"served by {sbx.sandbox_id}")
        sbx.commands.run("cd /tmp/www && python3 -m http.server 8000", background=True)
        host = sbx.get_host(8000)
        assert host.endswith("." + c.domain)
        token = {"Firebox-Traffic-Token": sbx.traffic_access_token or ""}
        deadline = time.monotonic() + 30
        while True:
            r = httpx.get(f"{c.gateways[1].url}/", headers={"Host": host, **token}, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.text == f"served by {sbx.sandbox_id}"
        # without the token: refused, as on one host
        r = httpx.get(f"{c.gateways[1].url}/", headers={"Host": host}, timeout=10)
        assert r.status_code == 403
        # a WebSocket, through the other gateway: spoken anew to the node, and by it to the
        # sandbox's server
        start_server(sbx, 8001)
        ws = WebSocket(c.gateways[0], sbx.get_host(8001), "/ws", token)
        try:
            for message in ("hello", b"\x00\xffbytes", "x" * 60_000):  # (its server: < 64 KiB)
                ws.send(message)
                assert ws.receive() == message
        finally:
            ws.close()
    finally:
        sbx.kill()

    e2b = pytest.importorskip("e2b")
    monkeypatch.setenv("E2B_API_URL", f"{c.gateways[1].url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", c.gateways[1].url)
    monkeypatch.setenv("E2B_API_KEY", c.key)
    e = e2b.Sandbox.create(timeout=120)
    try:
        assert e.commands.run("echo from e2b").stdout == "from e2b\n"
        e.files.write("/tmp/e2b.txt", "written by e2b's sdk")
        assert _node_of(c, e.sandbox_id) in {n.name for n in c.nodes}
        # the same sandbox, reached through the other gateway by firebox's own SDK
        mine = Sandbox.connect(e.sandbox_id, **c.sdk(0))
        assert mine.files.read("/tmp/e2b.txt") == "written by e2b's sdk"
    finally:
        e.kill()


def test_a_template_built_once_runs_on_every_node(cluster: Cluster) -> None:
    """Built through a gateway on one node, pushed to the registry; warmed on every node
    (the others pull it); a sandbox of it on each node has the build's files."""
    c = cluster
    token = uuid.uuid4().hex
    template = Template().from_template("base").run_cmd(f"echo {token} > /opt/marker", user="root")
    Template.build(template, "fbx-everywhere", build_timeout=600, **c.sdk(0))
    try:
        with c.client(1) as client:
            warmed = client.post("/templates/fbx-everywhere/warm", timeout=300)
            assert warmed.status_code == 200, warmed.text
            assert set(warmed.json()) == {n.name for n in c.nodes}
            assert sum(1 for w in warmed.json().values() if w["pulled"]) == len(c.nodes) - 1
        made: dict[str, Sandbox] = {}
        deadline = time.monotonic() + 120
        while len(made) < len(c.nodes):
            sbx = Sandbox.create(template="fbx-everywhere", timeout=120, **c.sdk(len(made) % 2))
            node = _node_of(c, sbx.sandbox_id)
            if node in made:
                sbx.kill()
            else:
                made[node] = sbx
            assert time.monotonic() < deadline, f"no sandbox on every node: {set(made)}"
        for node, sbx in made.items():
            assert sbx.commands.run("cat /opt/marker").stdout == f"{token}\n", node
            sbx.kill()
    finally:
        with c.client(0) as client:
            client.delete("/templates/fbx-everywhere", timeout=300)


def test_large_files_and_long_output_stream_through_a_gateway(cluster: Cluster) -> None:
    """An upload and a download of 64 MB, and a command's output as it comes: streamed
    through the gateway both ways, never held whole."""
    c = cluster
    sbx = Sandbox.create(timeout=300, **c.sdk(0))
    try:
        blob = os.urandom(64 << 20)
        sbx.files.write("/tmp/blob", blob)
        again = Sandbox.connect(sbx.sandbox_id, **c.sdk(1))
        assert again.commands.run("sha256sum /tmp/blob").stdout.split()[0] == (
            hashlib.sha256(blob).hexdigest()
        )
        assert again.files.read("/tmp/blob", format="bytes") == blob
        seen: list[float] = []
        again.commands.run(
            "for i in 1 2 3; do echo $i; sleep 0.5; done",
            on_stdout=lambda _: seen.append(time.monotonic()),
        )
        assert len(seen) == 3 and seen[-1] - seen[0] > 0.8, "the lines came as they were made"
    finally:
        sbx.kill()


def test_a_key_never_reaches_another_keys_sandbox(cluster: Cluster) -> None:
    c = cluster
    with c.client(0) as admin:
        other = admin.post("/keys", json={"name": "other"}).json()["key"]
    mine = Sandbox.create(timeout=300, **c.sdk(0))
    try:
        for gw in (0, 1):
            assert mine.sandbox_id not in {s.sandbox_id for s in Sandbox.list(**c.sdk(gw, other))}
            with pytest.raises(SandboxNotFoundException):
                Sandbox.connect(mine.sandbox_id, **c.sdk(gw, other)).files.read("/etc/hostname")
            with c.client(gw, other) as client:
                r = client.post(f"/sandboxes/{mine.sandbox_id}/commands", json={"cmd": "id"})
                assert r.status_code == 404, r.text
                r = client.delete(f"/sandboxes/{mine.sandbox_id}")
                assert r.status_code == 404, r.text
        assert mine.commands.run("echo still mine").stdout == "still mine\n"
    finally:
        mine.kill()


def test_the_dashboard_and_mcp_through_a_gateway(cluster: Cluster) -> None:
    """The dashboard's host panel and live list join every node's; MCP's tools work through
    a gateway (a key's MCP traffic stays on one node, where its session lives)."""
    c = cluster
    made = [Sandbox.create(timeout=300, **c.sdk(0)) for _ in range(4)]
    try:
        assert len({_node_of(c, s.sandbox_id) for s in made}) >= 2
        with c.client(1) as client:
            overview = client.get("/dashboard/api/overview").json()
            assert set(overview["nodes"]) == {n.name for n in c.nodes}
            assert overview["sandboxes"] >= len(made)
            seen: set[str] = set()
            with client.stream("GET", "/dashboard/api/events") as events:
                for line in events.iter_lines():
                    if line.startswith("data: "):
                        seen = {row["sandbox_id"] for row in json.loads(line[6:])}
                        break
            assert {s.sandbox_id for s in made} <= seen
            with c.client(1, key="not-a-key") as stranger:  # no names, only counts
                assert stranger.get("/health").json()["nodes"] == {"active": 3}
            metrics = client.get("/metrics")  # the gateway's own
            assert metrics.status_code == 200
            assert 'firebox_gateway_nodes{state="active"} 3.0' in metrics.text
            assert "firebox_gateway_placements_total" in metrics.text
        with c.client(1, key="not-a-key") as stranger:
            assert stranger.get("/metrics").status_code == 403
        with Tools(**c.sdk(1)) as tools:
            reply = tools.call("run_command", {"command": "echo through the gateway"})
            assert "through the gateway" in reply.text, reply
    finally:
        for s in made:
            s.kill()


def test_two_gateways_creating_at_once_never_overfill_a_node(cluster: Cluster) -> None:
    """node-3 holds SMALL; with the others drained, 4 × SMALL creates race through both
    gateways: SMALL succeed, the rest are refused, and node-3 never holds more."""
    c = cluster
    for name in ("node-1", "node-2"):
        assert _firebox(c, "node", "drain", name).returncode == 0
    try:
        _wait_states(c, {"node-1": "draining", "node-2": "draining", "node-3": "active"})
        start = threading.Barrier(4 * SMALL)
        results: list[Any] = []

        def race(i: int) -> None:
            start.wait(30)
            try:
                results.append(Sandbox.create(timeout=120, **c.sdk(i % 2)))
            except Exception as e:  # the refusal: 503 (no node can take it) or 429
                results.append(e)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(4 * SMALL)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        made = [r for r in results if isinstance(r, Sandbox)]
        try:
            assert len(results) == 4 * SMALL
            assert len(made) == SMALL, results
            assert {_node_of(c, s.sandbox_id) for s in made} == {"node-3"}
            assert _running_on(c)["node-3"] == SMALL
            refused = [r for r in results if not isinstance(r, Sandbox)]
            assert all("no node can take" in str(e) or "429" in str(e) for e in refused), refused
        finally:
            for s in made:
                s.kill()
    finally:
        for name in ("node-1", "node-2"):
            _firebox(c, "node", "undrain", name)
    _wait_states(c, {"node-1": "active", "node-2": "active"})


def _wait_states(c: Cluster, want: dict[str, str], deadline: float = 30) -> None:
    """Until every gateway has read the nodes' states ``want`` (they read every second)."""
    end = time.monotonic() + deadline
    while True:
        admin = {"X-API-Key": c.key}  # the nodes by name: for the admin
        seen = [
            httpx.get(g.url + "/health", headers=admin, timeout=5).json()["nodes"]
            for g in c.gateways
        ]
        if all(all(s.get(k) == v for k, v in want.items()) for s in seen):
            return
        assert time.monotonic() < end, f"states {seen}, waiting for {want}"
        time.sleep(0.2)


def test_a_drain_with_pause_pauses_and_new_creates_avoid_the_node(cluster: Cluster) -> None:
    c = cluster
    made = [Sandbox.create(timeout=300, **c.sdk(0)) for _ in range(6)]
    try:
        target = _node_of(c, made[0].sandbox_id)
        on_target = [s for s in made if _node_of(c, s.sandbox_id) == target]
        r = _firebox(c, "node", "drain", target, "--pause", "--wait", "30")
        assert r.returncode == 0, r.stderr
        _wait_states(c, {target: "draining"})
        for s in on_target:
            assert s.get_info().state == "paused"
        later = [Sandbox.create(timeout=120, **c.sdk(1)) for _ in range(4)]
        assert target not in {_node_of(c, s.sandbox_id) for s in later}
        for s in later:
            s.kill()
        assert _firebox(c, "node", "undrain", target).returncode == 0
        _wait_states(c, {target: "active"})
        resumed = Sandbox.connect(on_target[0].sandbox_id, **c.sdk(1))  # resumes it
        assert resumed.commands.run("echo back").stdout == "back\n"
    finally:
        for s in made:
            s.kill()


def test_a_restarted_gateway_and_a_lost_node_that_returns_lose_nothing(cluster: Cluster) -> None:
    c = cluster
    made = [Sandbox.create(timeout=600, **c.sdk(0)) for _ in range(6)]
    try:
        for s in made:
            s.files.write("/tmp/kept", s.sandbox_id)
        c.gateways[0].restart()
        for s in made:
            assert Sandbox.connect(s.sandbox_id, **c.sdk(0)).files.read("/tmp/kept") == s.sandbox_id
        # a node whose daemon crashed (its sandboxes kept running) is lost once its lease
        # runs out; restarted, it re-adopts them and they answer again
        node = c.node(_node_of(c, made[0].sandbox_id))
        node.kill_process()  # SIGKILL of the daemon alone
        deadline = time.monotonic() + c.lease_seconds + 10
        while True:
            try:
                Sandbox.connect(made[0].sandbox_id, **c.sdk(0)).files.read("/tmp/kept")
            except SandboxLostException:
                break
            except Exception:
                pass  # its lease not run out yet: the node does not answer
            assert time.monotonic() < deadline, "the crashed node was never reported lost"
            time.sleep(0.2)
        node.start()
        _wait_states(c, {node.name: "active"})  # as the gateways read it, once a second
        for s in made:
            again = Sandbox.connect(s.sandbox_id, **c.sdk(1))
            assert again.files.read("/tmp/kept") == s.sandbox_id
            assert again.commands.run("echo ok").stdout == "ok\n"
    finally:
        for s in made:
            s.kill()


def test_a_killed_node_is_lost_within_its_lease_and_the_rest_keep_working(
    cluster: Cluster,
) -> None:
    c = cluster
    made = [Sandbox.create(timeout=600, **c.sdk(i % 2)) for i in range(9)]
    victim = c.node(_node_of(c, made[0].sandbox_id))
    lost = [s for s in made if _node_of(c, s.sandbox_id) == victim.name]
    kept = [s for s in made if s not in lost]
    assert kept, "every sandbox landed on one node"
    victim.kill()  # the daemon and its sandboxes' holders, as if its host died
    began = time.monotonic()
    for gw in (0, 1):
        deadline = began + c.lease_seconds + 10
        while True:
            try:
                Sandbox.connect(lost[0].sandbox_id, **c.sdk(gw)).commands.run("true")
            except SandboxLostException as e:
                assert "lost" in str(e) and victim.name in str(e)
                break
            except Exception:
                pass  # before its lease ran out: the node does not answer
            assert time.monotonic() < deadline, "the node was never reported lost"
            time.sleep(0.2)
    took = time.monotonic() - began
    assert took < c.lease_seconds + 10
    with c.client(1) as client:  # E2B's edge says it in E2B's words: a 404
        r = client.get(f"/e2b/sandboxes/{lost[0].sandbox_id}")
        assert r.status_code == 404 and "lost" in r.json()["message"], r.text
    with c.client(1, key="e2b_" + "0" * 64) as stranger:  # no oracle for other keys
        r = stranger.get(f"/sandboxes/{lost[0].sandbox_id}")
        assert r.status_code == 401 and "lost" not in r.text
    for s in kept:  # the rest work on, through either gateway
        assert s.commands.run("echo alive").stdout == "alive\n"
    later = [Sandbox.create(timeout=120, **c.sdk(1)) for _ in range(4)]
    assert victim.name not in {_node_of(c, s.sandbox_id) for s in later}
    for s in later + kept:
        s.kill()
    # it comes back: what died is reconciled (ended, not lost), and it takes creates again
    victim.start()
    _wait_states(c, {victim.name: "active"})
    with pytest.raises(SandboxNotFoundException) as info:
        Sandbox.connect(lost[0].sandbox_id, **c.sdk(0)).commands.run("true")
    assert not isinstance(info.value, SandboxLostException)
    with c.db() as db:
        states = {
            r[0]
            for r in db.execute(
                "SELECT state FROM sandboxes WHERE id = ANY(%s)", ([s.sandbox_id for s in lost],)
            )
        }
    assert states == {"ended"}
