"""examples/e2b_python.py and examples/e2b_js.mjs, E2B's own quickstarts, run as a user runs
them: a fresh process with only the environment `firebox e2b env` prints."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import Daemon
from tests.e2b.test_js import ROOT, _node

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only


def _env_from_cli(daemon: Daemon) -> dict[str, str]:
    """The environment exactly as `firebox e2b env` prints it for this daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "FIREBOX_"))}
    printed = subprocess.run(
        [sys.executable, "-m", "firebox.cli", "e2b", "env"],
        env={**env, **daemon.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for line in printed.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    assert env["E2B_API_URL"] == f"{daemon.url}/e2b" and env["E2B_API_KEY"] == daemon.key
    return env


def _run(argv: list[str], env: dict[str, str]) -> str:
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_e2b_python_quickstart(daemon: Daemon) -> None:
    out = _run([sys.executable, "examples/e2b_python.py"], _env_from_cli(daemon))
    assert "hello world" in out and "name='home'" in out


def test_e2b_js_quickstart(daemon: Daemon) -> None:
    node = _node()
    out = _run([node, "examples/e2b_js.mjs"], _env_from_cli(daemon))
    assert "hello world" in out and "name: 'home'" in out
