"""agent/shell.py: which command lines skip bash, and that those run as they would under it."""

from __future__ import annotations

import subprocess

import pytest

from firebox.agent import shell

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.parametrize(
    "cmd",
    [
        "true",
        "ls -la /tmp",
        "  python3 -c pass  ",
        "dd if=/dev/zero of=/dev/null bs=1k count=1",
        "/usr/bin/env",
        "./script.sh arg",
    ],
)
def test_plain_lines_skip_bash(cmd: str) -> None:
    env = {"PATH": PATH}
    argv = shell.direct_argv(cmd, env)
    assert argv is not None and argv[1:] == cmd.split()[1:]
    assert env["_"] == argv[0] and env["SHLVL"] == "0"


@pytest.mark.parametrize(
    "cmd",
    [
        "echo hi",  # a builtin with options of its own
        "cd /tmp",
        "export A=1",
        "A=1 env",  # an assignment
        "ls *.py",
        "ls ~",
        "echo $HOME",
        "ls | wc",
        "true; false",
        "true && false",
        "ls > out",
        "ls 'a b'",
        "ls a\\ b",
        "sleep 1 &",
        "ls\nls",
        "(ls)",
        "ls {a,b}",
        "ls #x",
        "ls\tx",
        "true --help",  # the program has options the builtin has not
        "no-such-program-here",
        "",
        "ls é",
    ],
)
def test_lines_that_need_bash_keep_it(cmd: str) -> None:
    assert shell.direct_argv(cmd, {"PATH": PATH}) is None


def test_a_direct_line_sees_the_environment_bash_would_give(tmp_path: object) -> None:
    env = {"PATH": PATH, "A": "1"}
    direct_env = dict(env)
    argv = shell.direct_argv("env", direct_env)
    assert argv is not None
    through_bash = subprocess.run(shell.bash_argv("env"), env=env, capture_output=True, text=True)
    direct = subprocess.run(argv, env=direct_env, capture_output=True, text=True)
    # bash also exports PWD when the caller did not; the agent always sets it (base_env)
    expected = {ln for ln in through_bash.stdout.splitlines() if not ln.startswith("PWD=")}
    assert set(direct.stdout.splitlines()) == expected
