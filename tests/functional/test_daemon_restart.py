"""A daemon restart loses nothing: killed (SIGKILL) or stopped, it leaves its sandboxes
running, each held by its supervisor, and the next daemon of its home adopts them (channel,
record, timer, state); one that died meanwhile is reported crashed and freed; a stop that
ends its sandboxes leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import FireboxException, Sandbox, SandboxNotFoundException
from firebox.backends.owner import Owner
from firebox.confine import cgroups
from firebox.testing import LocalDaemon
from tests.conftest import Daemon

COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; sleep 0.05; done"
)


def _cgroup_dirs(parent: str, sandbox_id: str | None = None) -> list[Path]:
    pattern = f"{parent}/{sandbox_id}" if sandbox_id else f"{parent}/sbx_*"
    root = Path("/sys/fs/cgroup")
    return list(root.glob(pattern)) + list(root.glob("*/" + pattern))


def _procs(parent: str, sandbox_id: str) -> set[int]:
    return {
        int(p)
        for d in _cgroup_dirs(parent, sandbox_id)
        for p in (d / "cgroup.procs").read_text().split()
    }


def _n(sbx: Sandbox) -> int:
    return int(sbx.files.read("/tmp/n").strip() or 0)


@pytest.fixture
def first(daemon: Daemon, backend_name: str, tmp_path: Path) -> Iterator[LocalDaemon]:
    d = LocalDaemon(
        home=tmp_path,
        pool_size=0,
        cgroup_parent=f"firebox-restart-{os.getpid()}-{backend_name}",
        isolation=backend_name,
        on_stop="keep",
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()
        # whatever a failed test left running is adopted and ended by one more daemon
        with _again(d):
            pass


def _again(first: LocalDaemon) -> LocalDaemon:
    """The next daemon of ``first``'s home (it ends its sandboxes when stopped)."""
    return LocalDaemon(
        home=first.home,
        pool_size=0,
        cgroup_parent=first.cgroup_parent,
        isolation=first.isolation,
    )


def _sigkill(d: LocalDaemon) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)  # no clean shutdown: as if the daemon crashed
    d.proc.wait(30)


