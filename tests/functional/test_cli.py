"""The `firebox` command against the real daemon."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import Daemon


def firebox(daemon: Daemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FIREBOX_URL": daemon.url, "FIREBOX_API_KEY": daemon.key}
    return subprocess.run(
        [sys.executable, "-m", "firebox.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_sandbox_create_list_exec_kill(daemon: Daemon) -> None:
    created = firebox(daemon, "sandbox", "create", "--metadata", "via=cli")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    assert sandbox_id.startswith("sbx_")
    listed = firebox(daemon, "sandbox", "list", "--metadata", "via=cli")
    assert sandbox_id in listed.stdout
    ran = firebox(daemon, "sandbox", "exec", sandbox_id, "--", "echo", "hello from", "cli")
    assert ran.returncode == 0 and ran.stdout == "hello from cli\n"
    failed = firebox(daemon, "sandbox", "exec", sandbox_id, "--", "sh -c 'echo oops >&2; exit 7'")
    assert failed.returncode == 7 and "oops" in failed.stderr
    assert firebox(daemon, "sandbox", "kill", sandbox_id).returncode == 0
    gone = firebox(daemon, "sandbox", "exec", sandbox_id, "--", "true")
    assert gone.returncode == 1 and "not running" in gone.stderr


def test_sandbox_pause_list_by_state_resume(daemon: Daemon) -> None:
    sandbox_id = firebox(daemon, "sandbox", "create").stdout.strip()
    try:
        firebox(daemon, "sandbox", "exec", sandbox_id, "--", "sh -c 'echo kept > /tmp/x'")
        paused = firebox(daemon, "sandbox", "pause", sandbox_id)
        assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
        listed = firebox(daemon, "sandbox", "list", "--state", "paused")
        assert f"{sandbox_id}" in listed.stdout and "paused" in listed.stdout
        assert sandbox_id not in firebox(daemon, "sandbox", "list", "--state", "running").stdout
        resumed = firebox(daemon, "sandbox", "resume", sandbox_id, "--timeout", "600")
        assert resumed.returncode == 0 and "running" in resumed.stdout, resumed.stderr
        ran = firebox(daemon, "sandbox", "exec", sandbox_id, "--", "cat /tmp/x")
        assert ran.stdout == "kept\n"
    finally:
        firebox(daemon, "sandbox", "kill", sandbox_id)


def test_sandbox_snapshot_fork_and_create_from_a_snapshot(daemon: Daemon) -> None:
    sandbox_id = firebox(daemon, "sandbox", "create").stdout.strip()
    made: list[str] = []
    try:
        firebox(daemon, "sandbox", "exec", sandbox_id, "--", "sh -c 'echo saved > /tmp/s'")
        name = f"cli-{sandbox_id[-8:]}"
        taken = firebox(daemon, "sandbox", "snapshot", sandbox_id, "--name", name)
        assert taken.returncode == 0 and taken.stdout.startswith("snap_"), taken.stderr
        assert name in firebox(daemon, "sandbox", "snapshots").stdout
        created = firebox(daemon, "sandbox", "create", "--snapshot", name)
        assert created.returncode == 0, created.stderr
        made.append(created.stdout.strip())
        forked = firebox(daemon, "sandbox", "fork", sandbox_id, "--count", "2")
        assert forked.returncode == 0, forked.stderr
        made += forked.stdout.split()
        assert len(made) == 3
        for m in made:
            assert firebox(daemon, "sandbox", "exec", m, "--", "cat /tmp/s").stdout == "saved\n"
    finally:
        for m in made:
            firebox(daemon, "sandbox", "kill", m)
        firebox(daemon, "sandbox", "kill", sandbox_id)
    assert firebox(daemon, "sandbox", "delete-snapshot", name).returncode == 0


def test_doctor_says_which_backends_work(daemon: Daemon) -> None:
    out = firebox(daemon, "--home", str(daemon.home), "doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("ok ") and "jail" in line for line in lines)
    microvm = [line for line in lines if line[3:].lstrip().startswith("microvm")]
    # a verdict either way, with its reason; on a host without usable KVM, TCG's
    assert len(microvm) == 1 and microvm[0][:3] in ("ok ", "no "), lines
    assert "KVM" in microvm[0] or "QEMU" in microvm[0], microvm


def test_bad_usage_is_a_clear_error(daemon: Daemon) -> None:
    out = firebox(daemon, "sandbox", "exec", "sbx_x")
    assert out.returncode != 0 and "give the command after --" in out.stderr
