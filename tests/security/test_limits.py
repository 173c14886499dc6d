"""Limits end in a classified error, and the daemon and a neighbour sandbox keep answering."""

from __future__ import annotations

import pytest

from firebox import CommandExitException, MemoryLimitExceeded, Sandbox
from tests.conftest import Daemon


def still_fine(sbx: Sandbox, neighbour: Sandbox, daemon: Daemon) -> None:
    assert neighbour.commands.run("echo alive").stdout == "alive\n"
    assert sbx.commands.run("echo alive").stdout == "alive\n"
    with daemon.client() as c:
        assert c.get("/health").status_code == 200


def test_memory_limit_kills_a_big_allocation_with_a_clear_error(
    sandbox: Sandbox, neighbour: Sandbox, daemon: Daemon
) -> None:
    with pytest.raises(MemoryLimitExceeded) as info:
        sandbox.commands.run("python3 -c 'b = bytearray(1024**3); print(len(b))'", timeout=60)
    err = info.value
    assert err.exit_code == 137
    assert err.error == "memory_limit"
    assert "memory limit of 512 MB" in str(err)
    still_fine(sandbox, neighbour, daemon)


def test_fork_bomb_stops_at_the_pids_limit(
    sandbox: Sandbox, neighbour: Sandbox, daemon: Daemon
) -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(5000):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(20); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError as e:\n"
        "        print('fork failed after', n, e); break\n"
    )
    sandbox.files.write("/tmp/bomb.py", bomb)
    try:
        r = sandbox.commands.run("python3 /tmp/bomb.py", timeout=60)
        out = r.stdout
    except CommandExitException as e:
        out = e.stdout
    assert "fork failed after" in out
    forked = int(out.split("fork failed after")[1].split()[0])
    assert forked < 300  # the default pids limit is 256 for the whole sandbox
    with daemon.client() as c:
        assert c.get("/health").status_code == 200
    assert neighbour.commands.run("echo alive").stdout == "alive\n"
    # the bomb's children die with their sandbox when it is killed (no host leftovers)


def test_filling_the_disk_stops_at_its_cap(
    sandbox: Sandbox, neighbour: Sandbox, daemon: Daemon
) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("dd if=/dev/zero of=/home/user/fill bs=1M count=4096", timeout=120)
    assert "No space left on device" in info.value.stderr
    size = int(sandbox.commands.run("stat -c %s /home/user/fill").stdout)
    assert size <= 256 * 1024 * 1024
    sandbox.commands.run("rm /home/user/fill")
    still_fine(sandbox, neighbour, daemon)
