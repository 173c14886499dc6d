"""E2B's control API through E2B's own Python SDK: lifecycle, listing with filters and paging,
timeouts, connect, refused features, and one key never seeing another's sandbox."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import (
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)

from tests.conftest import Daemon
from tests.e2b.conftest import e2b_environment

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only


def _ids(sandboxes: list) -> list[str]:
    return [s.sandbox_id for s in sandboxes]


def test_create_get_info_and_kill(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=600, metadata={"who": "control"}, envs={"GREETING": "hi"})
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "python"  # E2B's "base" is firebox's default template
        assert info.metadata == {"who": "control"}
        assert info.state == SandboxState.RUNNING
        assert info.cpu_count >= 1 and info.memory_mb >= 128
        left = (info.end_at - datetime.now(UTC)).total_seconds()
        assert 500 < left <= 600
        assert sbx.is_running()
        assert sbx.commands.run("echo $GREETING").stdout == "hi\n"
    finally:
        sbx.kill()
    assert not sbx.is_running()
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    assert Sandbox.kill(sbx.sandbox_id) is False  # E2B: False for a sandbox already gone


def test_set_timeout_and_connect_never_shortens(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=600)
    try:
        sbx.set_timeout(120)  # set_timeout sets, shorter or longer
        left = (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()
        assert 60 < left <= 120
        again = Sandbox.connect(sbx.sandbox_id, timeout=30)  # shorter: ignored
        left = (again.get_info().end_at - datetime.now(UTC)).total_seconds()
        assert left > 60
        Sandbox.connect(sbx.sandbox_id, timeout=900)  # longer: extends
        left = (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()
        assert 800 < left <= 900
        assert again.commands.run("echo connected").stdout == "connected\n"
    finally:
        sbx.kill()


def test_a_sandbox_ends_at_its_timeout(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=2)
    deadline = time.monotonic() + 60
    while sbx.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not sbx.is_running()


def test_list_filters_by_metadata_state_and_template(e2b_env: dict[str, str]) -> None:
    run = str(time.monotonic_ns())
    a = Sandbox.create(timeout=600, metadata={"run": run, "role": "a"})
    b = Sandbox.create(timeout=600, metadata={"run": run, "role": "b"})
    try:
        mine = Sandbox.list(query=SandboxQuery(metadata={"run": run})).next_items()
        assert sorted(_ids(mine)) == sorted([a.sandbox_id, b.sandbox_id])
        only_a = Sandbox.list(query=SandboxQuery(metadata={"run": run, "role": "a"}))
        assert _ids(only_a.next_items()) == [a.sandbox_id]
        running = SandboxQuery(metadata={"run": run}, state=[SandboxState.RUNNING])
        assert len(Sandbox.list(query=running).next_items()) == 2
        paused = SandboxQuery(metadata={"run": run}, state=[SandboxState.PAUSED])
        assert Sandbox.list(query=paused).next_items() == []
        by_template = SandboxQuery(metadata={"run": run}, template="base")
        assert len(Sandbox.list(query=by_template).next_items()) == 2
        later = SandboxQuery(
            metadata={"run": run}, started_after=datetime.now(UTC) + timedelta(hours=1)
        )
        assert Sandbox.list(query=later).next_items() == []
    finally:
        a.kill()
        b.kill()


def test_list_pages_in_a_stable_order(e2b_env: dict[str, str]) -> None:
    run = str(time.monotonic_ns())
    made = [Sandbox.create(timeout=600, metadata={"run": run}) for _ in range(5)]
    try:
        pages: list[list[str]] = []
        paginator = Sandbox.list(query=SandboxQuery(metadata={"run": run}), limit=2)
        while paginator.has_next:
            pages.append(_ids(paginator.next_items()))
        assert [len(p) for p in pages] == [2, 2, 1]
        seen = [i for p in pages for i in p]
        assert seen == [s.sandbox_id for s in reversed(made)]  # newest first, each once
        oldest = Sandbox.list(query=SandboxQuery(metadata={"run": run}), order="asc", limit=5)
        assert _ids(oldest.next_items()) == [s.sandbox_id for s in made]
    finally:
        for s in made:
            s.kill()


def test_features_firebox_lacks_are_refused_by_name(e2b_env: dict[str, str]) -> None:
    # a pause that drops the memory: firebox's always keeps it
    with pytest.raises(Exception, match="autoPauseMemory"):
        Sandbox.create(
            timeout=60, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}}
        )
    kept = Sandbox.create(timeout=60, lifecycle={"on_timeout": "kill", "auto_resume": False})
    kept.kill()


def test_errors_have_e2b_shape(daemon: Daemon, e2b_env: dict[str, str]) -> None:
    with httpx.Client(base_url=e2b_env["E2B_API_URL"], timeout=30) as c:
        r = c.get("/v2/sandboxes")
        assert r.status_code == 401 and r.json()["code"] == 401 and r.json()["message"]
        headers = {"X-API-Key": daemon.key}
        r = c.post("/v2/sandboxes", headers=headers, json={"timeout": 5})
        assert r.status_code == 400 and "templateID" in r.json()["message"]
        r = c.get("/v2/sandboxes", headers=headers, params={"nextToken": "garbage"})
        assert r.status_code == 400 and "nextToken" in r.json()["message"]
        r = c.post("/v2/sandboxes", headers=headers, json={"templateID": "NO such"})
        assert r.status_code == 400
    with pytest.raises(SandboxException, match="template"):
        Sandbox.create(template="NO such", timeout=60)


def test_another_keys_sandbox_is_not_found_on_every_route(
    daemon: Daemon, e2b_env: dict[str, str]
) -> None:
    sbx = Sandbox.create(timeout=600)
    other = e2b_environment(daemon, daemon.new_key("e2b-other"))
    opts = {"api_key": other["E2B_API_KEY"]}
    try:
        with pytest.raises(NotFoundException):
            Sandbox.get_info(sbx.sandbox_id, **opts)
        with pytest.raises(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, **opts)
        with pytest.raises(NotFoundException):
            Sandbox.set_timeout(sbx.sandbox_id, 5, **opts)
        assert Sandbox.kill(sbx.sandbox_id, **opts) is False
        assert sbx.sandbox_id not in _ids(Sandbox.list(**opts).next_items())
        headers = {"X-API-Key": other["E2B_API_KEY"]}
        with httpx.Client(base_url=e2b_env["E2B_API_URL"], headers=headers, timeout=30) as c:
            for method, path in [
                ("POST", "/sandboxes/{id}/refreshes"),
                ("POST", "/sandboxes/{id}/pause"),
                ("GET", "/sandboxes/{id}/metrics"),
            ]:
                r = c.request(method, path.format(id=sbx.sandbox_id), json={})
                assert r.status_code == 404, (path, r.text)
        assert sbx.is_running()  # untouched
    finally:
        sbx.kill()
