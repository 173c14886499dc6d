"""E2B's own SDKs, unchanged, against the session's daemon (tests/conftest.py): only the
environment E2B's SDKs read is set, as `firebox e2b env` prints it. The edge's translation runs
on the first backend tested (``daemon_only``); what differs by backend (pause, metrics) on each."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon

E2B_VARS = ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DOMAIN")


def e2b_environment(daemon: Daemon, key: str | None = None) -> dict[str, str]:
    return {
        "E2B_API_URL": f"{daemon.url}/e2b",
        "E2B_SANDBOX_URL": daemon.url,
        "E2B_API_KEY": key or daemon.key,
    }


@pytest.fixture(scope="session")
def e2b_env(daemon: Daemon) -> Iterator[dict[str, str]]:
    env = e2b_environment(daemon)
    old = {k: os.environ.get(k) for k in E2B_VARS}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def e2b_sandbox(e2b_env: dict[str, str]) -> Iterator[object]:
    """A sandbox made by E2B's own SDK (``e2b.Sandbox``), killed at teardown."""
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=1800)
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture
def e2b_ci_sandbox(e2b_env: dict[str, str]) -> Iterator[object]:
    """A sandbox made by E2B's code-interpreter SDK (``e2b_code_interpreter.Sandbox``)."""
    from e2b_code_interpreter import Sandbox

    sbx = Sandbox.create(timeout=1800)
    try:
        yield sbx
    finally:
        sbx.kill()
