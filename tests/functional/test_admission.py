"""Host-wide admission, on each backend: a create past the host's limits is refused at once
with its reason (429 for what killing a sandbox frees, 503 for the host's own memory or disk),
and starts nothing; the limit frees up as sandboxes end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from firebox import Sandbox
from firebox.exceptions import RateLimitException, UnavailableException
from firebox.testing import LocalDaemon
from tests.conftest import Daemon


@contextmanager
def _daemon(backend_name: str, *args: str) -> Iterator[LocalDaemon]:
    with LocalDaemon(
        isolation=backend_name,
        pool_size=0,
        cgroup_parent=f"firebox-admission-{os.getpid()}-{backend_name}",
        args=args,
    ) as d:
        yield d


def _create(d: LocalDaemon) -> Sandbox:
    return Sandbox.create(api_key=d.key, api_url=d.url, timeout=1800)  # each test kills its own


def test_the_host_runs_at_most_its_maximum_of_sandboxes(daemon: Daemon, backend_name: str) -> None:
    with _daemon(backend_name, "--max-sandboxes", "2") as d:
        first, second = _create(d), _create(d)
        with pytest.raises(RateLimitException, match="maximum of 2 sandboxes"):
            _create(d)
        # a client is told when to try again, on both edges
        headers = {"X-API-Key": d.key}
        refused = httpx.post(f"{d.url}/sandboxes", json={}, headers=headers, timeout=30)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        e2b = httpx.post(
            f"{d.url}/e2b/sandboxes", json={"templateID": "base"}, headers=headers, timeout=30
        )
        assert e2b.status_code == 429 and e2b.headers["Retry-After"] == "1"
        assert len(Sandbox.list(api_key=d.key, api_url=d.url)) == 2  # nothing half-started
        first.kill()
        third = _create(d)  # the limit frees up as a sandbox ends
        assert third.commands.run("echo ok").stdout == "ok\n"
        second.kill()
        third.kill()


def test_memory_commitment_is_bounded(daemon: Daemon, backend_name: str) -> None:
    # One sandbox's 512 MB limit (plus QEMU's own for a microVM) fits in 1000 MB; two do not.
    with _daemon(backend_name, "--max-memory-mb", "1000") as d:
        first = _create(d)
        with pytest.raises(RateLimitException, match="memory limits"):
            _create(d)
        first.kill()


@pytest.mark.parametrize(
    ("flag", "says"),
    [("--min-free-disk-mb", "MB free"), ("--min-free-memory-mb", "memory available")],
)
def test_creates_stop_before_the_host_runs_short(
    daemon: Daemon, backend_name: str, flag: str, says: str
) -> None:
    with _daemon(backend_name, flag, str(10**9)) as d:
        with pytest.raises(UnavailableException, match=says):
            _create(d)
        assert Sandbox.list(api_key=d.key, api_url=d.url) == []
