"""A command running in a sandbox, read from its NDJSON output stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from firebox._async._callbacks import emit
from firebox._core.errors import error_from_transport
from firebox._core.models import (
    CommandEnd,
    CommandEvent,
    CommandOutput,
    CommandResult,
    OutputHandler,
)
from firebox._core.responses import command_result, parse_command_event
from firebox.exceptions import SandboxException

if TYPE_CHECKING:
    from firebox._async.commands import AsyncCommands


class AsyncCommandHandle:
    """A command started with ``commands.run(..., background=True)``.

    Its output is read as you consume it: ``await handle.wait()`` reads to the end, and
    ``async for stdout, stderr in handle`` yields each chunk (one of the two is None). The
    ``on_stdout`` / ``on_stderr`` callbacks given to ``run`` are called during either. Output you
    do not read waits in the daemon, which may eventually pause a very chatty command; call
    ``disconnect()`` to stop reading while it runs on.
    """

    def __init__(
        self,
        pid: int,
        response: httpx.Response,
        events: AsyncIterator[CommandEvent],
        commands: AsyncCommands,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._pid = pid
        self._response = response
        self._events = events
        self._commands = commands
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._timeout = timeout
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._end: CommandEnd | None = None
        self._disconnected = False

    @property
    def pid(self) -> int:
        """The command's process id in the sandbox."""
        return self._pid

    @property
    def stdout(self) -> str:
        """The standard output read so far."""
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        """The standard error read so far."""
        return "".join(self._stderr)

    @property
    def exit_code(self) -> int | None:
        """The exit code, or None while the command's end has not been read."""
        return None if self._end is None else self._end.exit_code

    @property
    def error(self) -> str | None:
        """Why the command did not finish normally ("timeout", an agent failure), if it did not."""
        return None if self._end is None else self._end.error

    async def __aiter__(self) -> AsyncIterator[tuple[str | None, str | None]]:
        if self._disconnected:
            return
        async for event in self._events:
            if isinstance(event, CommandOutput) and event.stream == "stdout":
                self._stdout.append(event.data)
                await emit(self._on_stdout, event.data)
                yield event.data, None
            elif isinstance(event, CommandOutput):
                self._stderr.append(event.data)
                await emit(self._on_stderr, event.data)
                yield None, event.data
            elif isinstance(event, CommandEnd):
                self._end = event

    async def wait(self) -> CommandResult:
        """Reads to the command's end and returns its result.

        Raises ``CommandExitException`` if it exited non-zero and ``TimeoutException`` if its
        timeout killed it, as ``commands.run`` does.
        """
        async for _ in self:
            pass
        if self._end is None and self._disconnected:
            raise SandboxException(
                f"disconnected from command {self._pid}, so its result cannot be read; "
                "see commands.list() whether it still runs, or kill it by pid"
            )
        if self._end is None:
            raise SandboxException(
                f"the output stream of command {self._pid} ended before the command did; "
                "the daemon may have restarted: see commands.list() whether it still runs"
            )
        return command_result(self.stdout, self.stderr, self._end, self._timeout)

    async def kill(self) -> bool:
        """Kills the command (SIGKILL to its process group); False if it was already gone."""
        return await self._commands.kill(self._pid)

    async def send_stdin(self, data: str | bytes) -> None:
        """Writes to the command's stdin; it must have been started with ``stdin=True``."""
        await self._commands.send_stdin(self._pid, data)

    async def close_stdin(self) -> None:
        """Closes the command's stdin, so it reads end-of-file."""
        await self._commands.close_stdin(self._pid)

    async def disconnect(self) -> None:
        """Stops reading the command's output; the command keeps running in the sandbox."""
        self._disconnected = True
        await self._response.aclose()


async def read_events(response: httpx.Response, api_url: str) -> AsyncIterator[CommandEvent]:
    """The events of a command's NDJSON answer; closes the answer when done or abandoned."""
    try:
        async for line in response.aiter_lines():
            event = parse_command_event(line)
            if event is not None:
                yield event
    except httpx.HTTPError as e:
        raise error_from_transport(e, api_url) from e
    finally:
        await response.aclose()
