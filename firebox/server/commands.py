"""Commands: run (streamed as NDJSON), connect to a running one (streamed the same way), list,
stdin, signal, kill."""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import signal as signals
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone, ProcessStream
from firebox.server import activity
from firebox.server.agent_calls import (
    NDJSON,
    NDJSON_TYPE,
    agent_call,
    agent_error,
    ensure_capacity,
    ndjson_line,
)
from firebox.server.deps import Sandbox
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox
from firebox.server.models import ProcessInfo, RunCommand, SendSignal, SendStdin
from firebox.settings import MAX_TIMEOUT

router = APIRouter(tags=["commands"])


def classify_exit(sbx: LiveSandbox, exit: protocol.ProcessExit) -> tuple[str | None, str | None]:
    """Name the limit that ended a command, if any: the caller gets a reason, not just 137.

    The sandbox's limit counters are read only for a failed command (a success needs no
    reason) and compared with what the previous failure saw. With several commands failing at
    once the first to be classified gets the reason: the sandbox did hit its limit then.
    """
    if exit.timed_out:
        return "timeout", "the command was killed at its timeout; pass a larger timeout"
    error, message = _limit_hit(sbx, exit) if exit.exit_code != 0 else (None, None)
    if error is None and exit.output_truncated:
        return "output_truncated", (
            f"the command wrote more than {sbx.output_limit} bytes of output; the rest was "
            "discarded (write big output to a file and read it with files.read)"
        )
    return error, message


def _limit_hit(sbx: LiveSandbox, exit: protocol.ProcessExit) -> tuple[str | None, str | None]:
    before, after = sbx.limits_seen, dict(sbx.running.limit_events())
    if isinstance(exit.kernel_oom_kills, int):  # a microVM's own kernel killed it
        after["guest_oom_kill"] = exit.kernel_oom_kills
    sbx.limits_seen = {**before, **after}
    oom = any(after.get(k, 0) > before.get(k, 0) for k in ("oom_kill", "guest_oom_kill"))
    if exit.signal == signals.SIGKILL and oom:
        return "memory_limit", (
            f"the command was killed: the sandbox reached its memory limit of "
            f"{sbx.spec.limits.memory_mb} MB"
        )
    if exit.disk_full:
        return "disk_full", (
            f"the command failed with the sandbox's disk full (home, /tmp and /root share "
            f"{sbx.spec.limits.disk_mb} MB, or out of inodes); delete files, or create the "
            'sandbox with limits={"disk_mb": …}'
        )
    if after.get("pids_max", 0) > before.get("pids_max", 0):
        return "process_limit", (
            f"the sandbox hit its limit of {sbx.spec.limits.processes} processes; some forks "
            'failed (create the sandbox with limits={"processes": …} for more)'
        )
    return None, None


