"""``sandbox.pty``: terminal sessions in a sandbox (E2B's ``Pty``).

A terminal session is a command (by default an interactive login bash) on a pseudo-terminal:
what is typed with ``send_stdin`` is what a keyboard sends (``b"\\x03"`` is Ctrl-C), and the
screen comes to ``on_data`` as the terminal's bytes. It is a command like any other: listed by
``commands.list()``, killed by pid, bounded by the sandbox's limits, and reached again after a
client drops with ``connect(pid)``.
"""

from __future__ import annotations

from collections.abc import Mapping

from firebox._async._http import AsyncApiClient
from firebox._async.command_handle import AsyncCommandHandle
from firebox._async.commands import AsyncCommands
from firebox._core.models import OutputHandler, PtySize
from firebox._core.requests import keys_body, sandbox_path


class AsyncPty:
    """Terminal sessions of one sandbox; reached as ``sandbox.pty``."""

    def __init__(self, sandbox_id: str, api: AsyncApiClient, commands: AsyncCommands) -> None:
        self._sandbox_id = sandbox_id
        self._api = api
        self._commands = commands

    async def create(
        self,
        size: PtySize,
        on_data: OutputHandler[bytes] | None = None,
        user: str = "user",
        cwd: str | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        cmd: str | None = None,
    ) -> AsyncCommandHandle:
        """Starts a terminal session of ``size`` (an interactive login bash, or ``cmd``) and
        returns its handle: ``pid``, ``send_stdin``, ``kill``, ``wait``; the screen goes to
        ``on_data`` as it comes. ``timeout`` seconds (0 or None: none) bound the session, and
        then it is killed, as E2B's is."""
        body: dict[str, object] = {
            "cols": size.cols,
            "rows": size.rows,
            "user": user,
            "envs": dict(envs or {}),
            "timeout": timeout or 0,
        }
        if cwd is not None:
            body["cwd"] = cwd
        if cmd is not None:
            body["cmd"] = cmd
        return await self._commands._open(
            sandbox_path(self._sandbox_id, "pty"),
            body,
            "starting a terminal session",
            None,
            None,
            timeout,
            request_timeout,
            True,
            on_pty=on_data,
        )

    async def connect(
        self,
        pid: int,
        on_data: OutputHandler[bytes] | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
    ) -> AsyncCommandHandle:
        """Reaches a running terminal session again (after a client dropped): its screen from
        now on. ``timeout`` bounds the listening, not the session."""
        return await self._commands._open(
            sandbox_path(self._sandbox_id, "commands", str(pid), "connect"),
            {"timeout": timeout or 0},
            f"connecting to terminal session {pid}",
            None,
            None,
            timeout,
            request_timeout,
            True,
            on_pty=on_data,
        )

    async def send_stdin(self, pid: int, data: bytes, request_timeout: float | None = None) -> None:
        """Types ``data`` into the terminal (bytes as a keyboard sends them)."""
        await self._commands._send_stdin(pid, keys_body(data), request_timeout)

    async def resize(self, pid: int, size: PtySize, request_timeout: float | None = None) -> None:
        """Resizes the terminal; the program in it is told (SIGWINCH)."""
        await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "commands", str(pid), "resize"),
            json={"cols": size.cols, "rows": size.rows},
            timeout=request_timeout,
        )

    async def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        """Kills the session; False if there is no such session."""
        return await self._commands.kill(pid, request_timeout)
