"""Commands through the real daemon into a real sandbox. The tests taking ``sdk`` run with
firebox's SDK and with E2B's (through the E2B edge); the rest use what firebox's alone has
(tags, stdin data, a handle's stdin, its connect timeout)."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest

from firebox import (
    CommandExitException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    TimeoutException,
)
from tests.conftest import Daemon, Sdk
from tests.functional.handshake import GIVE_UP, wait_for_file, write_when


def test_run_returns_output_and_exit_code(any_sandbox: Any) -> None:
    sandbox = any_sandbox
    r = sandbox.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)


def test_non_zero_exit_raises_with_the_result(any_sandbox: Any, sdk: Sdk) -> None:
    sandbox = any_sandbox
    with pytest.raises(sdk.command_exit) as info:
        sandbox.commands.run("echo partial; exit 3")
    assert info.value.exit_code == 3
    assert info.value.stdout == "partial\n"


def test_output_streams_before_the_command_ends(sandbox: Sandbox) -> None:
    # line2 is printed only once the go file exists, which this test writes only once it has
    # received line1: so line1 streamed while the command still ran.
    go = f"/tmp/go-{secrets.token_hex(4)}"
    seen: list[str] = []
    first = threading.Event()

    def on_stdout(s: str) -> None:
        seen.append(s)
        if "line1" in s:
            first.set()

    writer = write_when(first, sandbox, go)
    r = sandbox.commands.run(
        f"echo line1; {wait_for_file(go)}; [ -e {go} ] && echo line2 || echo gave-up",
        on_stdout=on_stdout,
        timeout=120,
    )
    writer.join(60)
    assert r.stdout == "".join(seen) == "line1\nline2\n"
    assert seen[0].startswith("line1")


def test_stdout_and_stderr_keep_their_order(sandbox: Sandbox) -> None:
    # Each line is written only once the test has received the one before (a file handshake),
    # so each is read on its own and their order is the order they were written in.
    token = secrets.token_hex(4)
    go_b, go_c = f"/tmp/go-b-{token}", f"/tmp/go-c-{token}"
    events: list[str] = []
    saw_a, saw_b = threading.Event(), threading.Event()

    def record(stream: str, s: str) -> None:
        line = s.strip()
        events.append(f"{stream}:{line}")
        if line == "a":
            saw_a.set()
        elif line == "b":
            saw_b.set()

    writers = [write_when(saw_a, sandbox, go_b), write_when(saw_b, sandbox, go_c)]
    sandbox.commands.run(
        f"echo a; {wait_for_file(go_b)}; [ -e {go_b} ] && echo b >&2 || echo gave-up >&2; "
        f"{wait_for_file(go_c)}; [ -e {go_c} ] && echo c || echo gave-up",
        on_stdout=lambda s: record("out", s),
        on_stderr=lambda s: record("err", s),
        timeout=180,
    )
    for w in writers:
        w.join(60)
    assert events == ["out:a", "err:b", "out:c"]


def test_envs_cwd_and_user(any_sandbox: Any) -> None:
    sandbox = any_sandbox
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


def test_command_timeout_kills_it(any_sandbox: Any, sdk: Sdk) -> None:
    sandbox = any_sandbox
    start = time.monotonic()
    with pytest.raises(sdk.timeout):
        sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - start < 10
    assert sandbox.commands.run("echo still here").stdout == "still here\n"


def test_missing_program_is_a_clear_failure(any_sandbox: Any, sdk: Sdk) -> None:
    sandbox = any_sandbox
    with pytest.raises(sdk.command_exit) as info:
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


def test_many_commands_at_once(any_sandbox: Any) -> None:
    sandbox = any_sandbox
    handles = [sandbox.commands.run(f"sleep 0.2; echo {i}", background=True) for i in range(10)]
    assert [h.wait().stdout for h in handles] == [f"{i}\n" for i in range(10)]


def test_binary_output_is_decoded_with_replacement(any_sandbox: Any) -> None:
    sandbox = any_sandbox
    r = sandbox.commands.run(r"printf 'ok \377\n'")
    assert r.stdout.startswith("ok ") and "\ufffd" in r.stdout


# -- command handles as E2B's: triples, a reader beside the caller, connect --------------------


def test_iterating_a_handle_yields_stdout_stderr_pty_triples(any_sandbox: Any) -> None:
    sandbox = any_sandbox
    handle = sandbox.commands.run("echo out; echo err >&2", background=True)
    chunks = list(handle)
    assert all(len(c) == 3 and c[2] is None for c in chunks)
    assert all((c[0] is None) != (c[1] is None) for c in chunks)
    assert "".join(c[0] for c in chunks if c[0] is not None) == "out\n"
    assert "".join(c[1] for c in chunks if c[1] is not None) == "err\n"
    assert handle.wait().exit_code == 0


def test_background_callbacks_fire_without_iterating(sandbox: Sandbox) -> None:
    # cat echoes its stdin: the callback can only have fired while the command still ran,
    # from the handle's own reader, since nothing here iterates before close_stdin
    seen = threading.Event()
    chunks: list[str] = []

    def on_stdout(s: str) -> None:
        chunks.append(s)
        seen.set()

    handle = sandbox.commands.run("cat", background=True, stdin=True, on_stdout=on_stdout)
    handle.send_stdin("hello\n")
    assert seen.wait(GIVE_UP)
    assert "".join(chunks) == handle.stdout == "hello\n"
    assert handle.exit_code is None  # still running
    handle.close_stdin()
    assert handle.wait().stdout == "hello\n"


def test_wait_raises_on_a_non_zero_exit_and_iterating_on_a_timeout(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("echo partial; exit 5", background=True)
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert (info.value.exit_code, info.value.stdout) == (5, "partial\n")
    handle = sandbox.commands.run("sleep 30", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        for _ in handle:
            pass
    with pytest.raises(TimeoutException):
        handle.wait()


def test_connect_gets_the_output_from_then_on_and_the_end(sandbox: Sandbox) -> None:
    go = f"/tmp/go-{secrets.token_hex(4)}"
    saw_before = threading.Event()
    handle = sandbox.commands.run(
        f"echo before; {wait_for_file(go)}; [ -e {go} ] && echo after || echo gave-up; exit 3",
        background=True,
        on_stdout=lambda s: saw_before.set(),
    )
    assert saw_before.wait(GIVE_UP)
    handle.disconnect()  # nobody listens now; the command waits on
    assert handle.pid in {p.pid for p in sandbox.commands.list()}
    seen: list[str] = []
    connected = sandbox.commands.connect(handle.pid, on_stdout=seen.append)
    assert connected.pid == handle.pid
    also = sandbox.commands.connect(handle.pid)  # a second listener at once
    sandbox.files.write(go, "")
    with pytest.raises(CommandExitException) as info:
        connected.wait()
    assert (info.value.exit_code, info.value.stdout) == (3, "after\n")
    assert "".join(seen) == "after\n"
    with pytest.raises(CommandExitException) as info:
        also.wait()
    assert (info.value.exit_code, info.value.stdout) == (3, "after\n")
    with pytest.raises(SandboxException, match="disconnected"):
        handle.wait()


def test_connect_to_a_missing_or_finished_command_is_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999)
    done = sandbox.commands.run("true", background=True)
    done.wait()
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(done.pid)


def test_connect_timeout_stops_listening_and_the_command_runs_on(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 300", background=True, timeout=0)
    connected = sandbox.commands.connect(handle.pid, timeout=1)
    with pytest.raises(TimeoutException, match="runs on"):
        connected.wait()
    assert handle.pid in {p.pid for p in sandbox.commands.list()}
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as info:
        handle.wait()
    assert info.value.exit_code == 137


def test_a_sandbox_killed_mid_command_raises(daemon: Daemon) -> None:
    sbx = Sandbox.create()
    try:
        handle = sbx.commands.run("sleep 300", background=True, timeout=0)
    finally:
        sbx.kill()
    with pytest.raises(SandboxNotFoundException, match="was killed or reached its end of life"):
        handle.wait()
