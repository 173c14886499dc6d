"""A cell past its timeout, or cancelled: interrupted as a terminal's ^C would, and if it
does not stop within ``GRACE``, its interpreter killed (and the context started afresh).

bash drops the rest of an interrupted line, its report of the cell's end included, so it is
asked to report the cell (``Interpreter.nudge``), at once and again should it swallow that.
"""

from __future__ import annotations

import time

from firebox.agent.cell import Cell

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from firebox.agent.interpreter import Interpreter

# Seconds a cell gets to stop after SIGINT before its interpreter is killed (its state lost):
# IPython formats the interrupt's traceback first, which takes a loaded, emulated guest more
# than a second or two; a cell that ignores SIGINT is only let go of that much later.
GRACE = 5.0
FIRST_NUDGE = 0.02  # seconds after SIGINT until bash is asked to report the interrupted cell
NUDGE = 0.25  # ... and between the next asks, should it have dropped one


def wait(cell: Cell, interp: Interpreter, timeout: float | None) -> None:
    """Until the cell ends: on timeout (or cancel) interrupt it, and after GRACE kill it."""
    end = None if timeout is None else time.monotonic() + timeout
    with cell.cond:
        while not cell.finished and not cell.cancelled:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                cell.timed_out = True
                break
            cell.cond.wait(left)
        if cell.finished:
            return
    interp.interrupt()
    give_up = time.monotonic() + GRACE
    pause = FIRST_NUDGE
    while True:
        with cell.cond:
            left = give_up - time.monotonic()
            if cell.wait_finished(min(pause, left)):
                return
        if left <= pause:
            break
        interp.nudge(cell)  # outside the lock: a write to a busy shell may block a while
        pause = NUDGE
    if cell.timed_out:
        why = f"the cell did not stop within {GRACE:g} s of being interrupted at its timeout"
    else:
        why = f"the cell did not stop within {GRACE:g} s of being interrupted (cancelled)"
    interp.kill(why)
    with cell.cond:
        cell.wait_finished(None)
