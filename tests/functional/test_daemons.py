"""Daemons side by side on one host: each owns what it starts, by its home.

A benchmark, a harness or a second daemon for testing starts beside the user's daemon: none of
them may touch another's sandboxes (reclaim only what a dead daemon of its own home left),
share a host uid range with another's, or serve a home another daemon serves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import Sandbox
from firebox.testing import LocalDaemon

pytestmark = pytest.mark.slow


def _needs(*names: str) -> None:
    from firebox.backends.owner import Owner
    from firebox.backends.select import backends

    found = backends(Owner.of_process("test-probe"), 1_000_000_000)
    for name in names:
        verdict = found[name].availability()
        if not verdict.ok:
            pytest.skip(f"the {name} backend cannot run here: {verdict.reason}")


def _uids(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(u) for u in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


@contextlib.contextmanager
def _sandbox(daemon: LocalDaemon) -> Iterator[Sandbox]:
    sbx = Sandbox.create(api_key=daemon.key, api_url=daemon.url, timeout=900, request_timeout=300)
    try:
        yield sbx
    finally:
        sbx.kill()


def _still_whole(sbx: Sandbox, daemon: LocalDaemon, marker: str) -> None:
    """Its file, its background process, its cgroup: all as they were."""
    assert sbx.files.read("/home/user/marker") == marker
    assert [p.tag for p in sbx.commands.list()] == ["sleeper"]
    assert sbx.commands.run("echo alive").stdout == "alive\n"
    assert _cgroup_pids(daemon, sbx.sandbox_id), "its cgroup still holds its processes"


def test_daemons_side_by_side_never_touch_each_other(image: Path, tmp_path: Path) -> None:
    _needs("jail", "microvm")
    homes = [tmp_path / "a", tmp_path / "b"]
    with (
        LocalDaemon(home=homes[0], isolation="jail", pool_size=0) as jail,
        LocalDaemon(home=homes[1], isolation="microvm", pool_size=0) as vm,
        _sandbox(jail) as in_jail,
        _sandbox(vm) as in_vm,
    ):
        for sbx in (in_jail, in_vm):
            sbx.files.write("/home/user/marker", sbx.sandbox_id)
            sbx.commands.run("sleep 900", background=True, tag="sleeper")
        # a second sandbox on the jail daemon: every sandbox on the host has its own range
        with _sandbox(jail) as second:
            ranges = set()
            for daemon, sbx in ((jail, in_jail), (jail, second), (vm, in_vm)):
                pids = _cgroup_pids(daemon, sbx.sandbox_id)
                assert pids, sbx.sandbox_id
                first_ids = {min(_uids(pid)) // 65536 for pid in pids}
                assert len(first_ids) == 1, "one range per sandbox"
                ranges |= first_ids
            assert len(ranges) == 3, "no two sandboxes on the host share a host uid range"

        # a third daemon on a home already served: refused, saying by whom and what to do
        third = LocalDaemon(home=homes[0], isolation="jail", pool_size=0)
        with pytest.raises(RuntimeError) as refused:
            third.start()
        said = third.log_path.read_text()
        assert jail.proc is not None
        assert f"pid {jail.proc.pid}" in said and jail.url in said, said
        assert "FIREBOX_HOME" in said, said
        assert "Traceback" not in said, "one clear line, not a traceback"
        assert "already serves" in str(refused.value)

        # a daemon of a new home starts (its reclaim runs) and stops beside them
        with LocalDaemon(home=tmp_path / "c", isolation="jail", pool_size=1) as fourth:
            assert fourth.key not in (jail.key, vm.key)

        _still_whole(in_jail, jail, in_jail.sandbox_id)
        _still_whole(in_vm, vm, in_vm.sandbox_id)


def _cgroup_pids(daemon: LocalDaemon, sandbox_id: str) -> list[int]:
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        procs = base / daemon.cgroup_parent / sandbox_id / "cgroup.procs"
        if procs.exists():
            return [int(p) for p in procs.read_text().split()]
    return []
