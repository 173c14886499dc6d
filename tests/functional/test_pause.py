"""Pause and resume on every backend: everything a sandbox had is there again after each of
many cycles (files, a python context's variables, a background command's progress), calls in
flight end with a clear error, and a paused sandbox is listed, refused or resumed as its
lifecycle says."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from firebox import FireboxException, Sandbox, SandboxQuery
from tests.conftest import Daemon

CYCLES = 10
# a counter written whole each step (rename), so a read never sees half a number
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/progress.new; "
    "mv /tmp/progress.new /tmp/progress; sleep 0.05; done"
)


@pytest.fixture
def paused_kind(daemon: Daemon, backend_name: str) -> str:
    return {"microvm": "disk", "gvisor": "memory", "jail": "memory"}[backend_name]


@pytest.fixture
def sbx(daemon: Daemon) -> Iterator[Sandbox]:
    s = Sandbox.create(timeout=1800)
    try:
        yield s
    finally:
        s.kill()


def _progress(sbx: Sandbox) -> int:
    return int(sbx.files.read("/tmp/progress").strip() or 0)


def test_ten_cycles_keep_files_variables_and_a_background_command(
    sbx: Sandbox, paused_kind: str
) -> None:
    sbx.files.write("/home/user/kept.txt", "cycle 0")
    sbx.run_code("kept = {'n': 0}; import secrets; token = secrets.token_hex(8)")
    token = sbx.run_code("token").text
    sbx.commands.run(COUNTER, background=True)
    deadline = time.monotonic() + 30
    while not sbx.files.exists("/tmp/progress"):
        assert time.monotonic() < deadline, "the background command did not start"
        time.sleep(0.05)
    for cycle in range(1, CYCLES + 1):
        before = _progress(sbx)
        sbx.pause()
        info = sbx.get_info()
        assert (info.state, info.pause_keeps) == ("paused", paused_kind)
        Sandbox.connect(sbx.sandbox_id)
        assert sbx.get_info().state == "running"
        assert sbx.files.read("/home/user/kept.txt") == f"cycle {cycle - 1}"
        sbx.files.write("/home/user/kept.txt", f"cycle {cycle}")
        assert sbx.run_code("kept['n'] += 1; kept['n']").text == str(cycle)
        assert sbx.run_code("token").text == token  # the same process, not a new one
        deadline = time.monotonic() + 30
        while _progress(sbx) <= before:  # the background command runs on
            assert time.monotonic() < deadline, "the background command stopped"
            time.sleep(0.1)


def test_a_paused_sandbox_keeps_its_timeout_left_and_is_listed_as_paused(sbx: Sandbox) -> None:
    sbx.set_timeout(600)
    left = sbx.get_info().end_at.timestamp() - time.time()
    sbx.pause()
    paused = Sandbox.list(query=SandboxQuery(state=["paused"]))
    assert sbx.sandbox_id in [s.sandbox_id for s in paused]
    running = Sandbox.list(query=SandboxQuery(state=["running"]))
    assert sbx.sandbox_id not in [s.sandbox_id for s in running]
    time.sleep(2)
    Sandbox.resume(sbx.sandbox_id)
    after = sbx.get_info().end_at.timestamp() - time.time()
    assert left - 10 < after <= left + 1  # the two seconds paused did not count


def test_calls_into_a_paused_sandbox_are_refused_without_auto_resume(sbx: Sandbox) -> None:
    sbx.pause()
    with pytest.raises(FireboxException, match="is paused: resume it first"):
        sbx.commands.run("true")
    sbx.pause()  # pausing a paused sandbox leaves it so
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.commands.run("echo back").stdout == "back\n"


def test_auto_resume_wakes_a_paused_sandbox_on_a_call(daemon: Daemon) -> None:
    sbx = Sandbox.create(timeout=1800, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sbx.run_code("x = 41")
        sbx.pause()
        assert sbx.run_code("x + 1").text == "42"
        assert sbx.get_info().state == "running"
    finally:
        sbx.kill()


def test_on_timeout_pause_pauses_instead_of_killing(daemon: Daemon) -> None:
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    try:
        sbx.files.write("/tmp/mark", "still here")
        deadline = time.monotonic() + 60
        while sbx.get_info().state != "paused":
            assert time.monotonic() < deadline, "the timeout did not pause it"
            time.sleep(0.2)
        Sandbox.connect(sbx.sandbox_id, timeout=600)
        assert sbx.files.read("/tmp/mark") == "still here"
        assert sbx.get_info().end_at.timestamp() - time.time() > 500
    finally:
        sbx.kill()


def test_a_stream_in_flight_ends_with_a_clear_error_and_the_command_runs_on(
    sbx: Sandbox,
) -> None:
    handle = sbx.commands.run("for i in $(seq 600); do echo $i; sleep 0.05; done", background=True)
    time.sleep(0.5)
    sbx.pause()
    with pytest.raises(FireboxException, match="paused|ended"):
        handle.wait()
    Sandbox.connect(sbx.sandbox_id)
    pids = [p.pid for p in sbx.commands.list()]
    assert handle.pid in pids
    again = sbx.commands.connect(handle.pid)
    sbx.commands.kill(handle.pid)
    with pytest.raises(FireboxException):
        again.wait()


def test_a_killed_paused_sandbox_is_gone(daemon: Daemon) -> None:
    sbx = Sandbox.create(timeout=1800)
    sbx.pause()
    assert sbx.kill() is True
    assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list()]


def test_a_microvm_paused_for_a_while_wakes_from_its_baked_ram(
    daemon: Daemon, backend_name: str, sbx: Sandbox
) -> None:
    if backend_name != "microvm":
        pytest.skip("a jail's pause is a freeze: nothing is written to bake")
    from firebox.backends.owner import Owner

    vm_dir = Owner.of_home(daemon.home).vm_dirs / sbx.sandbox_id
    sbx.run_code("kept = [1, 2, 3]")
    sbx.files.write("/home/user/f.txt", "baked")
    sbx.pause()
    deadline = time.monotonic() + 120
    while not (vm_dir / "paused.dev").exists() or (vm_dir / "paused.state").exists():
        assert time.monotonic() < deadline, "the pause was not baked into a RAM file"
        time.sleep(0.2)
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.run_code("sum(kept)").text == "6"
    assert sbx.files.read("/home/user/f.txt") == "baked"
    assert not (vm_dir / "paused.mem").exists()  # QEMU maps it; its name is gone
    sbx.pause()  # and again, from the woken VM
    Sandbox.connect(sbx.sandbox_id)
    assert sbx.run_code("sum(kept)").text == "6"
