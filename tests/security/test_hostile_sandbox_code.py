"""What sandbox code does to its own files and processes must not break the API for its owner,
and anonymous clients must not be able to grow the daemon's memory."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest

from firebox import CommandExitException, Sandbox
from tests.conftest import Daemon


def test_odd_file_metadata_does_not_break_the_files_api(sandbox: Sandbox) -> None:
    handle = sandbox.files.watch_dir("/home/user")
    try:
        sandbox.commands.run(
            "python3 -c \"import os; open('far', 'w'); os.utime('far', (1e13, 1e13));"
            " open(b'bad\\xff', 'w'); os.symlink(b'\\xfe', b'link\\xfd')\""
        )
        names = {e.name for e in sandbox.files.list("/home/user")}
        assert {"far", "bad\ufffd", "link\ufffd"} <= names
        # clamped to the API's 9999 on tmpfs (jail); ext4 (a microVM's disk) stops at 2446
        assert sandbox.files.get_info("far").modified_time.year in (9999, 2446)
        deadline = time.monotonic() + 5
        seen: set[str] = set()
        while "bad\ufffd" not in seen and time.monotonic() < deadline:
            seen |= {e.name for e in handle.get_new_events()}
            time.sleep(0.05)
        assert "bad\ufffd" in seen
    finally:
        handle.stop()


def test_a_fork_bomb_does_not_cost_the_owner_control(sandbox: Sandbox) -> None:
    bomb = sandbox.commands.run(
        'python3 -c "import os, time\nwhile True:\n try:\n  os.fork() or time.sleep(60)\n'
        ' except OSError:\n  time.sleep(0.01)"',
        background=True,
        timeout=120,
    )
    time.sleep(2)  # let it take every pid the sandbox has
    listed = {p.pid for p in sandbox.commands.list()}
    assert bomb.pid in listed
    assert sandbox.commands.kill(bomb.pid) is True
    with contextlib.suppress(CommandExitException):
        bomb.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert sandbox.commands.run("echo alive").stdout == "alive\n"
            break
        except CommandExitException:
            time.sleep(0.2)  # the last children are still exiting
    else:
        raise AssertionError("the sandbox did not recover after the bomb was killed")


def test_shared_memory_works_for_the_user(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(
        "python3 -c 'import multiprocessing as m; m.Lock(); print(\"ok\")'; df -k /dev/shm"
    )
    assert r.stdout.startswith("ok\n")
    size_kb = int(r.stdout.splitlines()[-1].split()[1])
    assert size_kb <= 256 * 1024


# A microVM's agent is not a host process, and inside the guest no sandbox command may look
# into it: test_microvm.py checks that instead.
@pytest.mark.backends("jail")
def test_the_agent_holds_no_stray_descriptors(sandbox: Sandbox, daemon: Daemon) -> None:
    procs = daemon.sandbox_pids(sandbox.sandbox_id)
    cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in procs}
    agents = [
        p
        for p, cmd in cmdlines.items()
        if cmd.startswith(b"/usr/bin/python3") and b"firebox.agent.main" in cmd
    ]
    assert len(agents) == 1
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{agents[0]}/fd"))
    kinds = [os.readlink(f"/proc/{agents[0]}/fd/{fd}").split(":")[0] for fd in fds[3:]]
    # stdio and the channel (a socket); then per code-context interpreter (the default python
    # one is started at once) its pidfd and four pipes: commands, messages, stdout, stderr
    assert fds[:3] == [0, 1, 2] and kinds.count("socket") == 1, kinds
    interpreters = kinds.count("anon_inode")
    assert interpreters <= 1 and kinds.count("pipe") == 4 * interpreters, kinds
    assert len(kinds) == 1 + 5 * interpreters, kinds


def test_anonymous_huge_bodies_are_refused_before_they_are_read(daemon: Daemon) -> None:
    before = daemon.peak_rss_mb()
    big = b'{"metadata": {"k": "' + b"x" * (200 * 1024 * 1024) + b'"}}'
    r = httpx.post(daemon.url + "/sandboxes", content=big, timeout=60)
    assert r.status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    try:
        r = httpx.post(daemon.url + "/sandboxes", content=chunks(), timeout=60)
        assert r.status_code == 413
    except httpx.HTTPError:
        pass  # the daemon may close the connection while the client still sends
    assert daemon.peak_rss_mb() - before < 50
