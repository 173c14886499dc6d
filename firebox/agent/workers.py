"""A pool of request threads that grows on demand and shrinks when idle."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import Any


class Workers:
    """Threads for requests: an idle one takes the next request, else a new one starts.

    Reusing threads saves the ~100 µs a thread start costs on every short request (a stat,
    a signal); there is no upper bound because a request may block for as long as its
    process runs. Threads idle for a minute exit.
    """

    IDLE = 60.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0  # idle threads not yet promised a job

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put((fn, args))
                return
        threading.Thread(target=self._work, args=(fn, args), daemon=True).start()

    def _work(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        while True:
            fn(*args)
            del fn, args  # drop the finished request's references while idle
            with self._lock:
                self._idle += 1
            try:
                fn, args = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody promised us a job: leave
                        self._idle -= 1
                        return
                fn, args = self._jobs.get()  # a job was promised just now: take it
