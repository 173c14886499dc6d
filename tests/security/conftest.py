"""The security battery: one module per category (tests/security/test_<category>.py), each
case run on every isolation backend by the session's ``daemon`` fixture.

This conftest adds what the categories share (a host marker file holding a random secret, a
secret put into the daemon's environment) and a summary line per category at the end of the
run, also when the battery runs as part of the whole suite.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# A secret in the environment of every daemon this session starts: LocalDaemon passes the
# test process's environment on, and conftests are imported before any test (and so any
# daemon) starts. test_leakage.py checks that it is visible nowhere inside a sandbox.
SECRET_ENV = "FIREBOX_TEST_SECRET_ENV"
os.environ.setdefault(SECRET_ENV, "fbx-test-secret-" + secrets.token_hex(16))

HERE = Path(__file__).resolve().parent


@pytest.fixture
def marker() -> Iterator[tuple[Path, str]]:
    """A host file outside any image, holding a random secret: (path, secret)."""
    secret = "host-secret-" + secrets.token_hex(16)
    path = Path("/root") / f"firebox-marker-{uuid.uuid4().hex}"
    path.write_text(secret)
    try:
        yield path, secret
    finally:
        path.unlink(missing_ok=True)


# -- one summary line per category --------------------------------------------------------

_ORDER = ("failed", "error", "passed", "skipped")


def _category(nodeid: str, rootpath: Path) -> str | None:
    module = (rootpath / nodeid.split("::", 1)[0]).resolve()
    if module.parent != HERE or not module.name.startswith("test_"):
        return None
    return module.stem.removeprefix("test_")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Every report of the session, by test: a test that failed in any phase counts as failed,
    # an error in setup or teardown as an error, else passed (call) or skipped.
    outcome: dict[str, str] = {}
    rootpath = terminalreporter.config.rootpath
    for kind in _ORDER:
        for report in terminalreporter.stats.get(kind, []):
            nodeid = getattr(report, "nodeid", None)
            if not nodeid or _category(nodeid, rootpath) is None:
                continue
            if kind == "passed" and getattr(report, "when", "call") != "call":
                continue
            previous = outcome.get(nodeid)
            if previous is None or _ORDER.index(kind) < _ORDER.index(previous):
                outcome[nodeid] = kind
    if not outcome:
        return
    counts: dict[str, dict[str, int]] = {}
    for nodeid, kind in outcome.items():
        category = _category(nodeid, rootpath)
        assert category is not None
        counts.setdefault(category, dict.fromkeys(_ORDER, 0))[kind] += 1
    parts = []
    for category in sorted(counts):
        c = counts[category]
        text = f"{category} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
        if c["error"]:
            text += f", {c['error']} errors"
        parts.append(text)
    terminalreporter.write_sep("-", "security battery")
    terminalreporter.write_line("security battery: " + " | ".join(parts))
