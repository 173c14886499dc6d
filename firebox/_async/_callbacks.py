"""Calling the user's output and event callbacks."""

from __future__ import annotations

import inspect  # unasync: remove
from typing import TypeVar

from firebox._core.models import OutputHandler

T = TypeVar("T")


async def emit(handler: OutputHandler[T] | None, value: T) -> None:
    """Calls ``handler(value)`` and, in the async SDK, awaits what it returns if awaitable.

    Awaiting (rather than scheduling a task) keeps callbacks in output order and lets a slow
    consumer slow the stream down instead of piling up tasks.
    """
    if handler is None:
        return
    result = handler(value)
    if inspect.isawaitable(result):  # unasync: remove
        await result  # unasync: remove
