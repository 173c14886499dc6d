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
    process runs. Threads idle for a minute exit, down to ``floor``: those few stay, so that
    requests are still served after user code has taken every pid the sandbox may have.
    """

    IDLE = 60.0

    def __init__(self, floor: int = 0) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0  # idle threads not yet promised a job
        self.floor = floor

    def start(self) -> None:
        for _ in range(self.floor):
            with self._lock:
                self._idle += 1
            threading.Thread(target=self._work, args=(None, ()), daemon=True).start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Raises RuntimeError when no thread is idle and none can start (the sandbox is at
        its process limit): the caller answers the request with an error instead."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put((fn, args))
                return
        threading.Thread(target=self._work, args=(fn, args), daemon=True).start()

    def _work(self, fn: Callable[..., None] | None, args: tuple[Any, ...]) -> None:
        if fn is None:  # started idle (the floor): wait for a first job
            job = self._jobs.get()
            assert job is not None
            fn, args = job
        while True:
            fn(*args)
            del fn, args  # drop the finished request's references while idle
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle > self.floor:  # nobody promised us a job: leave
                        self._idle -= 1
                        return
                job = self._jobs.get()  # a job was promised, or we stay as the floor
            assert job is not None
            fn, args = job
