"""examples/template_app.py, the worked example of docs/TEMPLATES.md, run as a user runs it: a
fresh process that finds the session's daemon through FIREBOX_URL and FIREBOX_API_KEY alone.
It builds a template whose web app is its start command, and shows the app answering in a
sandbox of it the moment the create returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "template_app.py"


def _run_example(daemon: Daemon) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "FIREBOX_"))}
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=ROOT,
        env={**env, **daemon.env()},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_the_template_example_starts_with_its_app_answering(daemon: Daemon) -> None:
    out = _run_example(daemon)
    lines = out.splitlines()
    # the build's log, in order: every step, then the start command's check
    steps = [line for line in lines if re.match(r"\[build\] step \d: ", line)]
    assert any("COPY server.py /home/user/app/" in line for line in steps), out
    assert any("WORKDIR /home/user/app" in line for line in steps), out
    marks = ["environment: ", "starting the template: python3 server.py", "start command is ready"]
    found = [next(i for i, line in enumerate(lines) if mark in line) for mark in marks]
    assert found == sorted(found), out
    # the app answers at once, with the template's environment, workdir and user
    answer = next(line for line in lines if line.startswith("curl -s localhost:8080 -> "))
    body = json.loads(answer.split(" -> ", 1)[1])
    assert body["greeting"] == "hello from template-app"
    assert body["cwd"] == "/home/user/app" and body["user"] == "user"
    # ENV values were expanded in order, and reach commands as well as the start command
    assert "APP_URL=http://localhost:8080/" in lines, out
    assert re.search(r"^build \d+\.\d s, create \d+ ms$", out, re.MULTILINE), out


def test_the_template_example_again_takes_every_step_from_the_cache(daemon: Daemon) -> None:
    _run_example(daemon)
    out = _run_example(daemon)
    assert "[build] step 1: CACHED COPY server.py /home/user/app/" in out, out
    assert "every step was cached" in out, out
    assert '"greeting": "hello from template-app"' in out, out
