"""Ordering a sandbox's output against the test without the clock: the command waits for a
file that the test writes only once it has seen what came before. So a line that streams
"before the end" is one the test received while the command was still waiting for it."""

from __future__ import annotations

import threading

from firebox import Sandbox

GIVE_UP = 60  # seconds a waiting command waits at most, so that a failing test never hangs


def wait_for_file(path: str) -> str:
    """Shell (bash) that waits until ``path`` exists, GIVE_UP seconds at most, then goes on."""
    return f"while [ ! -e {path} ] && [ $SECONDS -lt {GIVE_UP} ]; do sleep 0.05; done"


def wait_for_file_py(path: str) -> str:
    """Python lines that do the same, for a cell."""
    return (
        f"import os as _os, time as _time\n_end = _time.monotonic() + {GIVE_UP}\n"
        f"while not _os.path.exists({path!r}) and _time.monotonic() < _end:\n"
        "    _time.sleep(0.05)\n"
    )


def write_when(seen: threading.Event, sandbox: Sandbox, path: str) -> threading.Thread:
    """A thread that writes the empty file ``path`` into the sandbox once ``seen`` is set (the
    callbacks that set it run in the thread reading the output, which must not block)."""

    def go() -> None:
        if seen.wait(GIVE_UP):
            sandbox.files.write(path, "")

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread
