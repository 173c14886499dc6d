"""Sandbox lifecycle through the real daemon: create, list, info, timeouts, kill, ownership."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from firebox import NotFoundException, Sandbox, SandboxQuery
from tests.conftest import Daemon


def test_create_info_and_context_manager(daemon: Daemon) -> None:
    with Sandbox.create(metadata={"who": "test"}) as sbx:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"who": "test"}
        assert info.template == "python"
        assert sbx.is_running()
        sandbox_id = sbx.sandbox_id
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox_id).get_info()


def test_list_filters_by_metadata(daemon: Daemon) -> None:
    a = Sandbox.create(metadata={"app": "x", "n": "1"})
    b = Sandbox.create(metadata={"app": "y"})
    try:
        ids = {s.sandbox_id for s in Sandbox.list()}
        assert {a.sandbox_id, b.sandbox_id} <= ids
        only_x = {s.sandbox_id for s in Sandbox.list(metadata={"app": "x"})}
        assert a.sandbox_id in only_x and b.sandbox_id not in only_x
    finally:
        a.kill()
        b.kill()


def test_list_query_order_and_pages(daemon: Daemon) -> None:
    run = str(time.monotonic_ns())
    made = [Sandbox.create(metadata={"run": run}) for _ in range(3)]
    try:
        mine = SandboxQuery(metadata={"run": run})
        ids = [s.sandbox_id for s in made]
        assert [s.sandbox_id for s in Sandbox.list(query=mine)] == ids  # oldest first
        newest = Sandbox.list(query=mine, order="desc")
        assert [s.sandbox_id for s in newest] == ids[::-1]
        assert newest[0].template_id == "python"
        assert Sandbox.list(query=SandboxQuery(metadata={"run": run}, state=["paused"])) == []
        later = SandboxQuery(metadata={"run": run}, started_after=datetime.now(UTC) + timedelta(1))
        assert Sandbox.list(query=later) == []
        assert len(Sandbox.list(query=SandboxQuery(metadata={"run": run}, template="python"))) == 3
        # the REST API pages: X-Next-Token names where the next page starts
        pages, token = [], None
        with daemon.client() as c:
            while True:
                params = {
                    "metadata": f"run={run}",
                    "limit": 2,
                    **({"next_token": token} if token else {}),
                }
                r = c.get("/sandboxes", params=params)
                pages.append([s["sandbox_id"] for s in r.json()])
                token = r.headers.get("x-next-token")
                if token is None:
                    break
        assert pages == [ids[:2], ids[2:]]
    finally:
        for s in made:
            s.kill()


def test_connect_reaches_the_same_sandbox(sandbox: Sandbox) -> None:
    sandbox.files.write("marker", "here")
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.files.read("marker") == "here"


def test_sandbox_dies_at_its_timeout(daemon: Daemon) -> None:
    sbx = Sandbox.create(timeout=1)
    deadline = time.monotonic() + 15
    while sbx.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sbx.is_running()


def test_set_timeout_extends_and_shortens(daemon: Daemon) -> None:
    sbx = Sandbox.create(timeout=10)
    first_end = sbx.get_info().end_at
    sbx.set_timeout(60)
    before = sbx.get_info().end_at
    assert before > first_end
    # past the first end (by the daemon's clock, which is this host's): still running
    time.sleep(max(0.0, first_end.timestamp() + 1 - time.time()))
    assert sbx.is_running()
    sbx.set_timeout(1)
    assert sbx.get_info().end_at < before
    deadline = time.monotonic() + 15
    while sbx.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sbx.is_running()


def test_kill_frees_the_jail_and_its_cgroup(daemon: Daemon) -> None:
    import pathlib

    sbx = Sandbox.create()
    sandbox_id = sbx.sandbox_id
    cgroup_dirs = list(
        pathlib.Path("/sys/fs/cgroup").glob(f"*/{daemon.cgroup_parent}/{sandbox_id}")
    )
    cgroup_dirs += list(pathlib.Path("/sys/fs/cgroup").glob(f"{daemon.cgroup_parent}/{sandbox_id}"))
    assert cgroup_dirs, "the sandbox's cgroup should exist while it runs"
    sbx.kill()
    assert all(not d.exists() for d in cgroup_dirs)


def test_creates_beyond_the_warm_pool_are_distinct_and_work(daemon: Daemon) -> None:
    """More concurrent creates than the pool holds: some are hand-overs, some cold boots."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(5) as ex:
        # five cold starts at once on a loaded host: a deadline of its own, not the default 30 s
        sandboxes = list(ex.map(lambda _: Sandbox.create(request_timeout=120), range(5)))
    try:
        ids = {s.sandbox_id for s in sandboxes}
        assert len(ids) == 5
        for i, s in enumerate(sandboxes):
            s.files.write("/tmp/who", str(i))
        # each is its own sandbox: none sees another's file
        assert [s.files.read("/tmp/who") for s in sandboxes] == [str(i) for i in range(5)]
    finally:
        for s in sandboxes:
            s.kill()


def test_a_gone_sandbox_is_an_error_not_a_missing_file(daemon: Daemon) -> None:
    from firebox import SandboxNotFoundException

    sbx = Sandbox.create()
    assert sbx.files.exists("/nope") is False
    assert sbx.commands.kill(999999) is False
    sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        sbx.files.exists("/nope")
    with pytest.raises(SandboxNotFoundException):
        sbx.commands.kill(1)
