"""A terminal session through E2B's own SDK (``sandbox.pty``): E2B's Connect form of it
(``process.Process/Start`` with a pty, ``Update`` for a resize, ``SendInput`` of pty bytes)
onto the same terminal sessions as firebox's own API."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
from e2b.sandbox.commands.command_handle import PtySize

# The E2B edge translates onto the same core on every backend (which the functional suite
# checks on each): its translation is checked once.
pytestmark = pytest.mark.daemon_only
WAIT = 60.0


def test_pty_create_type_resize_and_kill(e2b_sandbox: Any) -> None:
    sbx = e2b_sandbox
    seen = bytearray()
    lock = threading.Lock()

    def on_data(data: bytes) -> None:
        with lock:
            seen.extend(data)

    def wait_for(needle: bytes) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with lock:
                if needle in seen:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} never showed: {bytes(seen)[-400:]!r}")

    term = sbx.pty.create(PtySize(rows=24, cols=80), timeout=0)
    threading.Thread(target=lambda: _drain(term, on_data), daemon=True).start()
    sbx.pty.send_stdin(term.pid, b"echo e2b-$((20+22))\n")
    wait_for(b"e2b-42")
    sbx.pty.resize(term.pid, PtySize(rows=50, cols=150))
    sbx.pty.send_stdin(term.pid, b"stty size\n")
    wait_for(b"50 150")
    assert sbx.pty.kill(term.pid)


def _drain(handle: Any, on_pty: Any) -> None:
    """E2B's sync handle gives a terminal's output to ``wait(on_pty=)`` as it reads it: read
    it to its end (the kill, which E2B's handle raises as an error)."""
    with contextlib.suppress(Exception):
        handle.wait(on_pty=on_pty)
