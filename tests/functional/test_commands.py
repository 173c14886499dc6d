"""Commands through the real daemon into a real jail."""

from __future__ import annotations

import time

import pytest

from firebox import CommandExitException, Sandbox, TimeoutException


def test_run_returns_output_and_exit_code(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)


def test_non_zero_exit_raises_with_the_result(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("echo partial; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "partial\n"


def test_output_streams_before_the_command_ends(sandbox: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    start = time.monotonic()
    sandbox.commands.run(
        "for i in 1 2 3; do echo line$i; sleep 0.3; done",
        on_stdout=lambda s: seen.append((time.monotonic() - start, s)),
    )
    text = "".join(s for _, s in seen)
    assert text == "line1\nline2\nline3\n"
    # the first line arrived well before the command's ~0.9 s were over
    assert seen[0][0] < 0.6
    assert [s for _, s in seen][0].startswith("line1")


def test_stdout_and_stderr_keep_their_order(sandbox: Sandbox) -> None:
    events: list[str] = []
    sandbox.commands.run(
        "echo a; sleep 0.1; echo b >&2; sleep 0.1; echo c",
        on_stdout=lambda s: events.append("out:" + s.strip()),
        on_stderr=lambda s: events.append("err:" + s.strip()),
    )
    assert events == ["out:a", "err:b", "out:c"]


def test_envs_cwd_and_user(sandbox: Sandbox) -> None:
    r = sandbox.commands.run("echo $FOO; pwd; id -un", envs={"FOO": "bar"})
    assert r.stdout.split() == ["bar", "/home/user", "user"]
    r = sandbox.commands.run("pwd; id -u", cwd="/tmp", user="root")
    assert r.stdout.split() == ["/tmp", "0"]


def test_sandbox_envs_apply_to_every_command(daemon: object) -> None:
    with Sandbox.create(envs={"GREETING": "hi"}) as sbx:
        assert sbx.commands.run("echo $GREETING").stdout == "hi\n"


def test_stdin_data_and_interactive_stdin(sandbox: Sandbox) -> None:
    assert sandbox.commands.run("cat", stdin="piped\n").stdout == "piped\n"
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "one\n")
    sandbox.commands.send_stdin(handle.pid, "two\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "one\ntwo\n"


def test_background_command_list_and_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 300", background=True, tag="sleeper")
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in listed and listed[handle.pid].tag == "sleeper"
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == 137
    assert handle.pid not in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(999999) is False


def test_command_timeout_kills_it(sandbox: Sandbox) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - start < 10
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


def test_missing_program_is_a_clear_failure(sandbox: Sandbox) -> None:
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("no-such-program-xyz")
    assert info.value.exit_code == 127
    assert "not found" in info.value.stderr


def test_plain_command_lines_run_as_under_bash(sandbox: Sandbox) -> None:
    # a plain line skips bash (agent/shell.py); what cannot be exec'd still goes to bash
    env = sandbox.commands.run("env").stdout.splitlines()
    assert "_=/usr/bin/env" in env and "SHLVL=0" in env
    sandbox.files.write("/home/user/no-shebang.sh", "echo from bash $((1 + 1))\n")
    sandbox.commands.run("chmod +x /home/user/no-shebang.sh")
    assert sandbox.commands.run("./no-shebang.sh").stdout == "from bash 2\n"
    sandbox.files.write("/home/user/not-executable", "x")  # no x bit: exec'ing it fails
    with pytest.raises(CommandExitException) as info:
        sandbox.commands.run("/home/user/not-executable")
    assert info.value.exit_code == 126
    assert "Permission denied" in info.value.stderr


def test_many_commands_at_once(sandbox: Sandbox) -> None:
    handles = [sandbox.commands.run(f"sleep 0.2; echo {i}", background=True) for i in range(10)]
    assert [h.wait().stdout for h in handles] == [f"{i}\n" for i in range(10)]


def test_binary_output_is_decoded_with_replacement(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(r"printf 'ok \377\n'")
    assert r.stdout.startswith("ok ") and "\ufffd" in r.stdout
