"""An MCP session's own sandbox: made on the first call that names none, ended with the session.

A session is MCP's (an ``Mcp-Session-Id``, of clients of MCP's session era: the SDK ends one on
the client's DELETE or at its idle timeout, and unwinds the connection's exit stack, where the
kill is put), or firebox's own (a ``Firebox-Mcp-Session`` header, which ``firebox mcp`` sends for
the life of its stdio client and ends with a DELETE of ``/mcp`` naming it: MCP's newer era has
no sessions). A client with neither gets a sandbox per call that names none, whose id the answer
gives (to pass on), ending at its own timeout.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from firebox.server.errors import ApiError
from firebox.server.manager import SandboxManager

log = logging.getLogger("firebox.mcp")
HEADER = "firebox-mcp-session"


class Sessions:
    def __init__(self) -> None:
        self._own: dict[tuple[str, str], str] = {}  # (session id, key id) -> sandbox id

    @staticmethod
    def key(ctx: Any) -> str | None:
        headers = ctx.headers or {}
        return headers.get(HEADER) or headers.get("mcp-session-id")

    def sandbox(self, session: str | None, owner: str) -> str | None:
        return None if session is None else self._own.get((session, owner))

    def remember(
        self, ctx: Any, session: str | None, owner: str, sandbox_id: str, mgr: SandboxManager
    ) -> None:
        if session is None:
            return
        self._own[(session, owner)] = sandbox_id
        # The SDK's connection (2.3) holds an exit stack unwound when the session ends; no
        # public hook exists yet, hence the private name, looked up with care.
        conn = getattr(getattr(ctx, "session", None), "_connection", None)
        if conn is None or getattr(conn, "session_id", None) != session:
            return
        if not conn.state.get("firebox_cleanup"):
            conn.state["firebox_cleanup"] = True
            conn.exit_stack.push_async_callback(self._ended, session, mgr)

    def forget(self, sandbox_id: str) -> None:
        self._own = {k: v for k, v in self._own.items() if v != sandbox_id}

    async def end(self, session: str, mgr: SandboxManager) -> None:
        """A firebox session's end (its DELETE): its sandboxes are killed."""
        await self._ended(session, mgr)

    async def _ended(self, session: str, mgr: SandboxManager) -> None:
        for (sid, owner), sandbox_id in list(self._own.items()):
            if sid != session:
                continue
            self._own.pop((sid, owner), None)
            with contextlib.suppress(ApiError):
                await mgr.kill(owner, sandbox_id)
                log.info("MCP session %s ended: killed its sandbox %s", session, sandbox_id)
