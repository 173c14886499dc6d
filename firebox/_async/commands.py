"""``sandbox.commands``: run shell commands in a sandbox, and manage the running ones."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Literal, overload

from firebox._async._http import AsyncApiClient
from firebox._async.command_handle import AsyncCommandHandle, read_events
from firebox._core.models import CommandResult, CommandStart, OutputHandler, ProcessInfo
from firebox._core.requests import command_timeout, run_body, sandbox_path, stdin_body
from firebox._core.responses import parse_list, parse_process_info
from firebox.exceptions import NotFoundException, SandboxException, SandboxNotFoundException


class AsyncCommands:
    """Commands of one sandbox; reached as ``sandbox.commands``."""

    def __init__(self, sandbox_id: str, api: AsyncApiClient) -> None:
        self._sandbox_id = sandbox_id
        self._api = api

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        user: str = "user",
        cwd: str | None = None,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
        stdin: bool | str | bytes | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        tag: str | None = None,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        user: str = "user",
        cwd: str | None = None,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
        stdin: bool | str | bytes | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        tag: str | None = None,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        user: str = "user",
        cwd: str | None = None,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
        stdin: bool | str | bytes | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        tag: str | None = None,
    ) -> CommandResult | AsyncCommandHandle:
        """Runs ``cmd`` with ``/bin/bash -c`` in the sandbox.

        In the foreground (the default) it returns the ``CommandResult`` once the command ends,
        calling ``on_stdout`` / ``on_stderr`` with each chunk of output as it arrives; it raises
        ``CommandExitException`` (which carries the output) if the command exits non-zero and
        ``TimeoutException`` if ``timeout`` killed it. With ``background=True`` it returns an
        ``AsyncCommandHandle`` as soon as the command has started, whose reader calls the
        callbacks as output arrives, whether or not you iterate the handle.

        ``user`` is "user" (uid 1000) or "root". ``timeout`` in seconds kills the command's
        process group (0 or None: no limit). ``stdin``: text or bytes are written to the
        command's stdin, which is then closed; True keeps stdin open for ``send_stdin``; by
        default the command reads end-of-file at once. ``tag`` names the command in
        ``commands.list()``.
        """
        handle = await self._open(
            sandbox_path(self._sandbox_id, "commands"),
            run_body(cmd, envs, user, cwd, timeout, stdin, tag),
            f"running {cmd!r:.80}",
            on_stdout,
            on_stderr,
            timeout,
            request_timeout,
            background,
        )
        if background:
            return handle
        try:
            return await handle.wait()
        finally:
            await handle.disconnect()  # also when a callback raises or the caller is cancelled

    async def connect(
        self,
        pid: int,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
    ) -> AsyncCommandHandle:
        """Listens to a running command (by its pid, from ``run`` or ``commands.list()``) and
        returns a handle, as ``run(background=True)`` does: its output from now on (what it
        wrote before is not repeated), then its end through ``wait()``. Several handles may
        listen to one command at once.

        ``timeout`` in seconds bounds the listening, not the command: past it the handle
        raises ``TimeoutException`` and the command runs on (0 or None: until it ends).
        Raises ``NotFoundException`` if no such command is running.
        """
        return await self._open(
            sandbox_path(self._sandbox_id, "commands", str(pid), "connect"),
            {"timeout": timeout or 0},
            f"connecting to command {pid}",
            on_stdout,
            on_stderr,
            timeout,
            request_timeout,
            True,
        )

    async def _open(
        self,
        path: str,
        body: dict[str, object],
        what: str,
        on_stdout: OutputHandler[str] | None,
        on_stderr: OutputHandler[str] | None,
        timeout: float | None,
        request_timeout: float | None,
        background: bool,
        on_pty: OutputHandler[bytes] | None = None,
    ) -> AsyncCommandHandle:
        """A handle on a command's NDJSON stream, once its start event is in."""
        response = await self._api.open_stream(
            "POST",
            path,
            json=body,
            timeout=command_timeout(timeout, request_timeout or self._api.config.request_timeout),
        )
        events = read_events(response, self._api.config.api_url)
        start = await anext(events, None)
        if not isinstance(start, CommandStart):
            await response.aclose()
            raise SandboxException(
                f"the daemon's answer to {what} did not begin with a start event "
                f"(got {start!r}); the daemon and SDK may be different versions"
            )
        return AsyncCommandHandle(
            start.pid, response, events, self, on_stdout, on_stderr, timeout, background, on_pty
        )

    async def list(self, request_timeout: float | None = None) -> builtins.list[ProcessInfo]:
        """The commands running in the sandbox."""
        response = await self._api.request(
            "GET", sandbox_path(self._sandbox_id, "commands"), timeout=request_timeout
        )
        return [parse_process_info(p) for p in parse_list(response.json(), "processes")]

    async def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        """Kills a command (SIGKILL to its process group); False if there is no such command."""
        try:
            await self._api.request(
                "DELETE",
                sandbox_path(self._sandbox_id, "commands", str(pid)),
                timeout=request_timeout,
            )
        except SandboxNotFoundException:
            raise
        except NotFoundException:
            return False
        return True

    async def send_stdin(
        self, pid: int, data: str | bytes, request_timeout: float | None = None
    ) -> None:
        """Writes to the stdin of a command started with ``stdin=True``; bytes must be UTF-8."""
        await self._send_stdin(pid, stdin_body(data), request_timeout)

    async def close_stdin(self, pid: int, request_timeout: float | None = None) -> None:
        """Closes the stdin of a command started with ``stdin=True``: it reads end-of-file."""
        await self._send_stdin(pid, stdin_body("", eof=True), request_timeout)

    async def _send_stdin(
        self, pid: int, body: dict[str, object], request_timeout: float | None
    ) -> None:
        await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "commands", str(pid), "stdin"),
            json=body,
            timeout=request_timeout,
        )
