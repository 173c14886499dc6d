"""``firebox sandbox shell ID``: a person's terminal attached to a terminal session in a
sandbox (``sandbox.pty``).

The local terminal goes raw (every key, Ctrl-C included, goes to the sandbox as it is typed),
follows the window's size (SIGWINCH → resize), shows the session's screen as it comes, and is
put back as it was when the session ends, whose exit status becomes this command's.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import Any

from firebox import CommandExitException, FireboxException, PtySize, Sandbox

POLL = 0.1  # seconds between looks at the session's end while no key comes


def _size() -> PtySize:
    cols, rows = shutil.get_terminal_size((80, 24))
    return PtySize(rows=rows, cols=cols)


def shell(sandbox_id: str, user: str = "user", cmd: str | None = None) -> int:
    sbx = Sandbox.connect(sandbox_id)
    out = sys.stdout.buffer

    def show(data: bytes) -> None:
        out.write(data)
        out.flush()

    term = sbx.pty.create(_size(), on_data=show, user=user, timeout=0, cmd=cmd)
    status: dict[str, Any] = {}
    ended = threading.Event()

    def wait() -> None:
        try:
            status["code"] = term.wait().exit_code
        except CommandExitException as e:
            status["code"] = e.exit_code
        except FireboxException as e:
            status["error"] = e
        finally:
            ended.set()

    threading.Thread(target=wait, daemon=True).start()
    resized = threading.Event()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    old_winch = signal.signal(signal.SIGWINCH, lambda *_: resized.set())
    try:
        if saved is not None:
            tty.setraw(fd, termios.TCSANOW)  # keys typed ahead are kept, not flushed
        while not ended.is_set():
            if resized.is_set():
                resized.clear()
                with contextlib.suppress(FireboxException):
                    sbx.pty.resize(term.pid, _size())
            ready, _, _ = select.select([fd], [], [], POLL)
            if not ready:
                continue
            keys = os.read(fd, 4096)
            if not keys:  # our stdin ended (a pipe): the session's input ends with it
                sbx.pty.send_stdin(term.pid, b"\x04")
                ended.wait()
                break
            with contextlib.suppress(FireboxException):  # it may have just ended
                sbx.pty.send_stdin(term.pid, keys)
    finally:
        signal.signal(signal.SIGWINCH, old_winch)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    if "error" in status:
        print(f"\r\nfirebox: the session ended: {status['error']}", file=sys.stderr)
        return 1
    return int(status.get("code", 0))
