"""The jail's zygote (firebox/agent/zygote.py): agents forked from it, and the jail without it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from firebox import Sandbox
from firebox.testing import LocalDaemon, parent_of

pytestmark = pytest.mark.backends("jail")


def _zygote(daemon: LocalDaemon) -> list[int]:
    """The python of the daemon's zygote (its parent, bubblewrap, is one of them too)."""
    pids = daemon.zygote_pids()
    return [pid for pid in pids if parent_of(pid) in pids]


def _agent_command_lines(sbx: Sandbox) -> str:
    return sbx.commands.run(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done", user="root"
    ).stdout


def test_the_zygote_can_be_turned_off(
    backend_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREBOX_JAIL_ZYGOTE", "0")  # the daemon inherits it
    with (
        LocalDaemon(home=tmp_path, pool_size=0, isolation="jail") as d,
        Sandbox.create(api_key=d.key, api_url=d.url) as s,
    ):
        assert s.run_code("1 + 1").text == "2"
        assert s.commands.run("grep -c NoNewPrivs /proc/self/status").stdout == "1\n"
        out = _agent_command_lines(s)
        assert "firebox.agent.main" in out and "firebox.agent.zygote" not in out, out
        assert not _zygote(d)


def test_a_dead_zygote_is_replaced_and_creates_go_on(backend_name: str, tmp_path: Path) -> None:
    with LocalDaemon(home=tmp_path, pool_size=0, isolation="jail") as d:
        with Sandbox.create(api_key=d.key, api_url=d.url) as s:
            assert "firebox.agent.zygote" in _agent_command_lines(s)
        [zygote] = _zygote(d)
        os.kill(zygote, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{zygote}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # the create after the death starts a new zygote (or, while it cannot, the agent
        # itself): either way it works
        for _ in range(2):
            with Sandbox.create(api_key=d.key, api_url=d.url) as s:
                assert s.run_code("1 + 1").text == "2"
        [again] = _zygote(d)
        assert again != zygote
