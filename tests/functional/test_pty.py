"""Terminal sessions (``sandbox.pty``, docs/API.md) on every backend: bash on a terminal
echoes what is typed, reports a resize, passes Ctrl-C to the foreground job, and survives its
client dropping (``pty.connect``); a session is a command like any other (listed, killed)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from firebox import CommandExitException, PtySize, Sandbox
from tests.conftest import Daemon

WAIT = 60.0


class Screen:
    """What a terminal session has shown, collected from ``on_data``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()

    def __call__(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk

    def wait_for(self, needle: bytes, after: int = 0) -> int:
        """Where ``needle`` shows (from ``after`` on), waiting for it."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self.lock:
                at = self.data.find(needle, after)
            if at >= 0:
                return at
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} never showed; the screen: {bytes(self.data)[-600:]!r}")


def test_a_shell_echoes_resizes_takes_ctrl_c_and_survives_a_reconnect(sandbox: Sandbox) -> None:
    screen = Screen()
    term = sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen, timeout=0)
    assert term.pid in [p.pid for p in sandbox.commands.list()]
    sandbox.pty.send_stdin(term.pid, b"echo typed-$((6*7))\n")
    screen.wait_for(b"typed-42")
    assert screen.wait_for(b"echo typed-$((6*7))") >= 0  # the terminal echoed the keys
    sandbox.pty.send_stdin(term.pid, b"tput cols; tput lines\n")
    screen.wait_for(b"80\r\n24")
    sandbox.pty.resize(term.pid, PtySize(rows=40, cols=132))
    mark = len(screen.data)
    sandbox.pty.send_stdin(term.pid, b"tput cols; tput lines\n")
    screen.wait_for(b"132\r\n40", mark)
    mark = len(screen.data)
    sandbox.pty.send_stdin(term.pid, b"sleep 30; echo slept-$((2*3))\n")
    time.sleep(1)
    sandbox.pty.send_stdin(term.pid, b"\x03")  # Ctrl-C
    sandbox.pty.send_stdin(term.pid, b"echo after-$((1+1))\n")
    screen.wait_for(b"after-2", mark)
    assert b"slept-6" not in screen.data

    term.disconnect()  # the client drops; the session runs on
    again = Screen()
    back = sandbox.pty.connect(term.pid, on_data=again, timeout=0)
    sandbox.pty.send_stdin(term.pid, b"echo back-$((3*3))\n")
    again.wait_for(b"back-9")
    sandbox.pty.send_stdin(term.pid, b"exit 3\n")
    with pytest.raises(CommandExitException) as e:  # its exit status comes through
        back.wait()
    assert e.value.exit_code == 3
    assert term.pid not in [p.pid for p in sandbox.commands.list()]


def test_a_session_is_killed_like_any_command(sandbox: Sandbox) -> None:
    screen = Screen()
    term = sandbox.pty.create(PtySize(rows=24, cols=80), on_data=screen, cmd="/bin/sh")
    sandbox.pty.send_stdin(term.pid, b"echo ready\n")
    screen.wait_for(b"ready")
    assert sandbox.pty.kill(term.pid)
    deadline = time.monotonic() + WAIT
    while term.pid in [p.pid for p in sandbox.commands.list()]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not sandbox.pty.kill(term.pid)


def _pane(tmux: list[str]) -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True
    ).stdout


def _until(tmux: list[str], text: str) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        pane = _pane(tmux)
        if text in pane:
            return pane
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never showed in the pane: {_pane(tmux)!r}")


def test_the_shell_command_in_a_real_terminal(daemon: Daemon, sandbox: Sandbox) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/setup --test installs it)")
    # a tmux server of the test's own (its own socket), stopped below by that socket
    tmux = ["tmux", "-L", f"firebox-test-{uuid.uuid4().hex[:12]}", "-f", "/dev/null"]
    env = {**os.environ, **daemon.env(), "TERM": "xterm-256color"}
    line = (
        f"{shlex.quote(sys.executable)} -m firebox.cli sandbox shell {sandbox.sandbox_id}; "
        "echo EXITED=$?; sleep 600"
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "t", "-x", "100", "-y", "30", line], env=env, check=True
    )
    try:
        _until(tmux, ":~$")  # the sandbox's prompt (a pane drops trailing blanks): it is up
        subprocess.run([*tmux, "send-keys", "-t", "t", "echo hi-$((2+3))", "Enter"], check=True)
        _until(tmux, "hi-5")
        subprocess.run([*tmux, "send-keys", "-t", "t", "tput cols", "Enter"], check=True)
        _until(tmux, "\n100\n")
        subprocess.run([*tmux, "resize-window", "-t", "t", "-x", "120", "-y", "30"], check=True)
        time.sleep(0.5)  # the window change reaches the shell command, then the sandbox
        subprocess.run([*tmux, "send-keys", "-t", "t", "tput cols", "Enter"], check=True)
        _until(tmux, "\n120\n")
        subprocess.run([*tmux, "send-keys", "-t", "t", "sleep 30", "Enter"], check=True)
        time.sleep(1)
        subprocess.run([*tmux, "send-keys", "-t", "t", "C-c"], check=True)
        subprocess.run([*tmux, "send-keys", "-t", "t", "echo after-$((1+1))", "Enter"], check=True)
        _until(tmux, "after-2")
        subprocess.run([*tmux, "send-keys", "-t", "t", "exit 4", "Enter"], check=True)
        _until(tmux, "EXITED=4")  # the session's exit status is the command's
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