async def command_stream(
    sbx: LiveSandbox, proc: ProcessStream, listen_for: float | None = None
) -> AsyncIterator[bytes]:
    """The NDJSON lines of a command: start, its output, end. ``listen_for`` seconds past, the
    stream ends (an ``end`` with exit_code -1 and error "timeout") and the command runs on."""
    yield ndjson_line({"type": "start", "pid": proc.pid})
    decoders = {
        "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
        "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    deadline = None if listen_for is None else asyncio.get_running_loop().time() + listen_for
    finished = False
    try:
        output = proc.__aiter__()
        try:
            while True:
                try:
                    if deadline is None:
                        fd, data = await anext(output)
                    else:
                        left = deadline - asyncio.get_running_loop().time()
                        fd, data = await asyncio.wait_for(anext(output), max(left, 0))
                except StopAsyncIteration:
                    break
                if fd == "pty":  # a terminal's bytes, as they are (terminals.py)
                    yield ndjson_line({"type": "pty", "data": base64.b64encode(data).decode()})
                    continue
                text = decoders[fd].decode(data)
                if text:
                    yield ndjson_line({"type": fd, "text": text})
        except TimeoutError:
            finished = True
            await proc.detach()
            yield ndjson_line(
                {
                    "type": "end",
                    "exit_code": -1,
                    "error": "timeout",
                    "message": f"stopped listening to command {proc.pid} after {listen_for:g} s "
                    "(the timeout of connect); it runs on: connect again, or kill it",
                }
            )
            return
        except (AgentError, AgentGone) as e:
            err = agent_error(e, sbx) if not sbx.ended else _ended(sbx, proc.pid)
            finished = True
            yield ndjson_line(
                {"type": "end", "exit_code": -1, "error": err.code, "message": err.message}
            )
            return
        for fd, dec in decoders.items():
            if tail := dec.decode(b"", final=True):
                yield ndjson_line({"type": fd, "text": tail})
        exit = proc.exit
        assert exit is not None
        error, message = classify_exit(sbx, exit)
        finished = True
        yield ndjson_line(
            {"type": "end", "exit_code": exit.exit_code, "error": error, "message": message}
        )
    finally:
        if not finished:
            # The client went away: the command runs on (as a background process would) and can
            # be killed by pid; we only stop reading its output.
            with contextlib.suppress(Exception):
                await proc.detach()


def _ended(sbx: LiveSandbox, pid: int) -> ApiError:
    if sbx.ended_out_of_memory():
        return ApiError("sandbox_error", sbx.out_of_memory_message())
    return ApiError(
        "sandbox_not_found",
        f"sandbox {sbx.id} was killed or reached its end of life while command {pid} ran; "
        "create a new one (and a longer timeout, if it timed out)",
    )


@router.post("/sandboxes/{sandbox_id}/commands", responses=NDJSON)
async def run_command(body: RunCommand, sbx: Sandbox) -> StreamingResponse:
    if (body.cmd is None) == (body.argv is None):
        raise ApiError("invalid_argument", "give exactly one of `cmd` (a shell line) or `argv`")
    ensure_capacity(sbx)
    keep_stdin = body.stdin or body.stdin_data is not None
    req = protocol.ProcessStart(
        argv=body.argv,
        cmd=body.cmd,
        envs={**sbx.envs, **body.envs},
        cwd=body.cwd,
        user=body.user,
        stdin=keep_stdin,
        timeout=body.timeout or None,
        tag=body.tag,
        output_limit=sbx.output_limit,
    )
    try:
        proc = await activity.start_process(sbx, req)
        if body.stdin_data is not None:
            await sbx.agent.send_stdin(proc.pid, body.stdin_data.encode(), eof=not body.stdin)
    except (AgentError, AgentGone) as e:
        raise agent_error(e, sbx) from None
    return StreamingResponse(command_stream(sbx, proc), media_type=NDJSON_TYPE)


class ConnectCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(
        default=60,
        ge=0,
        le=MAX_TIMEOUT,
        description="seconds to listen (the command runs on past it); 0 means until it ends",
    )


@router.post("/sandboxes/{sandbox_id}/commands/{pid}/connect", responses=NDJSON)
async def connect_command(
    pid: int, sbx: Sandbox, body: ConnectCommand | None = None
) -> StreamingResponse:
    """Listen to a running command: its output from now on and its end, as ``run`` streams
    them. Any number of clients may listen to one command at once."""
    ensure_capacity(sbx)
    listen_for = (body or ConnectCommand()).timeout or None
    try:
        proc = await sbx.agent.attach_process(pid)
    except (AgentError, AgentGone) as e:
        raise agent_error(e, sbx) from None
    return StreamingResponse(command_stream(sbx, proc, listen_for), media_type=NDJSON_TYPE)


@router.get("/sandboxes/{sandbox_id}/commands", response_model=list[ProcessInfo])
async def list_commands(sbx: Sandbox) -> list[ProcessInfo]:
    procs = await agent_call(sbx, sbx.agent.list_processes())
    try:  # the agent's replies are checked, never trusted to be well-formed
        return [ProcessInfo(**p) for p in procs]
    except (TypeError, ValueError) as e:
        raise ApiError("sandbox_error", f"the sandbox's agent sent a malformed process: {e}") from e


@router.post("/sandboxes/{sandbox_id}/commands/{pid}/stdin", status_code=204)
async def send_stdin(pid: int, body: SendStdin, sbx: Sandbox) -> Response:
    data = body.data.encode()
    if body.data_base64 is not None:
        if body.data:
            raise ApiError("invalid_argument", "give data or data_base64, not both")
        try:
            data = base64.b64decode(body.data_base64, validate=True)
        except binascii.Error:
            raise ApiError("invalid_argument", "data_base64 is not base64") from None
    await agent_call(sbx, sbx.agent.send_stdin(pid, data, eof=body.eof))
    return Response(status_code=204)


def parse_signal(value: str | int) -> int:
    # isascii: str.isdigit() also accepts digits int() refuses ("²"); short: no 5000-digit int
    if isinstance(value, int) or (value.isascii() and value.isdigit() and len(value) <= 3):
        num = int(value)
        if num in {s.value for s in signals.Signals}:
            return num
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        with contextlib.suppress(KeyError):
            return int(signals.Signals[name])
    raise ApiError("invalid_argument", f"unknown signal {value!r}; use a name like SIGTERM")


@router.post("/sandboxes/{sandbox_id}/commands/{pid}/signal", status_code=204)
async def signal_command(pid: int, body: SendSignal, sbx: Sandbox) -> Response:
    await agent_call(sbx, sbx.agent.signal(pid, parse_signal(body.signal)))
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}/commands/{pid}", status_code=204)
async def kill_command(pid: int, sbx: Sandbox) -> Response:
    await agent_call(sbx, sbx.agent.signal(pid, signals.SIGKILL))
    return Response(status_code=204)
