"""E2B's ``process.Process`` Connect service, onto the agent's process calls.

E2B's SDKs run a command as ``/bin/bash -l -c <cmd>`` (argv here), name the user in a Basic
``Authorization`` header, bound the whole stream with Connect's deadline (the command's
``timeout``: when it passes, the client stops listening and the command runs on, as a client
that goes away from firebox's own API leaves it), and ask for a keepalive event every
``Keepalive-Ping-Interval`` seconds of silence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal as signals
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from firebox import protocol
from firebox.agent_client import ProcessStream
from firebox.server import activity
from firebox.server.agent_calls import ensure_capacity
from firebox.server.commands import classify_exit
from firebox.server.e2b import access
from firebox.server.e2b.envd.errors import as_api_error, connect_errors
from firebox.server.e2b.envd.proto.process import process_pb as pb
from firebox.server.e2b.envd.proto.process.process_connect import Process
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox

USERS = ("user", "root")
KEEPALIVE_HEADER = "keepalive-ping-interval"
SIGNALS = {pb.Signal.SIGKILL: signals.SIGKILL, pb.Signal.SIGTERM: signals.SIGTERM}


def user_of(ctx: RequestContext[Any, Any]) -> str:
    """The user an E2B request runs as: Basic ``<user>:`` in Authorization, else "user"."""
    auth = ctx.request_headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return "user"
    try:
        user = base64.b64decode(auth[6:].strip(), validate=True).decode().split(":", 1)[0]
    except ValueError:
        raise ApiError("invalid_argument", "the Authorization header is not Basic base64") from None
    if user not in USERS:
        raise ApiError(
            "invalid_argument", f"no user {user!r} in a firebox sandbox; use 'user' or 'root'"
        )
    return user


def _keepalive_every(ctx: RequestContext[Any, Any]) -> float | None:
    raw = ctx.request_headers.get(KEEPALIVE_HEADER)
    try:
        return max(1.0, float(raw)) if raw else None
    except ValueError:
        return None


async def pid_of(sbx: LiveSandbox, selector: pb.ProcessSelector | None) -> int:
    """The pid a ProcessSelector names (a pid as is; a tag by looking it up)."""
    if selector is None or selector.selector is None:
        raise ApiError("invalid_argument", "name the process by pid or tag")
    if selector.selector.field == "pid":
        return int(selector.selector.value)
    tag = str(selector.selector.value)
    for p in await sbx.agent.list_processes():
        if p.get("tag") == tag:
            return int(p["pid"])
    raise ApiError("not_found", f"no process with tag {tag!r} is running in the sandbox")


def _end_event(sbx: LiveSandbox, exit: protocol.ProcessExit) -> pb.ProcessEvent:
    error, message = classify_exit(sbx, exit)
    if exit.signal is not None:
        name = signals.Signals(exit.signal).name[3:].lower() if exit.signal < 65 else exit.signal
        status = f"signal: {name}"
    else:
        status = f"exit status {exit.exit_code}"
    end = pb.ProcessEvent.EndEvent(
        exit_code=exit.exit_code,
        exited=exit.signal is None,
        status=status,
        error=message if error else None,
    )
    return _event("end", end)


def _event(kind: str, value: Any) -> pb.ProcessEvent:
    return pb.ProcessEvent(event=Oneof(kind, value))  # type: ignore[arg-type]


async def events(
    sbx: LiveSandbox, proc: ProcessStream, keepalive: float | None
) -> AsyncIterator[pb.ProcessEvent]:
    """A process's output as E2B's events, ending with its end event; a keepalive after each
    ``keepalive`` seconds of silence. If the client goes, the process runs on (detached)."""
    finished = False
    it = proc.__aiter__()
    pending: asyncio.Future[tuple[str, bytes]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield _event("keepalive", pb.ProcessEvent.KeepAlive())
                continue
            try:
                fd, data = pending.result()
            except StopAsyncIteration:
                break
            finally:
                if pending.done():
                    pending = None
            yield _event("data", pb.ProcessEvent.DataEvent(output=Oneof(fd, data)))  # type: ignore[arg-type]
        assert proc.exit is not None
        finished = True
        yield _end_event(sbx, proc.exit)
    finally:
        if pending is not None:
            pending.cancel()
        if not finished:
            with contextlib.suppress(Exception):
                await proc.detach()


class ProcessService(Process):
    async def list(
        self, request: pb.ListRequest, ctx: RequestContext[pb.ListRequest, pb.ListResponse]
    ) -> pb.ListResponse:
        with connect_errors():
            sbx = access.current()
            procs = await sbx.agent.list_processes()
        return pb.ListResponse(processes=[_info(p) for p in procs])

    async def start(
        self, request: pb.StartRequest, ctx: RequestContext[pb.StartRequest, pb.StartResponse]
    ) -> AsyncIterator[pb.StartResponse]:
        with connect_errors():
            sbx = access.current()
            config = request.process or pb.ProcessConfig()
            if not config.cmd:
                raise ApiError("invalid_argument", "the process needs a cmd")
            ensure_capacity(sbx)
            req = protocol.ProcessStart(
                argv=[config.cmd, *config.args],
                envs={**sbx.envs, **dict(config.envs)},
                cwd=config.cwd or None,
                user=user_of(ctx),
                stdin=request.stdin is None or request.stdin,
                tag=request.tag,
                output_limit=sbx.output_limit,
                pty=_size(request.pty),
            )
            proc = await activity.start_process(sbx, req)
        yield pb.StartResponse(event=_event("start", pb.ProcessEvent.StartEvent(pid=proc.pid)))
        async for event in _translated(sbx, events(sbx, proc, _keepalive_every(ctx))):
            yield pb.StartResponse(event=event)

    async def connect(
        self, request: pb.ConnectRequest, ctx: RequestContext[pb.ConnectRequest, pb.ConnectResponse]
    ) -> AsyncIterator[pb.ConnectResponse]:
        with connect_errors():
            sbx = access.current()
            pid = await pid_of(sbx, request.process)
            proc = await sbx.agent.attach_process(pid)
        yield pb.ConnectResponse(event=_event("start", pb.ProcessEvent.StartEvent(pid=pid)))
        async for event in _translated(sbx, events(sbx, proc, _keepalive_every(ctx))):
            yield pb.ConnectResponse(event=event)

    async def update(
        self, request: pb.UpdateRequest, ctx: RequestContext[pb.UpdateRequest, pb.UpdateResponse]
    ) -> pb.UpdateResponse:
        """E2B's resize of a PTY (the only update there is)."""
        with connect_errors():
            sbx = access.current()
            size = _size(request.pty)
            if size is None:
                raise ApiError("invalid_argument", "give the PTY's new size (pty.size)")
            await sbx.agent.resize(await pid_of(sbx, request.process), size["cols"], size["rows"])
        return pb.UpdateResponse()

    async def send_input(
        self,
        request: pb.SendInputRequest,
        ctx: RequestContext[pb.SendInputRequest, pb.SendInputResponse],
    ) -> pb.SendInputResponse:
        with connect_errors():
            sbx = access.current()
            await _write(sbx, await pid_of(sbx, request.process), request.input)
        return pb.SendInputResponse()

    async def stream_input(
        self,
        request: AsyncIterator[pb.StreamInputRequest],
        ctx: RequestContext[pb.StreamInputRequest, pb.StreamInputResponse],
    ) -> pb.StreamInputResponse:
        with connect_errors():
            sbx = access.current()
            pid: int | None = None
            async for msg in request:
                if msg.event is None or msg.event.field == "keepalive":
                    continue
                if msg.event.field == "start":
                    pid = await pid_of(sbx, msg.event.value.process)
                elif pid is None:
                    raise ApiError("invalid_argument", "send a start event before input")
                else:
                    await _write(sbx, pid, msg.event.value.input)
        return pb.StreamInputResponse()

    async def send_signal(
        self,
        request: pb.SendSignalRequest,
        ctx: RequestContext[pb.SendSignalRequest, pb.SendSignalResponse],
    ) -> pb.SendSignalResponse:
        with connect_errors():
            sbx = access.current()
            sig = SIGNALS.get(request.signal)
            if sig is None:
                raise ApiError("invalid_argument", "send SIGNAL_SIGTERM or SIGNAL_SIGKILL")
            await sbx.agent.signal(await pid_of(sbx, request.process), sig)
        return pb.SendSignalResponse()

    async def close_stdin(
        self,
        request: pb.CloseStdinRequest,
        ctx: RequestContext[pb.CloseStdinRequest, pb.CloseStdinResponse],
    ) -> pb.CloseStdinResponse:
        with connect_errors():
            sbx = access.current()
            await sbx.agent.send_stdin(await pid_of(sbx, request.process), eof=True)
        return pb.CloseStdinResponse()


async def _write(sbx: LiveSandbox, pid: int, data: pb.ProcessInput | None) -> None:
    if data is None or data.input is None:
        return
    # "stdin" or "pty": both are what the process reads (a PTY's is typed into its terminal)
    await sbx.agent.send_stdin(pid, bytes(data.input.value))


def _size(pty: pb.PTY | None) -> dict[str, int] | None:
    """A PTY's size as the agent takes it (agent/terminals.py checks the bounds)."""
    if pty is None:
        return None
    size = pty.size or pb.PTY.Size()
    return {"cols": int(size.cols), "rows": int(size.rows)}


async def _translated(
    sbx: LiveSandbox, source: AsyncIterator[pb.ProcessEvent]
) -> AsyncIterator[pb.ProcessEvent]:
    """The agent failing mid-stream ends it with a Connect error, like any other failure."""
    try:
        async for event in source:
            yield event
    except Exception as e:
        if isinstance(e, ConnectError) or not hasattr(e, "code"):
            raise
        err = as_api_error(e)  # type: ignore[arg-type]
        with connect_errors():
            raise err from None


def _info(p: dict[str, Any]) -> pb.ProcessInfo:
    argv = p.get("argv") or ["/bin/bash", "-l", "-c", p.get("cmd") or ""]
    return pb.ProcessInfo(
        pid=int(p["pid"]),
        tag=p.get("tag"),
        config=pb.ProcessConfig(
            cmd=argv[0], args=argv[1:], envs=p.get("envs") or {}, cwd=p.get("cwd")
        ),
    )
