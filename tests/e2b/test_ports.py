"""A sandbox's port through E2B's own SDK: ``get_host`` builds the preview host from the
domain the daemon answers with; the traffic token goes in E2B's header; E2B's edge headers
(E2b-Sandbox-Id / E2b-Sandbox-Port) reach the same port; ``allow_public_traffic`` opens it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import Daemon
from tests.ports.helpers import WAIT, start_server

# The E2B edge translates onto the same core on every backend (which the functional suite
# checks on each): its translation is checked once.
pytestmark = [pytest.mark.daemon_only, pytest.mark.usefixtures("e2b_env")]
PORT = 8000


def _get(daemon: Daemon, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=daemon.url, timeout=WAIT) as c:
        return c.get("/", headers=headers)


def test_get_host_and_the_traffic_token(daemon: Daemon, e2b_sandbox: Any) -> None:
    sbx = e2b_sandbox
    start_server(sbx, PORT)
    host = sbx.get_host(PORT)
    assert host == f"{PORT}-{sbx.sandbox_id}.localhost:{daemon.port}"
    token = sbx.traffic_access_token
    assert token
    ok = _get(daemon, {"Host": host, "e2b-traffic-access-token": token})
    assert ok.status_code == 200 and ok.text.startswith("hello from"), ok.text
    assert _get(daemon, {"Host": host}).status_code == 403  # private unless asked otherwise
    # E2B's edge headers name the same port
    edge = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(PORT)}
    assert _get(daemon, {**edge, "e2b-traffic-access-token": token}).status_code == 200
    assert _get(daemon, edge).status_code == 403
    refused = _get(daemon, {**edge, "E2b-Sandbox-Port": "9", "e2b-traffic-access-token": token})
    assert refused.status_code == 502 and "nothing listens on port 9" in refused.text


def test_allow_public_traffic(daemon: Daemon, e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=600, network={"allow_public_traffic": True})
    try:
        start_server(sbx, PORT)
        assert _get(daemon, {"Host": sbx.get_host(PORT)}).status_code == 200
    finally:
        sbx.kill()
