"""A sandbox's metrics through firebox's own API and SDK (``GET /sandboxes/{id}/metrics``,
``get_metrics``): samples appear, a file written grows the disk used, another key gets a 404.
The daemon samples every 5 s: each check polls until a deadline, none asserts how fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from firebox import AsyncSandbox, NotFoundException, Sandbox
from firebox._core.models import SandboxMetrics
from tests.conftest import Daemon

T = TypeVar("T")
MiB = 1 << 20
DEADLINE = 120.0


def _until(probe: Callable[[], T | None], what: str) -> T:
    end = time.monotonic() + DEADLINE
    seen = None
    while time.monotonic() < end:
        seen = probe()
        if seen:
            return seen
        time.sleep(1)
    raise AssertionError(f"no {what} within {DEADLINE:g} s; last seen {seen!r}")


def _latest(sbx: Sandbox) -> SandboxMetrics | None:
    metrics = sbx.get_metrics()
    return metrics[-1] if metrics else None


def test_samples_appear_and_a_written_file_grows_the_disk(sandbox: Sandbox) -> None:
    first = _until(lambda: _latest(sandbox), "first sample")
    info = sandbox.get_info()
    assert first.cpu_count == info.cpu_count
    assert first.cpu_used_pct is not None and first.cpu_used_pct >= 0
    assert first.mem_total is not None and 0 < first.mem_used <= first.mem_total
    assert first.disk_total is not None and first.disk_used is not None
    assert first.disk_total >= (info.disk_mb or 0) * MiB * 9 // 10  # the filesystem's, or more
    assert 0 <= first.disk_used <= first.disk_total
    assert abs((datetime.now(UTC) - first.timestamp).total_seconds()) < 600

    sandbox.commands.run("head -c 20971520 /dev/urandom > /tmp/blob && sync")
    grown = _until(
        lambda: (m := _latest(sandbox)) and (m.disk_used or 0) >= first.disk_used + 15 * MiB and m,
        "sample with 20 MiB more disk used",
    )
    assert grown.disk_used is not None and grown.disk_used <= (grown.disk_total or 0)

    stamps = [m.timestamp for m in Sandbox.get_metrics(sandbox.sandbox_id)]  # the class form
    assert len(stamps) >= 2 and stamps == sorted(stamps)  # oldest first
    assert sandbox.get_metrics(start=datetime.now(UTC) + timedelta(hours=1)) == []
    assert sandbox.get_metrics(end=datetime.now(UTC) - timedelta(hours=1)) == []


def test_async_sdk_reads_the_same_samples(sandbox: Sandbox) -> None:
    _until(lambda: _latest(sandbox), "first sample")

    async def read() -> list[SandboxMetrics]:
        sbx = await AsyncSandbox.connect(sandbox.sandbox_id)
        try:
            return await sbx.get_metrics()
        finally:
            await sbx.aclose()  # the sandbox runs on: the fixture kills it

    metrics = asyncio.run(read())
    assert metrics and metrics[0].mem_used > 0


def test_another_key_gets_not_found_and_bad_ranges_are_refused(
    daemon: Daemon, sandbox: Sandbox
) -> None:
    other = daemon.new_key("metrics-other")
    with pytest.raises(NotFoundException):
        Sandbox.get_metrics(sandbox.sandbox_id, api_key=other)
    with daemon.client(other) as c:
        r = c.get(f"/sandboxes/{sandbox.sandbox_id}/metrics")
        assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found"
    with daemon.client() as c:
        r = c.get(f"/sandboxes/{sandbox.sandbox_id}/metrics", params={"start": 20, "end": 10})
        assert r.status_code == 400 and "start" in r.json()["error"]["message"]

        # the answer is what the OpenAPI document says it is
        from openapi_schema_validator import OAS31Validator

        _until(lambda: _latest(sandbox), "first sample")
        r = c.get(f"/sandboxes/{sandbox.sandbox_id}/metrics")
        assert r.status_code == 200 and r.json()
        doc = c.get("/openapi.json").json()
        op = doc["paths"]["/sandboxes/{sandbox_id}/metrics"]["get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        OAS31Validator({**schema, "components": doc["components"]}).validate(r.json())


def test_a_cpu_burn_and_a_memory_allocation_show(sandbox: Sandbox) -> None:
    """What the sandbox does is what the host measures: a busy core and 200 MB held."""
    _until(lambda: _latest(sandbox), "first sample")
    quiet = _latest(sandbox)
    assert quiet is not None
    sandbox.commands.run(
        'python3 -c \'import time; b = bytearray(200 << 20); b[::4096] = b"x" * len(b[::4096]); '
        "end = time.time() + 40\nwhile time.time() < end: pass' >/dev/null 2>&1",
        background=True,
    )
    busy = _until(
        lambda: (
            (m := _latest(sandbox))
            and (m.cpu_used_pct or 0) >= 50
            and m.mem_used >= quiet.mem_used + 150 * MiB
            and m
        ),
        "sample with a busy core and 150 MiB more memory used",
    )
    assert busy.mem_total is None or busy.mem_used <= busy.mem_total


@pytest.mark.daemon_only
def test_prometheus_metrics_parse_and_move_with_the_work(daemon: Daemon) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(key: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with daemon.client(key) as c:
            r = c.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }

    before = scrape()
    created = ("firebox_creates_total", (("outcome", "ok"),))
    with Sandbox.create():
        during = scrape()
        running = [
            v
            for (n, labels), v in during.items()
            if n == "firebox_sandboxes" and ("state", "running") in labels
        ]
        assert sum(running) >= 1
        with daemon.client() as c:
            assert c.get("/sandboxes/sbx_0000000000000000").status_code == 404
        after = scrape()
        assert after[created] >= before.get(created, 0) + 1
        assert after[("firebox_create_seconds_count", ())] >= 1
        missing = ("firebox_errors_total", (("code", "sandbox_not_found"),))
        assert after[missing] >= during.get(missing, 0) + 1
        assert any(n == "firebox_pool_waiting" for n, _ in after)
    with daemon.client(daemon.new_key("not-admin")) as c:
        assert c.get("/metrics").status_code == 403


@pytest.mark.daemon_only
def test_top_shows_each_sandbox_and_its_usage(daemon: Daemon, sandbox: Sandbox) -> None:
    import os
    import subprocess
    import sys

    _until(lambda: _latest(sandbox), "first sample")
    shown = subprocess.run(
        [sys.executable, "-m", "firebox.cli", "sandbox", "top", "--once"],
        env={**os.environ, **daemon.env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    header, *rows = shown.splitlines()
    assert header.split()[:4] == ["SANDBOX", "TEMPLATE", "STATE", "CPU"]
    mine = [r for r in rows if r.startswith(sandbox.sandbox_id)]
    assert len(mine) == 1 and " running " in mine[0] and " MB" in mine[0], shown
