"""Egress through E2B's SDK: what a create asks for is honoured (firebox's floor stays closed
whatever it asks), nothing is open unless asked, and update_network changes a running
sandbox's policy. The "internet" is the loopback origin of tests/security/test_egress.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import Daemon
from tests.security.test_egress import Origin
from tests.security.test_egress import origin as origin  # noqa: F401 (the fixture)

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only


def _status(sbx: Any, url: str) -> int:
    """The HTTP status a curl in the sandbox gets (through its proxy), 0 if none."""
    r = sbx.commands.run(
        f"env -u no_proxy -u NO_PROXY curl -s -m 20 -o /dev/null -w '%{{http_code}}' '{url}'; true",
        timeout=60,
    )
    return int(r.stdout.strip() or 0)


def test_nothing_is_reachable_unless_the_create_asks(
    e2b_env: dict[str, str], origin: Origin
) -> None:
    port = origin.server_address[1]
    closed = Sandbox.create(timeout=600)
    try:
        assert _status(closed, f"http://allowed.test:{port}/x") != 200
    finally:
        closed.kill()


def test_allow_out_is_honoured_and_update_network_changes_it(
    e2b_env: dict[str, str], origin: Origin
) -> None:
    port = origin.server_address[1]
    sbx = Sandbox.create(timeout=600, network={"allow_out": ["allowed.test"]})
    try:
        assert _status(sbx, f"http://allowed.test:{port}/a") == 200
        assert _status(sbx, f"http://also.test:{port}/b") != 200
        assert _status(sbx, f"http://rebind.test:{port}/c") != 200  # the floor: host loopback
        sbx.update_network({"allow_out": ["also.test"]})
        assert _status(sbx, f"http://also.test:{port}/d") == 200
        assert _status(sbx, f"http://allowed.test:{port}/e") != 200
        info = sbx.get_info()
        assert info.network and info.network["allow_out"] == ["also.test"]
    finally:
        sbx.kill()


def test_a_sandbox_made_closed_can_be_opened_later(e2b_env: dict[str, str], origin: Origin) -> None:
    port = origin.server_address[1]
    sbx = Sandbox.create(timeout=600)
    try:
        sbx.update_network({"allow_out": ["allowed.test"]})
        assert _status(sbx, f"http://allowed.test:{port}/f") == 200
    finally:
        sbx.kill()


def test_network_options_firebox_lacks_are_refused(daemon: Daemon, e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=600)
    try:
        with httpx.Client(base_url=e2b_env["E2B_API_URL"], timeout=30) as c:
            r = c.put(
                f"/sandboxes/{sbx.sandbox_id}/network",
                json={"dnsServers": ["192.0.2.1"]},
                headers={"X-API-Key": daemon.key},
            )
        assert r.status_code == 400 and "not available in firebox" in r.json()["message"]
    finally:
        sbx.kill()
