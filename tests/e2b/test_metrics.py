"""E2B's sandbox metrics through E2B's own SDK: ``sbx.get_metrics()`` shows a CPU burner and
memory a command allocates; ``GET /sandboxes/metrics`` lists only the key's own sandboxes;
another key's sandbox is not found. The daemon samples every 5 s, so each check polls until
a deadline (generous: the host may be loaded); nothing asserts how fast."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import NotFoundException, Sandbox

from tests.conftest import Daemon
from tests.e2b.conftest import e2b_environment
from tests.functional.test_metrics import _latest, _until  # the same polling, either SDK

MiB = 1 << 20

# Each a background command: it runs on while the test reads the metrics.
BURN = "python3 -c 'while True: pass'"
# 50 MiB of distinct bytes: every page touched, so it is really held (a zeroed bytearray is not)
HOLD_50_MIB = "python3 -c 'import time; b = bytes(range(256)) * (200 * 1024); time.sleep(3600)'"


def test_cpu_burner_and_allocated_memory_show(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=900)
    try:
        first = _until(lambda: _latest(sbx), "first sample")
        assert first.cpu_count >= 1
        assert 0 < first.mem_used <= first.mem_total
        assert 0 <= first.mem_cache <= first.mem_total
        assert first.disk_total > 0 and 0 <= first.disk_used <= first.disk_total
        assert abs((datetime.now(UTC) - first.timestamp).total_seconds()) < 600

        sbx.commands.run(BURN, background=True)
        busy = _until(
            lambda: next((m for m in sbx.get_metrics() if m.cpu_used_pct > 10), None),
            "sample with the CPU burner running",
        )
        assert busy.cpu_used_pct > 0

        before = _latest(sbx)
        assert before is not None
        sbx.commands.run(HOLD_50_MIB, background=True)
        grown = _until(
            lambda: (m := _latest(sbx)) and m.mem_used >= before.mem_used + 40 * MiB and m,
            "sample with 50 MiB more memory used",
        )
        assert grown.mem_used <= grown.mem_total

        # oldest first, and within the range asked for
        metrics = sbx.get_metrics()
        stamps = [m.timestamp for m in metrics]
        assert stamps == sorted(stamps) and len(metrics) >= 3
        assert sbx.get_metrics(start=datetime.now(UTC) + timedelta(hours=1)) == []
        middle = stamps[len(stamps) // 2]
        later = Sandbox.get_metrics(sbx.sandbox_id, start=middle)  # the class form
        assert later and all(m.timestamp >= middle - timedelta(seconds=1) for m in later)
        assert stamps[0] not in [m.timestamp for m in later]  # 5 s before: left out
    finally:
        sbx.kill()


def test_per_key_route_lists_only_the_callers_sandboxes(
    daemon: Daemon, e2b_env: dict[str, str]
) -> None:
    other_key = daemon.new_key("e2b-metrics-other")
    mine = Sandbox.create(timeout=600)
    theirs = Sandbox.create(timeout=600, api_key=other_key)
    try:
        _until(lambda: _latest(mine), "sample of mine")
        _until(lambda: _latest(theirs), "sample of theirs")
        ids = f"{mine.sandbox_id},{theirs.sandbox_id},nosuchsandbox"
        with httpx.Client(base_url=e2b_env["E2B_API_URL"], timeout=30) as c:
            r = c.get(
                "/sandboxes/metrics", params={"sandbox_ids": ids}, headers={"X-API-Key": daemon.key}
            )
            assert r.status_code == 200, r.text
            found = r.json()["sandboxes"]
            assert list(found) == [mine.sandbox_id]
            metric = found[mine.sandbox_id]
            for name in ("timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed",
                         "memTotal", "memCache", "diskUsed", "diskTotal"):  # fmt: skip
                assert name in metric, name
            r = c.get(
                "/sandboxes/metrics", params={"sandbox_ids": ids}, headers={"X-API-Key": other_key}
            )
            assert list(r.json()["sandboxes"]) == [theirs.sandbox_id]
            r = c.get("/sandboxes/metrics", headers={"X-API-Key": daemon.key})
            assert r.status_code == 400 and r.json()["code"] == 400  # E2B's error shape
    finally:
        mine.kill()
        theirs.kill()


def test_another_keys_sandbox_metrics_are_not_found(
    daemon: Daemon, e2b_env: dict[str, str]
) -> None:
    sbx = Sandbox.create(timeout=600)
    other = e2b_environment(daemon, daemon.new_key("e2b-metrics-404"))
    try:
        _until(lambda: _latest(sbx), "first sample")
        with pytest.raises(NotFoundException):
            Sandbox.get_metrics(sbx.sandbox_id, api_key=other["E2B_API_KEY"])
        with httpx.Client(base_url=e2b_env["E2B_API_URL"], timeout=30) as c:
            r = c.get(
                f"/sandboxes/{sbx.sandbox_id}/metrics",
                headers={"X-API-Key": other["E2B_API_KEY"]},
            )
            assert r.status_code == 404 and r.json()["code"] == 404
            r = c.get(
                f"/sandboxes/{sbx.sandbox_id}/metrics",
                params={"start": 2000, "end": 1000},
                headers={"X-API-Key": daemon.key},
            )
            assert r.status_code == 400, r.text
        assert sbx.get_metrics()  # the owner still sees them
    finally:
        sbx.kill()
    with pytest.raises(NotFoundException):
        Sandbox.get_metrics(sbx.sandbox_id)  # ended: gone with it


def test_envd_metrics_route_answers_the_latest_sample(
    daemon: Daemon, e2b_env: dict[str, str]
) -> None:
    sbx = Sandbox.create(timeout=600)
    try:
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token}
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=daemon.url, headers=headers, timeout=30) as c:
            r = c.get("/metrics")
            while r.status_code == 503 and time.monotonic() < deadline:
                time.sleep(1)
                r = c.get("/metrics")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cpu_count"] >= 1 and body["mem_used"] > 0
        assert body["mem_total"] >= body["mem_used"] and body["disk_total"] > 0
    finally:
        sbx.kill()
