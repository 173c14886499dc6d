"""A sandbox's directory watchers (files.watch_dir, E2B's WatchDir): each an agent watch
pumped into a bounded list of events, read and removed by the API."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.server.errors import ApiError
from firebox.server.live import LiveSandbox, Watcher, cancel_task

WATCHERS_MAX = 16  # per sandbox: each holds an inotify instance and a task


async def add(live: LiveSandbox, path: str, user: str, recursive: bool) -> Watcher:
    if len(live.watchers) >= WATCHERS_MAX:
        raise ApiError(
            "rate_limited",
            f"sandbox {live.id} already has {WATCHERS_MAX} watchers; stop one "
            "(DELETE /sandboxes/{id}/watchers/{watcher_id}) before adding another",
        )
    watch = await live.agent.watch(path, user, recursive)
    watcher = Watcher(id="w_" + secrets.token_hex(6))

    async def pump() -> None:
        try:
            async for event in watch:
                name = protocol.display(str(event.name))
                watcher.events.append({"type": str(event.type), "name": name})
        except (AgentGone, AgentError) as e:  # agent gone, or the watch overflowed (busy)
            watcher.error = str(e)
        finally:
            with contextlib.suppress(Exception):
                await watch.cancel()

    watcher.task = asyncio.create_task(pump())
    live.watchers[watcher.id] = watcher
    return watcher


async def remove(live: LiveSandbox, watcher_id: str) -> None:
    watcher = live.watchers.pop(watcher_id, None)
    if watcher is None:
        raise ApiError("not_found", f"no watcher {watcher_id} in sandbox {live.id}")
    await cancel_task(watcher.task)
