"""How every sandbox comes to life, pooled or not: its spec, a backend start, the agent's
hello and its settings, each with a deadline."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from firebox import images, protocol
from firebox.agent_client import AgentClient, AgentGone
from firebox.backends.base import Backend, BackendError, RunningSandbox, SandboxSpec
from firebox.server.errors import ApiError
from firebox.settings import Limits, StartConfig

log = logging.getLogger("firebox.boot")

START_DEADLINE = 20.0  # seconds for a backend to hand over a connected agent
# for the agent's first hello once its backend handed it over: a gVisor sandbox restores its
# checkpoint meanwhile, and eight at once on a loaded 2-core host took over 10 s
HELLO_DEADLINE = 30.0


@dataclass(eq=False)
class Booted:
    spec: SandboxSpec
    running: RunningSandbox
    agent: AgentClient

    def alive(self) -> bool:
        return self.running.poll() is None and not self.agent.closed

    async def discard(self) -> None:
        await self.agent.close()
        await self.running.cleanup()


def rootfs_for(template: str) -> Path:
    known = images.known_templates()
    if template not in known:
        raise ApiError(
            "invalid_argument", f"unknown template {template!r}; known: {', '.join(known)}"
        )
    rootfs = images.image_in_use(template)
    if rootfs is None:
        raise ApiError(
            "unavailable",
            f"template {template!r} is not built on this host yet; "
            f"run `firebox image build {template}`",
        )
    return rootfs


def spec_for(
    template: str, limits: Limits, rootfs: Path | None = None, start: StartConfig | None = None
) -> SandboxSpec:
    """A new sandbox of ``template`` (firebox's own, or the tree ``rootfs`` of a built one)
    with ``limits``."""
    sandbox_id = "sbx_" + secrets.token_hex(8)
    return SandboxSpec(
        sandbox_id=sandbox_id,
        hostname=sandbox_id.replace("_", "-"),  # its own, and a valid host name
        template=template,
        rootfs=rootfs or rootfs_for(template),
        start=start,
        limits=limits,
    )


async def boot(backend: Backend, spec: SandboxSpec, background: bool = False) -> Booted:
    """Start ``spec`` and have its agent configured: the one way a sandbox starts. With
    ``background`` (the warm pool's), it runs at background priority from the moment the
    backend hands it over, the agent's start included (``RunningSandbox.set_priority``)."""
    try:
        running = await asyncio.wait_for(backend.start(spec), START_DEADLINE)
    except TimeoutError:
        raise ApiError("timeout", f"the sandbox did not start in {START_DEADLINE:.0f} s") from None
    except BackendError as e:
        raise ApiError("unavailable", str(e)) from None
    agent = AgentClient(running.reader, running.writer)
    try:
        if background:
            await _lower(running, spec)
        await agent.wait_hello(HELLO_DEADLINE)
        # Before any request (the channel keeps order): what the agent enforces itself, the
        # same way on every backend.
        await agent.send_control(
            protocol.Configure(processes=spec.limits.processes, open_files=spec.limits.open_files)
        )
    except BaseException as e:  # cancelled too: a half-started sandbox is never stranded
        await agent.close()
        await running.cleanup()
        if not isinstance(e, AgentGone | TimeoutError | protocol.ProtocolError):
            raise
        said = running.diagnostics()
        raise ApiError(
            "sandbox_error",
            f"the sandbox's agent did not start: {e}" + (f" ({said})" if said else ""),
        ) from None
    return Booted(spec, running, agent)


async def _lower(running: RunningSandbox, spec: SandboxSpec) -> None:
    """Background priority, or the normal one if the host refuses: a pooled sandbox that
    cannot yield still saves a create its boot, as every pooled one did before they could."""
    try:
        await running.set_priority(True)
    except BackendError as e:
        log.warning("pooled sandbox %s runs at the normal priority: %s", spec.sandbox_id, e)
