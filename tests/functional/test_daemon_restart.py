"""A daemon that dies takes its sandboxes with it, and the next one reclaims what is left."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from firebox import Sandbox, SandboxNotFoundException
from firebox.backends.owner import Owner
from firebox.images.cache import image_root
from firebox.testing import LocalDaemon
from tests.conftest import Daemon


def _cgroup_dirs(parent: str, sandbox_id: str | None = None) -> list[Path]:
    pattern = f"{parent}/{sandbox_id}" if sandbox_id else f"{parent}/sbx_*"
    root = Path("/sys/fs/cgroup")
    return list(root.glob(pattern)) + list(root.glob("*/" + pattern))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_daemon_leaves_nothing_running_and_the_next_reclaims(
    daemon: Daemon, backend_name: str, tmp_path: Path
) -> None:
    first = LocalDaemon(
        home=tmp_path,
        pool_size=1,
        cgroup_parent=f"firebox-restart-{os.getpid()}-{backend_name}",
        isolation=backend_name,
    )
    first.start()
    try:
        sbx = Sandbox.create(api_key=first.key, api_url=first.url)
        sbx.commands.run("sleep 300", background=True)
        dirs = _cgroup_dirs(first.cgroup_parent, sbx.sandbox_id)
        pids = {int(p) for d in dirs for p in (d / "cgroup.procs").read_text().split()}
        assert pids, "the sandbox has processes"
    finally:
        assert first.proc is not None
        first.proc.kill()  # no clean shutdown: as if the daemon crashed
        first.proc.wait(30)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "sandbox processes outlived their daemon"
    vm_dirs = list((image_root() / "vm").glob(f"*/{sbx.sandbox_id}"))

    second = LocalDaemon(
        home=tmp_path, pool_size=0, cgroup_parent=first.cgroup_parent, isolation=backend_name
    )
    with second:
        assert second.key == first.key  # the admin key survives a restart
        assert not _cgroup_dirs(first.cgroup_parent, sbx.sandbox_id), "stale cgroup reclaimed"
        assert not any(d.exists() for d in vm_dirs), "a microVM's disk overlay reclaimed"
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
    assert not _cgroup_dirs(first.cgroup_parent), "a clean stop leaves no cgroup behind"
    root = Path("/sys/fs/cgroup")
    parents = list(root.glob(first.cgroup_parent)) + list(root.glob("*/" + first.cgroup_parent))
    assert not parents, "nor its own parent cgroup"
    assert not Owner.of_home(tmp_path).jail_disks.exists(), "nor the directory of its jails' disks"
