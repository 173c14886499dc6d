"""Commands on a pseudo-terminal (E2B's ``pty``): a shell a person types into.

The command's stdin, stdout and stderr are the terminal's slave side, which becomes its
controlling terminal, so the line discipline does what a terminal does: echo, line editing,
Ctrl-C as SIGINT to the foreground job, SIGWINCH on a resize. The agent holds the master: what
the daemon sends is typed into it, what the terminal shows goes back as ``data`` frames with
``fd`` 3 (``PTY_FD``), output and errors in one stream, as a terminal has them.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import termios

from firebox.agent.errors import Fail

PTY_FD = 3  # the ``fd`` of a terminal's output frames (1 and 2 are a plain command's pipes)
MAX_SIDE = 1000
# The command is already a session leader (children.spawn starts each in a session of its
# own); this makes the terminal on its stdin its controlling terminal, then runs the command.
_CTTY = (
    "import fcntl,os,sys,termios;fcntl.ioctl(0,termios.TIOCSCTTY,0);"
    "os.execvp(sys.argv[1],sys.argv[1:])"
)


def size(value: object) -> tuple[int, int]:
    """(cols, rows) of a ``{"cols": …, "rows": …}`` request field."""
    if not isinstance(value, dict):
        raise Fail("invalid", f"pty must be {{'cols': N, 'rows': N}}, not {value!r}")
    cols, rows = value.get("cols"), value.get("rows")
    for name, side in (("cols", cols), ("rows", rows)):
        if not isinstance(side, int) or isinstance(side, bool) or not 0 < side <= MAX_SIDE:
            raise Fail("invalid", f"pty {name} must be 1..{MAX_SIDE}, not {side!r}")
    assert isinstance(cols, int) and isinstance(rows, int)
    return cols, rows


def open_pair(cols: int, rows: int) -> tuple[int, int]:
    """A new terminal of that size: (master, slave), neither inherited by what we start."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    resize(master, cols, rows)
    return master, slave


def resize(master: int, cols: int, rows: int) -> None:
    """Set the terminal's size; the kernel sends its foreground job SIGWINCH."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def controlling(argv: list[str]) -> list[str]:
    """``argv`` run with the terminal on its stdin as its controlling terminal."""
    return [sys.executable, "-I", "-S", "-c", _CTTY, *argv]
