"""E2B's own JavaScript SDKs against the session's daemon: tests/e2b/js/ under node's own test
runner, with only E2B's environment set. Skipped, with the reason, where Node or the pinned
packages (the README's first command installs both) are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.e2b.conftest import e2b_environment

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only

ROOT = Path(__file__).resolve().parents[2]
NODE_MIN = (20, 18, 1)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on PATH: E2B's JS SDK needs Node >= 20.18.1 (scripts/setup)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    parts = tuple(int(p) for p in version.stdout.strip().lstrip("v").split(".")[:3])
    if parts < NODE_MIN or parts[0] == 21:
        pytest.skip(f"node {version.stdout.strip()} is too old for E2B's JS SDK (>= 20.18.1)")
    if not (ROOT / "node_modules" / "e2b").is_dir():
        pytest.skip("E2B's JS SDK is not installed: run scripts/setup (npm ci)")
    return node


def test_e2b_js_sdks(daemon: Daemon) -> None:
    node = _node()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "FIREBOX_"))}
    env.update(e2b_environment(daemon))
    env["E2B_OTHER_API_KEY"] = daemon.new_key("e2b-js-other")
    run = subprocess.run(
        [node, "--test", "--test-reporter=spec", str(ROOT / "tests/e2b/js")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
