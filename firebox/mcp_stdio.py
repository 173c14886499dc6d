"""``firebox mcp``: the daemon's MCP edge for clients that speak MCP over stdio (desktop
agents, IDEs).

A relay, not a second server: messages from stdin go to the daemon's ``/mcp`` over streamable
HTTP with the API key (``FIREBOX_URL``, ``FIREBOX_API_KEY``, or the local daemon's admin key,
as the SDK finds them), and its answers come back on stdout. The tools, their sessions and
their checks are all the daemon's (server/mcp), so both transports behave the same; the
relay's session is the stdio process's, and ends (its sandbox with it) when the client closes
it.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server

from firebox._core.config import resolve_config
from firebox.tools import SESSION_HEADER

READ_TIMEOUT = 900.0  # seconds a tool call may take to answer (a long cell)
END_TIMEOUT = 10.0  # for the daemon to end the session's sandboxes


async def _pump(source: Any, sink: Any, what: str) -> None:
    async for message in source:
        if isinstance(message, Exception):  # a line that was not JSON-RPC: said, not fatal
            print(f"firebox mcp: {what}: {message}", file=sys.stderr, flush=True)
            continue
        await sink.send(message)


async def relay() -> None:
    config = resolve_config()
    # this process's session: the sandbox a call without one gets is ended with it
    session = secrets.token_hex(16)
    headers = {"X-API-Key": config.api_key, SESSION_HEADER: session}
    timeout = httpx2.Timeout(30, read=READ_TIMEOUT)
    url = f"{config.api_url}/mcp"
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as (from_daemon, to_daemon),
        stdio_server() as (from_client, to_client),
        anyio.create_task_group() as tasks,
    ):

        async def client_side() -> None:
            await _pump(from_client, to_daemon, "from the client")
            # the client closed stdin: the session is over, its sandbox first (a client
            # waits only a moment before it ends this process)
            with anyio.move_on_after(END_TIMEOUT), contextlib.suppress(httpx2.HTTPError):
                await http.delete(url)
            tasks.cancel_scope.cancel()  # the client closed stdin: the session is over

        tasks.start_soon(client_side)
        await _pump(from_daemon, to_client, "from the daemon")
        tasks.cancel_scope.cancel()


def main() -> int:
    anyio.run(relay)
    return 0
