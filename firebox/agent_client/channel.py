"""One channel's bookkeeping on the daemon's side: the replies queued for its consumer, the
credit owed both ways, and how it ended."""

from __future__ import annotations

import asyncio
from collections import deque

from firebox import protocol
from firebox.agent_client.errors import AgentGone, AgentTimeout
from firebox.protocol import Message


class _Channel:
    def __init__(self, cid: int) -> None:
        self.id = cid
        self.items: deque[tuple[Message, bytes]] = deque()
        self.wakeup = asyncio.Event()
        self.in_flight = 0  # counted frames (data, watch.event) received, not yet credited
        self.uncounted = 0  # other frames queued
        self.credits = protocol.WINDOW  # data frames we may still send (uploads)
        self.credit_event = asyncio.Event()
        self.finished = False  # the final message arrived
        self.gone: AgentGone | None = None

    async def ready(self) -> None:
        """Wait until a frame is queued; raises the loss of the connection."""
        while not self.items:
            if self.gone is not None:
                raise self.gone
            self.wakeup.clear()
            await self.wakeup.wait()

    async def next(self) -> tuple[Message, bytes]:
        await self.ready()
        item = self.items.popleft()
        if not _counted(item[0]):
            self.uncounted -= 1
        return item

    def stop(self, gone: AgentGone) -> None:
        self.gone = gone
        self.wakeup.set()
        self.credit_event.set()

    async def wait_credit(self, timeout: float, silence: str) -> None:
        """Wait for a credit (or any frame: ``credit_event`` fires for both) up to ``timeout``
        seconds; AgentTimeout(``silence``) past it."""
        self.credit_event.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.credit_event.wait()
        except TimeoutError:
            raise AgentTimeout(silence) from None


def _counted(msg: Message) -> bool:
    return isinstance(
        msg, protocol.Data | protocol.WatchEvent | protocol.CodeResult | protocol.CodeError
    )


def _final(msg: Message) -> bool:
    return isinstance(msg, protocol.Result | protocol.Error)
