"""One build step's sandbox: started over the layers so far, network only through the egress
proxy to the build's allow list, a command run in it with a deadline and its output logged,
and what it changed stored as a layer.

It is a sandbox like any other (server/boot.py starts it, with the backend's isolation and its
cgroup limits), only its root is the writable overlay the backend makes for a build
(``SandboxSpec.build_layers``). Its disk cap bounds what a step may write; the disk is memory
(a tmpfs, as a jail's is), so the sandbox's memory limit is the build's memory plus its disk.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.backends.base import Backend, SandboxSpec
from firebox.images import layers
from firebox.server.boot import Booted, boot
from firebox.server.egress import EgressSettings, SandboxEgress
from firebox.server.egress_policy import Policy
from firebox.settings import Limits

TAIL_LINES = 40
STOP_DEADLINE = 10.0


@dataclass(frozen=True)
class StepFailure(Exception):
    """A step's command failed: what the build reports as its reason."""

    message: str
    exit_code: int | None
    output: str


class BuildSandbox:
    """A started build sandbox (``start``), for one step."""

    def __init__(self, booted: Booted, egress: SandboxEgress | None) -> None:
        self.booted = booted
        self.egress = egress

    @classmethod
    async def start(
        cls,
        backend: Backend,
        base: Path,
        lower: list[Path],
        limits: Limits,
        policy: Policy,
        egress: EgressSettings,
    ) -> BuildSandbox:
        sandbox_id = "bld_" + secrets.token_hex(8)
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template="build",
            rootfs=base,
            hostname=sandbox_id.replace("_", "-"),
            limits=limits,
            build_layers=(base, *lower),
        )
        booted = await boot(backend, spec)
        proxy = None
        if policy.opens_anything:
            proxy = SandboxEgress(sandbox_id, booted.agent, policy, egress)
            try:
                await proxy.start()
            except BaseException:
                await booted.discard()
                raise
        return cls(booted, proxy)

    async def write(self, path: str, source: Path) -> None:
        """Put the host file ``source`` at ``path`` inside, as root."""

        async def chunks() -> AsyncIterator[bytes]:
            with open(source, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, 1 << 20):
                    yield chunk

        await self.booted.agent.write_file(path, "root", chunks(), timeout=60)

    async def run(
        self,
        cmd: str,
        user: str,
        cwd: str,
        envs: dict[str, str],
        timeout: float,
        on_line: Callable[[str, str], None],
    ) -> None:
        """Run ``cmd`` (bash, as the agent runs commands) to its end; each output line to
        ``on_line(stream, line)``. StepFailure if it does not exit 0."""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        req = protocol.ProcessStart(cmd=cmd, user=user, cwd=cwd, envs=envs, timeout=timeout)
        try:
            proc = await self.booted.agent.start_process(req)
            pending = {"stdout": "", "stderr": ""}
            decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in pending}
            async for fd, data in proc:
                text = pending[fd] + decoders[fd].decode(data)
                *lines, pending[fd] = text.split("\n")
                for line in lines:
                    tail.append(line)
                    on_line(fd, line)
            for fd, rest in pending.items():
                if rest:
                    tail.append(rest)
                    on_line(fd, rest)
        except (AgentError, AgentGone) as e:
            said = self.booted.running.diagnostics()
            raise StepFailure(
                f"the build sandbox failed: {e}" + (f" ({said})" if said else ""),
                None,
                "\n".join(tail),
            ) from None
        exit = proc.exit
        assert exit is not None
        if exit.exit_code == 0:
            return
        if exit.timed_out:
            why = f"was killed at the step's deadline of {timeout:.0f} s"
        elif self.booted.running.limit_events().get("oom_kill"):
            why = "was killed: the build reached its memory limit (build with more memory_mb)"
        elif exit.disk_full or self._disk_full():
            why = (
                "ran out of disk: one step may write at most "
                f"{self.booted.spec.limits.disk_mb} MB (--build-disk-mb)"
            )
        else:
            why = f"exited with status {exit.exit_code}"
        raise StepFailure(f"the command {why}", exit.exit_code, "\n".join(tail))

    def _disk_full(self) -> bool:
        usage = self.booted.running.usage()
        if usage is None or usage.disk_used is None or not usage.disk_total:
            return False
        return usage.disk_used >= usage.disk_total - (1 << 20)

    async def output(self, cmd: str, user: str, timeout: float) -> bytes:
        """What ``cmd`` prints on stdout (StepFailure unless it exits 0)."""
        out = {"stdout": bytearray(), "stderr": bytearray()}
        proc = await self.booted.agent.start_process(
            protocol.ProcessStart(cmd=cmd, user=user, timeout=timeout)
        )
        async for fd, data in proc:
            out[fd] += data
        if proc.exit is None or proc.exit.exit_code != 0:
            code = proc.exit.exit_code if proc.exit else None
            said = out["stderr"].decode("utf-8", "replace")
            raise StepFailure(f"`{cmd}` exited with status {code}", code, said)
        return bytes(out["stdout"])

    async def commit(self, key: str, record: dict[str, Any]) -> Path:
        """Stop everything in the sandbox, then store what the step changed as layer ``key``."""
        running = self.booted.running
        upper = running.upper()
        assert upper is not None, "the backend gave a build sandbox no upper directory"
        running.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.wait(), STOP_DEADLINE)
        return await asyncio.to_thread(layers.commit, key, upper, record)

    async def close(self) -> None:
        if self.egress is not None:
            await self.egress.close()
        await self.booted.discard()
