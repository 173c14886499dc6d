"""A lock whose holders take turns in the order they drew their tickets.

A code context runs one cell at a time, and cells queue "as a notebook queues them": in the
order they reached the agent. ``threading.Lock`` is not fair (the thread that runs first
wins), and each request runs on a thread of its own, so a cell that arrived second could run
first. The agent's reading thread draws a cell's ticket as it reads the request
(contexts.arrived); the cell's thread then waits for that ticket's turn.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from collections.abc import Iterator


class Turns:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()  # tickets in turn order; the holder's first
        self._held = False
        self._drawn = 0

    def draw(self, first: bool = False) -> int:
        """A ticket at the end of the queue; ``first``: next after the holder (a restart,
        which is how a user unsticks a hung cell, does not wait behind the queued cells)."""
        with self._cond:
            ticket = self._drawn
            self._drawn += 1
            if first:
                self._queue.insert(1 if self._held else 0, ticket)
            else:
                self._queue.append(ticket)
            return ticket

    def wait(self, ticket: int, timeout: float | None) -> bool:
        """Hold the lock once it is ``ticket``'s turn; False if ``timeout`` passed first (the
        ticket keeps its place: wait again, or ``give_up``)."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: not self._held and bool(self._queue) and self._queue[0] == ticket,
                timeout,
            ):
                return False
            self._held = True
            return True

    def give_up(self, ticket: int) -> None:
        """``ticket`` will not wait any more: its turn passes to the next."""
        with self._cond:
            if ticket in self._queue and not (self._held and self._queue[0] == ticket):
                self._queue.remove(ticket)
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._queue.popleft()
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Wait for a turn of one's own (a ticket drawn now), then hold it."""
        self.wait(self.draw(), None)
        try:
            yield
        finally:
            self.release()
