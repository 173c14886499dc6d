"""``/mcp``: the MCP edge over streamable HTTP, inside the daemon's app.

The SDK's session manager runs for the daemon's life (``running``, entered by daemon.py: the
daemon serves without an ASGI lifespan). The endpoint asks for an API key before anything of
MCP (a 401 in the API's own shape); each tool checks it again to know whose sandboxes it may
reach. The SDK's Host and Origin checks are off: they guard a server with no credentials of its
own against DNS rebinding, and every request here shows a key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import State
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from firebox.server.auth import caller_of
from firebox.server.errors import body
from firebox.server.mcp import tools
from firebox.server.mcp.sessions import HEADER, Sessions

PATH = "/mcp"
SESSION_IDLE = 1800.0  # seconds a session may be silent before the SDK ends it (and its sandbox)


class _KeyRequired:
    def __init__(self, app: StreamableHTTPASGIApp, state: State, sessions: Sessions) -> None:
        self.app = app
        self.state = state
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        registry = getattr(self.state, "registry", None)
        if registry is None or caller_of(registry, headers) is None:
            answer = JSONResponse(
                body("unauthenticated", "MCP needs an API key: send it in the X-API-Key header"),
                status_code=401,
            )
            await answer(scope, receive, send)
            return
        own = headers.get(HEADER)
        if scope["method"] == "DELETE" and own and "mcp-session-id" not in headers:
            # firebox's own session's end (firebox mcp's): its sandboxes go
            await self.sessions.end(own, self.state.manager)
            await Response(status_code=204)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def route(state: State) -> tuple[Route, MCPServer]:
    """The ``/mcp`` route of the daemon's app, and its server (``running`` it)."""
    # the SDK's INFO lines (a line per session made and ended) are not the daemon's news
    logging.getLogger("mcp").setLevel(logging.WARNING)
    sessions = Sessions()
    server = tools.build(sessions)
    server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        session_idle_timeout=SESSION_IDLE,
    )
    endpoint = _KeyRequired(StreamableHTTPASGIApp(server.session_manager), state, sessions)
    return Route(PATH, endpoint=endpoint), server


@asynccontextmanager
async def running(server: MCPServer) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield
