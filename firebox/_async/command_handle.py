"""A command running in a sandbox, read from its NDJSON output stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from firebox._async._callbacks import emit
from firebox._core.background import AsyncBackground, AsyncQueue
from firebox._core.errors import error_from_transport
from firebox._core.models import (
    CommandEnd,
    CommandEvent,
    CommandOutput,
    CommandOutputTriple,
    CommandPty,
    CommandResult,
    OutputHandler,
)
from firebox._core.responses import command_result, end_failure, parse_command_event
from firebox.exceptions import SandboxException

if TYPE_CHECKING:
    from firebox._async.commands import AsyncCommands


class AsyncCommandHandle:
    """A command started with ``commands.run(..., background=True)`` or reached with
    ``commands.connect(pid)``.

    Its output is read as it comes, by a reader beside your code (a task in the async SDK, a
    thread in the sync one), which calls the ``on_stdout`` / ``on_stderr`` callbacks whether
    or not you iterate; ``stdout`` and ``stderr`` grow meanwhile. ``async for stdout, stderr,
    pty in handle`` yields each chunk, as E2B's handles do (two of the three are None; ``pty``
    is a terminal session's bytes, from ``pty.create``), and raises what the command's stream
    ended in (``TimeoutException`` at its timeout, a ``SandboxException`` if the sandbox went
    away).
    ``await handle.wait()`` reads to the end. ``disconnect()`` stops reading while the command
    runs on; ``commands.connect(pid)`` listens to it again.
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
        background: bool = True,
        on_pty: OutputHandler[bytes] | None = None,
    ) -> None:
        self._pid = pid
        self._on_pty = on_pty  # a terminal session's screen (pty.create)
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
        self._failure: Exception | None = None
        # In the background the reader takes the stream and queues its chunks (None: the end)
        # for whoever iterates; in the foreground (``run`` waiting) the caller reads it itself.
        self._queue: AsyncQueue[CommandOutputTriple | None] | None = None
        self._reader: AsyncBackground | None = None
        if background:
            self._queue = AsyncQueue()
            self._reader = AsyncBackground(self._read)

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

    async def _output(self) -> AsyncIterator[CommandOutputTriple]:
        """The stream's output as it is read, kept and passed to the callbacks; at its end,
        raises what it ended in if that was not the command's own exit."""
        async for event in self._events:
            if isinstance(event, CommandOutput) and event.stream == "stdout":
                self._stdout.append(event.data)
                if not self._disconnected:
                    await emit(self._on_stdout, event.data)
                yield event.data, None, None
            elif isinstance(event, CommandOutput):
                self._stderr.append(event.data)
                if not self._disconnected:
                    await emit(self._on_stderr, event.data)
                yield None, event.data, None
            elif isinstance(event, CommandPty):  # not kept: a terminal is watched, not read
                if not self._disconnected:
                    await emit(self._on_pty, event.data)
                yield None, None, event.data
            elif isinstance(event, CommandEnd):
                self._end = event
        failure = None if self._end is None else end_failure(self._end, self._timeout)
        if failure is not None:
            raise failure

    async def _read(self) -> None:
        """The background reader: the whole stream into the queue, then None; a failure (the
        stream's, or a callback's) is kept for ``wait`` and iteration to raise."""
        assert self._queue is not None
        try:
            async for chunk in self._output():
                self._queue.put_nowait(chunk)
        except Exception as e:
            self._failure = e
        finally:
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[CommandOutputTriple]:
        if self._disconnected:
            return
        if self._queue is None:
            async for chunk in self._output():
                yield chunk
            return
        while True:
            queued = await self._queue.get()
            if queued is None:
                break
            yield queued
        self._queue.put_nowait(None)  # the end stays visible to a later iteration or wait
        if self._failure is not None:
            raise self._failure

    async def wait(
        self,
        on_stdout: OutputHandler[str] | None = None,
        on_stderr: OutputHandler[str] | None = None,
        on_pty: OutputHandler[bytes] | None = None,
    ) -> CommandResult:
        """Reads to the command's end and returns its result; ``on_stdout`` / ``on_stderr``
        (``on_pty`` for a terminal session) are called with the chunks not yet iterated over
        (as E2B's ``wait`` takes them).

        Raises ``CommandExitException`` if it exited non-zero and ``TimeoutException`` if its
        timeout killed it, as ``commands.run`` does.
        """
        async for stdout, stderr, pty in self:
            if stdout is not None:
                await emit(on_stdout, stdout)
            elif stderr is not None:
                await emit(on_stderr, stderr)
            elif pty is not None:
                await emit(on_pty, pty)
        if self._end is None and self._disconnected:
            raise SandboxException(
                f"disconnected from command {self._pid}, so its result cannot be read; "
                "see commands.list() whether it still runs, commands.connect() to it, or kill it"
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
        if self._reader is not None:
            await self._reader.cancel()
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
