"""Sends E2B's in-sandbox traffic to the sandbox app; everything else goes on to firebox's own
API. One listener serves both: E2B's SDKs mark every in-sandbox request with the
``E2b-Sandbox-Id`` header (a signed file URL carries its signature instead), which firebox's
own API never uses."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from firebox.server.e2b import access
from firebox.server.errors import ApiError


class SandboxTraffic:
    """ASGI middleware: requests for a sandbox's insides go to ``sandbox_app``, with the
    access decision (access.py) made first and available to every route as
    ``access.current()``."""

    def __init__(self, app: ASGIApp, sandbox_app: ASGIApp, state: State) -> None:
        self.app = app
        self.sandbox_app = sandbox_app
        self.state = state  # the daemon app's: its manager and registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _for_sandbox(scope):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        decided = access.resolve(
            self.state.manager, self.state.registry, headers, query, scope["path"]
        )
        if decided.sandbox is not None:
            # traffic into a paused sandbox resumes it (auto_resume) or is told to resume it
            try:
                await self.state.manager.lifecycle.usable(decided.sandbox)
            except ApiError as e:
                # E2B answers a paused sandbox's traffic with a 502 (its SDK's is_running
                # then says False); the message says how to resume it
                refused = ApiError("sandbox_error", e.message) if e.code == "conflict" else e
                decided = access.Access(None, refused, port=decided.port)
        with access.entered(decided):
            await self.sandbox_app(scope, receive, send)


def _for_sandbox(scope: Scope) -> bool:
    for name, _ in scope["headers"]:
        if name.lower() == b"e2b-sandbox-id":
            return True
    return scope["path"] == "/files" and b"signature=" in scope.get("query_string", b"")
