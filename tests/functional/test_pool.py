"""The warm pool on a real daemon of its own: a pooled sandbox's cgroup has the background
weights while it waits, and the normal ones from the moment a client's create returns it,
before its first call (server/pool.py; the weights: confine/cgroups/weight.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firebox import Sandbox
from firebox.confine import cgroups
from firebox.confine.cgroups.weight import current
from firebox.testing import LocalDaemon

pytestmark = pytest.mark.slow


def _sandbox_cgroups(daemon: LocalDaemon) -> list[str]:
    """The sandboxes' cgroups under the daemon's parent (a microVM's template and bake ones
    are not sandboxes)."""
    base = cgroups.detect().mounts["cpu"] / daemon.cgroup_parent
    if not base.is_dir():  # made with the daemon's first sandbox
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and p.name.startswith("sbx_"))


def _background(daemon: LocalDaemon, name: str) -> bool | None:
    """Whether every weight of sandbox ``name``'s cgroup is the background one (False: every
    one the normal one; None: some of each, or the cgroup is going)."""
    try:
        cg = cgroups.attach(name, daemon.cgroup_parent)
        got = {(current(path), normal, low) for path, normal, low in cgroups.weight_files(cg)}
    except OSError:
        return None
    if all(value == low for value, _, low in got):
        return True
    if all(value == normal for value, normal, _ in got):
        return False
    return None


def _until(what: str, check: Callable[[], list[str]], timeout: float = 120.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)
    return found


def test_a_pooled_sandbox_yields_until_a_client_has_it(
    backend_name: str, image: Path, tmp_path: Path
) -> None:
    with LocalDaemon(home=tmp_path, isolation=backend_name, pool_size=1) as daemon:

        def pooled() -> list[str]:
            return [n for n in _sandbox_cgroups(daemon) if _background(daemon, n)]

        sbx = None
        for _ in range(10):
            waiting = _until("pooled sandbox at background priority", pooled)
            time.sleep(1.0)  # its warm-up done: it is in the pool, not still being readied
            sbx = Sandbox.create(api_key=daemon.key, api_url=daemon.url, timeout=600)
            # before any call: a create, pooled or not, hands over a normal-weight sandbox
            assert _background(daemon, sbx.sandbox_id) is False
            if sbx.sandbox_id in waiting:
                break
            sbx.kill()  # a cold boot: the pooled one was still warming up; again
            sbx = None
        assert sbx is not None, "no create was handed the pooled sandbox"
        try:
            assert sbx.commands.run("echo hi").stdout == "hi\n"
            # the refill's new sandbox waits at background priority beside the live one
            refilled = _until(
                "refilled sandbox", lambda: [n for n in pooled() if n != sbx.sandbox_id]
            )
            assert sbx.sandbox_id not in refilled
            assert _background(daemon, sbx.sandbox_id) is False
        finally:
            sbx.kill()
