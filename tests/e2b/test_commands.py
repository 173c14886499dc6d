"""Commands through E2B's own Python SDK and its process service (Connect RPC): foreground
and background, stdin, signals, list, connect, timeouts, users, and a sandbox killed under a
running command."""

from __future__ import annotations

import threading

import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    Sandbox,
    SandboxException,
    TimeoutException,
)

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only


def test_foreground_output_exit_code_and_callbacks(e2b_sandbox: Sandbox) -> None:
    out: list[str] = []
    r = e2b_sandbox.commands.run(
        "echo one; echo two >&2; echo three", on_stdout=out.append, on_stderr=out.append
    )
    assert (r.stdout, r.stderr, r.exit_code) == ("one\nthree\n", "two\n", 0)
    assert "".join(out).count("\n") == 3
    with pytest.raises(CommandExitException) as e:
        e2b_sandbox.commands.run("echo partial; exit 7")
    assert e.value.exit_code == 7 and e.value.stdout == "partial\n"


def test_users_cwd_and_envs(e2b_sandbox: Sandbox) -> None:
    assert e2b_sandbox.commands.run("whoami").stdout == "user\n"
    assert e2b_sandbox.commands.run("whoami", user="root").stdout == "root\n"
    assert e2b_sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    r = e2b_sandbox.commands.run("echo $A-$B", envs={"A": "x", "B": "y"})
    assert r.stdout == "x-y\n"
    with pytest.raises(SandboxException, match="user"):
        e2b_sandbox.commands.run("whoami", user="nobody-here")  # type: ignore[arg-type]


def test_background_stdin_list_and_kill(e2b_sandbox: Sandbox) -> None:
    handle = e2b_sandbox.commands.run("cat", background=True, stdin=True)
    assert handle.pid in [p.pid for p in e2b_sandbox.commands.list()]
    listed = next(p for p in e2b_sandbox.commands.list() if p.pid == handle.pid)
    assert listed.cmd == "/bin/bash" and listed.args[-1] == "cat"
    e2b_sandbox.commands.send_stdin(handle.pid, "echoed\n")
    e2b_sandbox.commands.close_stdin(handle.pid)
    result = handle.wait()
    assert result.stdout == "echoed\n" and result.exit_code == 0

    sleeper = e2b_sandbox.commands.run("sleep 600", background=True)
    assert e2b_sandbox.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as e:
        sleeper.wait()
    assert e.value.exit_code != 0
    assert sleeper.pid not in [p.pid for p in e2b_sandbox.commands.list()]
    assert e2b_sandbox.commands.kill(sleeper.pid) is False  # E2B: False for a gone pid


def test_stdin_streamed_in_chunks(e2b_sandbox: Sandbox) -> None:
    handle = e2b_sandbox.commands.run("cat", background=True, stdin=True)
    e2b_sandbox.commands.stream_input(handle.pid, iter(["one ", b"two ", "three\n"]))
    e2b_sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "one two three\n"


def test_connect_to_a_running_command(e2b_sandbox: Sandbox) -> None:
    handle = e2b_sandbox.commands.run(
        "read line; echo got-$line; sleep 0.2; echo done", background=True, stdin=True
    )
    handle.disconnect()  # the command runs on without a listener
    again = e2b_sandbox.commands.connect(handle.pid)
    e2b_sandbox.commands.send_stdin(handle.pid, "x\n")
    result = again.wait()
    assert result.stdout.endswith("got-x\ndone\n") and result.exit_code == 0


def test_a_command_past_its_timeout_raises_timeout(e2b_sandbox: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        e2b_sandbox.commands.run("sleep 30", timeout=1)
    assert e2b_sandbox.commands.run("echo still-works").stdout == "still-works\n"


def test_killing_the_sandbox_under_a_command_raises(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=600)
    handle = sbx.commands.run("sleep 600", background=True)
    threading.Timer(0.5, sbx.kill).start()
    with pytest.raises(SandboxException):
        handle.wait()


async def test_async_sdk_runs_commands(e2b_env: dict[str, str]) -> None:
    sbx = await AsyncSandbox.create(timeout=600)
    try:
        r = await sbx.commands.run("echo async")
        assert r.stdout == "async\n"
        seen: list[str] = []
        handle = await sbx.commands.run("echo bg", background=True, on_stdout=seen.append)
        result = await handle.wait()
        assert result.stdout == "bg\n" and seen == ["bg\n"]
    finally:
        await sbx.kill()
