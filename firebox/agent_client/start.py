"""A built template's start command: run in a fresh sandbox, left running, and waited for
until its ready command succeeds. The same for the build's final check, a create, a pooled
sandbox and a microVM's snapshot, so "ready" means one thing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shlex
from collections.abc import Callable
from typing import Protocol

from firebox import protocol
from firebox.agent_client.client import AgentClient
from firebox.agent_client.errors import AgentError, AgentGone


class StartConfig(Protocol):
    """What starting needs (firebox.settings.StartConfig is one: this layer cannot import it)."""

    @property
    def start_cmd(self) -> str | None: ...
    @property
    def ready_cmd(self) -> str | None: ...
    @property
    def envs(self) -> dict[str, str]: ...
    @property
    def workdir(self) -> str | None: ...
    @property
    def user(self) -> str: ...


READY_EVERY = 0.025  # seconds between ready checks (each a short process)
TAIL_LINES = 30


def as_user(cmd: str, user: str) -> tuple[str, str]:
    """``cmd`` to run as ``user``, and the agent's user to run it as: the agent knows
    ``user`` and ``root``; another name of the image is switched to by root with runuser
    (util-linux), which keeps the environment the agent gives the command."""
    if user in ("root", "user"):
        return cmd, user
    return f"exec runuser -u {shlex.quote(user)} -- /bin/sh -c {shlex.quote(cmd)}", "root"


class NotReady(Exception):
    """The start command ended, or the ready command never succeeded, in time."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


async def start_and_wait(
    agent: AgentClient,
    start: StartConfig,
    deadline: float,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Start ``start.start_cmd`` in the background and return once ``start.ready_cmd``
    succeeds (at once without one); NotReady past ``deadline`` seconds or if the start command
    exits first."""
    if not start.start_cmd:
        return
    cmd, user = as_user(start.start_cmd, start.user)
    cwd = start.workdir or None
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    proc = await agent.start_process(
        protocol.ProcessStart(
            cmd=cmd,
            user=user,
            cwd=cwd,
            envs=start.envs,
            tag="start",
        )
    )

    async def read() -> None:
        async for _fd, data in proc:
            for line in data.decode("utf-8", "replace").splitlines():
                tail.append(line)
                if on_line is not None:
                    on_line(line)

    reader = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    try:
        while True:
            if reader.done():
                code = proc.exit.exit_code if proc.exit else None
                raise NotReady(
                    f"the start command exited (status {code}) before it was ready",
                    "\n".join(tail),
                )
            # one run may take what is left (E2B's wait_for_timeout is a ``sleep``)
            if not start.ready_cmd or await _ready(agent, start, max(end - loop.time(), 1.0)):
                return
            if loop.time() >= end:
                raise NotReady(
                    f"the ready command `{start.ready_cmd}` did not succeed within "
                    f"{deadline:.0f} s of the start command",
                    "\n".join(tail),
                )
            await asyncio.sleep(READY_EVERY)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        with contextlib.suppress(AgentError, AgentGone):
            await proc.detach()  # it runs on: the sandbox's server


async def _ready(agent: AgentClient, start: StartConfig, timeout: float) -> bool:
    assert start.ready_cmd is not None
    cmd, user = as_user(start.ready_cmd, start.user)
    check = await agent.start_process(
        protocol.ProcessStart(
            cmd=cmd,
            user=user,
            cwd=start.workdir or None,
            envs=start.envs,
            timeout=timeout,
        )
    )
    async for _ in check:
        pass
    return check.exit is not None and check.exit.exit_code == 0
