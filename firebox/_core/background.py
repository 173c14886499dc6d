"""What runs beside the caller: a command handle's reader: it reads a background command's
output as it comes and calls its callbacks, whether or not the caller iterates (as E2B's SDK
does), and queues what it read for a caller that iterates later.

The async SDK runs it as a task, the sync one as a thread: scripts/gen_sync.py turns
``AsyncBackground`` and ``AsyncQueue`` into ``Background`` and ``Queue``, the twins below.
"""

from __future__ import annotations

import asyncio
import threading
import time
from asyncio import Queue as AsyncQueue
from collections.abc import Callable, Coroutine
from queue import Queue
from typing import Any

__all__ = ["AsyncBackground", "AsyncQueue", "Background", "Queue", "async_pause", "pause"]


async def async_pause(seconds: float) -> None:
    """A background loop's wait between rounds (``pause`` in the sync SDK)."""
    await asyncio.sleep(seconds)


def pause(seconds: float) -> None:
    time.sleep(seconds)


class AsyncBackground:
    """``work()`` as a task of the running loop. It must catch its own failures: ``join``
    only waits."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._task = asyncio.get_running_loop().create_task(work())

    async def join(self) -> None:
        await asyncio.wait({self._task})

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


class Background:
    """``work()`` on a daemon thread (the user's callbacks run there). It must catch its own
    failures: ``join`` only waits."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=work, name="firebox-command-reader", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def cancel(self) -> None:
        # A thread cannot be stopped from outside: it ends with its stream, which the caller
        # closes, and calls no callback once the handle is disconnected.
        pass
