"""The harness itself: a cluster comes up (every node in its own network namespace, every
node and gateway answering), its pieces do what the cluster tests rely on (a node's kill, a
restart on the same address), and it goes leaving nothing on the host, also when its setup
fails half-way."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.cluster.harness import Cluster, leftovers


def _health(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=10, trust_env=False).status_code


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def test_a_cluster_comes_up_answers_and_goes_leaving_nothing(cluster_host: None) -> None:
    # "keep": a stopped node leaves its sandboxes running, so the teardown must remove them
    c = Cluster(nodes=3, gateways=2, on_stop="keep")
    try:
        c.start()
        assert [_health(n.url) for n in c.nodes] == [200] * 3
        assert [_health(g.url) for g in c.gateways] == [200] * 2
        assert len({n.address for n in c.nodes}) == 3

        # each node's daemon in its namespace, none in ours
        own = {_netns_inode(n.proc.pid) for n in c.nodes if n.proc is not None}
        assert len(own) == 3 and _netns_inode(os.getpid()) not in own
        for node, ns in zip(c.nodes, c.namespaces, strict=True):
            assert node.proc is not None
            assert _netns_inode(node.proc.pid) == os.stat(ns.path).st_ino
        # and the nodes reach each other and the registry across the bridge
        assert c.registry is not None
        for url in (f"{c.nodes[1].url}/health", f"http://{c.registry.addr}/v2/"):
            probe = f"import urllib.request as u; print(u.urlopen('{url}').status)"
            out = subprocess.run(
                c.namespaces[0].enter([sys.executable, "-c", probe]),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.stdout.strip() == "200", out.stderr

        # a node starts with the host's guest images only: no template built anywhere
        for node in c.nodes:
            names = {p.name for p in node.image_dir.iterdir()}
            assert any(n.startswith("python-") for n in names), names
            assert not any((node.image_dir / "templates").glob("*"))

        # every process has the one admin key; nothing else is let in
        for g in range(2):
            with c.client(g) as api:
                assert api.get("/sandboxes").status_code == 200, c.logs()
            with c.client(g, key="fbx_" + "0" * 40) as api:
                assert api.get("/sandboxes").status_code == 401

        # every node joined and renews its lease
        time.sleep(c.lease_seconds * 1.5)
        with c.db() as db:
            states = dict(db.execute("SELECT name, state FROM nodes").fetchall())
        assert states == {n.name: "active" for n in c.nodes}, c.logs()

        # a node's kill takes its sandboxes' processes with it; it starts again where it was
        with c.client(0) as api:
            created = api.post("/sandboxes", json={"timeout": 300})
            assert created.status_code == 201, created.text
            sid = created.json()["sandbox_id"]
        with c.db() as db:
            row = db.execute("SELECT node FROM sandboxes WHERE id = %s", (sid,)).fetchone()
        node = c.node(row[0])
        assert node.sandbox_pids(), "its sandbox runs in the node's cgroups"
        node.kill()
        assert not node.running and not node.sandbox_pids()
        node.start()
        assert _health(node.url) == 200

        # a gateway restarts on its address
        gw = c.gateways[1]
        url = gw.url
        gw.restart()
        assert gw.url == url and _health(url) == 200

        # sandboxes left running at the end: the teardown takes them, disks and all
        with c.client(1) as api:
            for _ in range(3):
                assert api.post("/sandboxes", json={"timeout": 300}).status_code == 201
        assert any(n.sandbox_pids() for n in c.nodes)
    finally:
        c.close()
    assert leftovers(c) == []
    seconds = {phase: round(t, 1) for phase, t in c.timings.items()}
    print(f"[cluster] seconds: {seconds}", file=sys.stderr)


def test_a_setup_that_fails_half_way_leaves_nothing(cluster_host: None) -> None:
    c = Cluster(nodes=2, gateways=1, node_common_args=["--no-such-flag"])
    with pytest.raises(RuntimeError, match="no-such-flag"):
        c.start()
    assert leftovers(c) == []