def test_a_killed_daemons_sandboxes_run_on_and_the_next_adopts_them(first: LocalDaemon) -> None:
    opts = {"api_key": first.key, "api_url": first.url}
    busy = Sandbox.create(timeout=1800, **opts)
    busy.run_code("kept = 'a variable'")
    busy.files.write("/home/user/file.txt", "a file")
    busy.commands.run(COUNTER, background=True)
    paused = Sandbox.create(timeout=1800, **opts)
    paused.files.write("/tmp/p", "paused across a restart")
    paused.pause()
    deadline = time.monotonic() + 30
    while not busy.files.exists("/tmp/n"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = _n(busy)
    _sigkill(first)
    time.sleep(1)
    assert _procs(first.cgroup_parent, busy.sandbox_id), "the sandbox died with its daemon"

    with _again(first) as second:
        opts = {"api_key": second.key, "api_url": second.url}
        again = Sandbox.connect(busy.sandbox_id, **opts)
        assert again.get_info().state == "running"
        assert again.run_code("kept").text == "a variable"
        assert again.files.read("/home/user/file.txt") == "a file"
        assert _n(again) > before  # the background command ran on through the restart
        info = Sandbox.get_info(paused.sandbox_id, **opts)
        assert info.state == "paused"
        woken = Sandbox.connect(paused.sandbox_id, **opts)
        assert woken.files.read("/tmp/p") == "paused across a restart"
        assert woken.commands.run("echo awake").stdout == "awake\n"
    # the second daemon ended them as it stopped: nothing of them is left
    assert not _cgroup_dirs(first.cgroup_parent), "a clean stop leaves no cgroup behind"
    assert not Owner.of_home(first.home).jail_disks.exists() or not any(
        Owner.of_home(first.home).jail_disks.iterdir()
    )
    assert not list(Owner.of_home(first.home).run_dir.glob("*.sock")), "supervisors are gone"


def test_a_stopped_daemon_leaves_its_sandboxes_to_the_next(first: LocalDaemon) -> None:
    sbx = Sandbox.create(timeout=1800, api_key=first.key, api_url=first.url)
    sbx.files.write("/tmp/x", "kept")
    first.stop()  # SIGTERM, --on-stop keep
    second = _again(first)
    # on the same port: nothing the daemon started holds its listening socket
    second.port, second.url = first.port, first.url
    with second:
        again = Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
        assert again.files.read("/tmp/x") == "kept"


def test_a_sandbox_that_died_while_the_daemon_was_down_is_reported_and_freed(
    first: LocalDaemon,
) -> None:
    sbx = Sandbox.create(timeout=1800, api_key=first.key, api_url=first.url)
    _sigkill(first)
    for pid in _procs(first.cgroup_parent, sbx.sandbox_id):  # its holder (bwrap, QEMU) dies
        # killing one may already have ended the next (a child dies with its parent)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with _again(first) as second:
        with pytest.raises(SandboxNotFoundException, match="crashed while the daemon was down"):
            Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
        assert not _cgroup_dirs(first.cgroup_parent, sbx.sandbox_id), "its cgroup was freed"
        run_dir = Owner.of_home(first.home).run_dir
        assert not list(run_dir.glob(f"{sbx.sandbox_id}.*")), "its supervisor's files too"


def test_a_stream_cut_by_a_restart_ends_with_an_error_and_reconnecting_works(
    first: LocalDaemon,
) -> None:
    sbx = Sandbox.create(timeout=1800, api_key=first.key, api_url=first.url)
    handle = sbx.commands.run(
        "for i in $(seq 100000); do echo $i; sleep 0.01; done", background=True
    )
    time.sleep(0.5)
    _sigkill(first)
    with pytest.raises(FireboxException):
        handle.wait()
    with _again(first) as second:
        again = Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
        assert handle.pid in [p.pid for p in again.commands.list()]
        seen: list[str] = []
        attached = again.commands.connect(handle.pid, on_stdout=seen.append)
        deadline = time.monotonic() + 30
        while not seen:
            assert time.monotonic() < deadline, "no output after reconnecting"
            time.sleep(0.05)
        again.commands.kill(handle.pid)
        with pytest.raises(FireboxException):
            attached.wait()


def test_a_daemon_killed_right_after_a_pause_loses_nothing(first: LocalDaemon) -> None:
    # a microVM's pause goes on in the background (its RAM made into a file) after the call
    # returns: a daemon killed then leaves it half made, and the next wakes it all the same
    sbx = Sandbox.create(timeout=1800, api_key=first.key, api_url=first.url)
    sbx.run_code("kept = 'through a cut-short pause'")
    sbx.pause()
    _sigkill(first)
    with _again(first) as second:
        again = Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
        assert again.run_code("kept").text == "through a cut-short pause"


def test_the_daemons_own_cgroup_killed_leaves_its_sandboxes_to_the_next(
    first: LocalDaemon,
) -> None:
    """As a container runtime stopping a node's pod: every process in the daemon's cgroup is
    killed. The sandboxes' supervisors were moved out of it (to ``.supervisors`` under the
    sandboxes' parent), so the sandboxes run on and the next daemon adopts them."""
    assert first.proc is not None
    pod = f"fbx-pod-{os.getpid()}"  # the "container's" cgroup, made for this test
    cgroups.hold_supervisor(first.proc.pid, pod)  # any unlimited group will do
    try:
        sbx = Sandbox.create(timeout=1800, api_key=first.key, api_url=first.url)
        sbx.files.write("/tmp/x", "kept")
        members = _procs(pod, cgroups.SUPERVISORS)
        assert members == {first.proc.pid}, "only the daemon is in its own cgroup"
        for pid in members:
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(30)
        with _again(first) as second:
            again = Sandbox.connect(sbx.sandbox_id, api_key=second.key, api_url=second.url)
            assert again.files.read("/tmp/x") == "kept"
    finally:
        held = _cgroup_dirs(pod, cgroups.SUPERVISORS)
        for d in [*held, *{d.parent for d in held}]:  # emptied: the daemon in it is dead
            with contextlib.suppress(OSError):
                d.rmdir()
