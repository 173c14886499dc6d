"""Snapshots and forks on every backend: a snapshot of a running sandbox starts any number of
sandboxes where it was (a microVM's memory and disk; a jail's files, and it says so), each
with an identity of its own; snapshots are their key's, listed, and deleted (refused while a
microVM made from one maps it); the source runs on throughout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import ConflictException, FireboxException, NotFoundException, Sandbox
from tests.conftest import Daemon

FORKS = 10


@pytest.fixture
def keeps(daemon: Daemon, backend_name: str) -> str:
    return {"microvm": "memory+disk", "gvisor": "disk", "jail": "disk"}[backend_name]


@pytest.fixture
def source(daemon: Daemon) -> Iterator[Sandbox]:
    s = Sandbox.create(timeout=1800)
    try:
        yield s
    finally:
        s.kill()


def _identity(sbx: Sandbox) -> tuple[str, str, str]:
    out = sbx.commands.run(  # as root: a jail's machine id is root's to read
        "hostname; cat /etc/machine-id; python3 -c 'import secrets; print(secrets.token_hex(8))'",
        user="root",
    ).stdout.split()
    return out[0], out[1], out[2]


def test_a_snapshot_starts_sandboxes_where_the_source_was(source: Sandbox, keeps: str) -> None:
    source.files.write("/home/user/notes.txt", "saved")
    source.run_code("answer = 42")
    snap = source.create_snapshot()
    assert (snap.sandbox_id, snap.keeps) == (source.sandbox_id, keeps)
    assert snap.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots()]
    source.files.write("/home/user/notes.txt", "changed after")  # the source runs on
    made = Sandbox.create(snapshot=snap.snapshot_id, timeout=600)
    try:
        assert made.files.read("/home/user/notes.txt") == "saved"
        if keeps == "memory+disk":
            assert made.run_code("answer").text == "42"  # its memory too
        else:  # a jail's processes start afresh: the variable is not there
            assert made.run_code("answer").error is not None
        assert _identity(made) != _identity(source)
    finally:
        made.kill()
    assert source.files.read("/home/user/notes.txt") == "changed after"
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False


def test_ten_forks_each_with_an_identity_of_its_own(source: Sandbox, keeps: str) -> None:
    source.files.write("/tmp/shared", "from the source")
    source.run_code("import random; seen = random.random()")
    started = time.monotonic()
    forks = source.fork(count=FORKS, timeout=600)
    took = time.monotonic() - started
    try:
        assert all(isinstance(f, Sandbox) for f in forks), forks
        sandboxes = [f for f in forks if isinstance(f, Sandbox)]
        assert len({s.sandbox_id for s in sandboxes}) == FORKS
        for s in sandboxes:
            assert s.files.read("/tmp/shared") == "from the source"
        identities = {_identity(s) for s in sandboxes}
        assert len(identities) == FORKS  # host name, machine id, randomness: each its own
        if keeps == "memory+disk":
            # its python state came along, and its generators were reseeded apart
            draws = {s.run_code("import random; random.random()").text for s in sandboxes}
            assert len(draws) == FORKS
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()
    assert source.commands.run("echo still").stdout == "still\n"
    assert took < 300  # bench/lifecycle.py measures it; this only bounds a hang
    # a fork's snapshot is not listed, and went with the last fork
    assert not [s for s in Sandbox.list_snapshots() if s.sandbox_id == source.sandbox_id]


def test_a_snapshot_in_use_is_kept_and_names_are_unique(source: Sandbox, keeps: str) -> None:
    snap = source.create_snapshot(name=f"named-{source.sandbox_id[-6:]}")
    with pytest.raises(ConflictException, match="exists"):
        source.create_snapshot(name=snap.name)
    made = Sandbox.create(snapshot=snap.name, timeout=600)  # by name
    try:
        if keeps == "memory+disk":
            with pytest.raises(ConflictException, match="kill them first"):
                Sandbox.delete_snapshot(snap.snapshot_id)
    finally:
        made.kill()
    assert Sandbox.delete_snapshot(snap.name or "") is True


def test_another_keys_snapshot_is_not_found(daemon: Daemon, source: Sandbox) -> None:
    snap = source.create_snapshot()
    other = {"api_key": daemon.new_key("snapshots-other"), "api_url": daemon.url}
    try:
        assert snap.snapshot_id not in [s.snapshot_id for s in Sandbox.list_snapshots(**other)]
        with pytest.raises(NotFoundException):
            Sandbox.create(snapshot=snap.snapshot_id, timeout=60, **other)
        assert Sandbox.delete_snapshot(snap.snapshot_id, **other) is False
        with pytest.raises(FireboxException):
            Sandbox.fork(source.sandbox_id, count=1, **other)
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id)


def test_snapshots_survive_a_daemon_restart(
    daemon: Daemon, backend_name: str, tmp_path: Path
) -> None:
    import os

    from firebox.testing import LocalDaemon

    first = LocalDaemon(
        home=tmp_path,
        pool_size=0,
        cgroup_parent=f"firebox-snaprestart-{os.getpid()}-{backend_name}",
        isolation=backend_name,
        on_stop="keep",
    )
    with first:
        opts = {"api_key": first.key, "api_url": first.url}
        src = Sandbox.create(timeout=600, **opts)
        src.files.write("/tmp/kept", "across a restart")
        snap = src.create_snapshot(name="restart")
        forks = src.fork(count=1, timeout=600)
        src.kill()
    again = LocalDaemon(
        home=tmp_path, pool_size=0, cgroup_parent=first.cgroup_parent, isolation=backend_name
    )
    with again:
        opts = {"api_key": again.key, "api_url": again.url}
        assert [s.snapshot_id for s in Sandbox.list_snapshots(**opts)] == [snap.snapshot_id]
        made = Sandbox.create(snapshot="restart", timeout=600, **opts)
        assert made.files.read("/tmp/kept") == "across a restart"
        fork = forks[0]
        assert isinstance(fork, Sandbox)
        adopted = Sandbox.connect(fork.sandbox_id, **opts)  # a fork was adopted too
        assert adopted.files.read("/tmp/kept") == "across a restart"
        made.kill()
        adopted.kill()
        assert Sandbox.delete_snapshot("restart", **opts) is True
