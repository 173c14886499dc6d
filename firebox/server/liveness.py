"""Whether a sandbox is still alive, learned as soon as the host can tell.

A sandbox is reported crashed (the README promises: within 5 s) when its host process exits
(a guest panic ends QEMU; the wait wakes at once), when its agent closes the channel (EOF, at
once), or when its agent has been silent for ``SILENCE_LIMIT``: pings go out every
``PING_EVERY`` whatever became of the last one, and any frame from the agent counts as an
answer, so a hung guest or a stopped agent is found within SILENCE_LIMIT + PING_EVERY.

The verdict of silence is the daemon's own clock against the agent's: a daemon whose event
loop was itself held up (a loaded host) has not read what the agent sent meanwhile, so it
waits a round after such a stall before it calls anyone silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from firebox import protocol
from firebox.agent_client import AgentClient, AgentError, AgentGone
from firebox.backends.base import RunningSandbox

PING_EVERY = 0.5
SILENCE_LIMIT = 3.5  # + PING_EVERY + a loaded host's lag: within the promised 5 s


async def watch(
    running: RunningSandbox,
    agent: AgentClient,
    backend: str,
    crashed: Callable[[str], Awaitable[None]],
) -> None:
    """Until cancelled (the sandbox ended otherwise), or until it has crashed: then
    ``crashed(why)``."""
    exited = asyncio.ensure_future(running.wait())
    ping: asyncio.Task[None] | None = None
    # a pooled sandbox may have been quiet for long: silence counts from now
    watching_since = last_round = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({exited}, timeout=PING_EVERY)
            if done:
                why = f"crashed: its {backend} process exited"
                break
            if agent.closed:
                why = "crashed: its agent closed the channel"
                break
            now = time.monotonic()
            stalled = now - last_round > 3 * PING_EVERY  # our own loop was held up
            last_round = now
            silent = now - max(agent.last_heard, watching_since)
            if silent > SILENCE_LIMIT and not stalled:
                why = f"crashed: its agent did not answer for {silent:.1f} s"
                break
            if ping is None or ping.done():
                ping = asyncio.ensure_future(_ping(agent))
    finally:
        for task in (exited, ping):
            if task is not None and not task.done():
                task.cancel()
    await crashed(why)


async def _ping(agent: AgentClient) -> None:
    # Its answer (or any other frame) is what counts, through agent.last_heard; a busy agent
    # (every request thread taken) answers with an error, which is an answer all the same.
    with contextlib.suppress(AgentError, AgentGone):
        await agent.call(protocol.Ping(), timeout=SILENCE_LIMIT + PING_EVERY)
