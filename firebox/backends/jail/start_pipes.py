"""Reading what bubblewrap says on the pipes of a jail's start, with a deadline."""

from __future__ import annotations

import asyncio
import os

from firebox.backends.base import BackendError

START_DEADLINE = 10.0  # seconds from spawning bwrap to each of its answers


async def read_until(fd: int, marker: bytes, waiting_for: str) -> bytes:
    """What a pipe of bwrap's start holds once ``marker`` has come, or once it ended, read by
    the event loop (no thread is left reading a descriptor that is closed when the wait is
    given up); BackendError "bwrap did not <waiting_for>" after START_DEADLINE."""
    loop = asyncio.get_running_loop()
    buf = b""
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        nonlocal buf
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        buf += chunk
        if (not chunk or marker in buf) and not done.done():
            done.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, START_DEADLINE)
    except TimeoutError:
        raise BackendError(f"bwrap did not {waiting_for} within {START_DEADLINE:.0f} s") from None
    finally:
        loop.remove_reader(fd)
    return buf
