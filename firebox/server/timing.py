"""``Server-Timing`` on every answer: how long the daemon took, and how much of it was the agent.

A client's round trip is the network and HTTP on both sides, the daemon's own work, and the
wait for the sandbox's agent. The header splits the last two out, so a benchmark (and anyone
with a browser's devtools) can tell the daemon's overhead from the sandbox's time::

    Server-Timing: app;dur=1.234, agent;dur=0.987

``app`` runs from the request's arrival to the answer's first byte: the whole call for a plain
answer, the time to the first line for a streamed one (a command's output). ``agent`` is the
part of it spent waiting for the agent's first reply to each request made to it, which the
agent client records in ``agent_waits`` for the request being served.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from firebox.agent_client import agent_waits


class ServerTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        waits: list[float] = []
        token = agent_waits.set(waits)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                app_ms = (time.perf_counter() - started) * 1000
                value = f"app;dur={app_ms:.3f}, agent;dur={sum(waits) * 1000:.3f}"
                header = (b"server-timing", value.encode())
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            agent_waits.reset(token)
