"""The interface every isolation backend implements.

A backend turns a ``SandboxSpec`` into a running sandbox whose agent speaks ``firebox.protocol``
over a byte stream. The running sandbox is shaped like ``subprocess.Popen`` (poll, wait,
send_signal, kill) plus ``cleanup`` (free everything it holds on the host), as
jupyter_client's kernel launchers are: the daemon never needs to know how isolation is done.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox.settings import Limits, StartConfig


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What the daemon asks of a backend: a sandbox of ``template`` (its image at ``rootfs``)
    with these limits (firebox.settings: the one model of them).

    ``build_layers`` asks for a template build's sandbox instead: its root is writable, the
    overlay of these trees (lowest first) and an upper directory of its own, capped at its
    disk limit, that the builder reads back as the step's layer (``RunningSandbox.upper``).
    Only backends with ``builds`` set take it."""

    sandbox_id: str
    template: str
    rootfs: Path
    limits: Limits = Limits()
    hostname: str = "sandbox"
    build_layers: tuple[Path, ...] = ()
    # a built template's start command; a backend with ``starts_templates`` has it running
    # when ``start`` returns (a microVM's snapshot holds it running), else the daemon starts it
    start: StartConfig | None = None
    # start from this snapshot of a sandbox (``Backend.snapshot`` made it) instead of the
    # template's image: what it holds is what the backend's ``snapshot_keeps`` says
    snapshot: Path | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a backend can run here, and if not, why and what to do."""

    ok: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SandboxUsage:
    """What a sandbox uses now, as the host measures it (bytes; CPU time in nanoseconds).
    None where this host cannot tell: the field is left out, never made up."""

    cpu_ns: int | None  # CPU time used since it started, all its CPUs together
    mem_used: int  # memory it holds, less file cache the kernel would drop first
    mem_cache: int  # page cache charged to it (a jail's files in /tmp and home included)
    mem_total: int | None  # what it may hold before the kernel OOM-kills in it
    disk_used: int | None  # its writable disk (home, /tmp, /root)
    disk_total: int | None


class BackendError(Exception):
    """A backend could not start or manage a sandbox; the message says what to do."""


class RunningSandbox(abc.ABC):
    """One live sandbox on the host, shaped like ``Popen``."""

    #: the agent's channel, connected once ``start`` returns
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """Host pid of the process that holds the sandbox (bwrap, QEMU)."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """Exit status if the sandbox has ended, else None."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait until the sandbox ends; callers put their own deadline around it."""

    @abc.abstractmethod
    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None:
        import signal

        self.send_signal(signal.SIGKILL)

    @abc.abstractmethod
    async def cleanup(self) -> None:
        """Kill whatever is left and free every host resource. Idempotent."""

    def diagnostics(self) -> str:
        """What the sandbox's host side said on the way (e.g. bwrap's errors), for messages."""
        return ""

    @abc.abstractmethod
    def limit_events(self) -> dict[str, int]:
        """Counters of limits hit so far (``oom_kill``, ``pids_max``), to classify failures."""

    #: what a pause keeps and where: "disk" (memory and devices written to disk: survives a
    #: host reboot), "memory" (every process frozen where it is: lost at a reboot), or None
    #: (this sandbox cannot be paused)
    pause_keeps: str | None = None

    async def pause(self) -> None:
        """Stop the sandbox where it is, freeing its CPU (and, with ``pause_keeps`` "disk",
        its memory); on failure it runs on. The daemon has quieted the agent's channel."""
        raise BackendError("sandboxes of this backend cannot be paused")

    async def resume(self) -> None:
        """Run a paused sandbox again. Its agent's channel (``reader``, ``writer``) may be
        new: the daemon reads the agent's hello on it again if so."""
        raise BackendError("sandboxes of this backend cannot be paused")

    def held(self) -> dict[str, Any]:
        """What a later daemon needs to adopt it (``Backend.adopt``), as JSON."""
        return {}

    def paused_bytes(self) -> int:
        """Host disk a paused sandbox holds for its pause (its saved state)."""
        return 0

    def upper(self) -> Path | None:
        """A build sandbox's upper directory (what its root gained, lost and changed, in
        overlayfs's on-disk form), readable on the host until ``cleanup``; None otherwise."""
        return None

    def usage(self) -> SandboxUsage | None:
        """CPU, memory and disk used now, or None where the backend cannot tell. Reads a few
        host files: call it off the event loop."""
        return None

    async def set_priority(self, background: bool) -> None:
        """Run at background priority (a pooled sandbox, while it starts, warms up and waits:
        it yields the host's CPU and disk to the sandboxes in use) or at the normal one (every
        sandbox in use). Sandboxes start at the normal one. A backend that cannot weigh its
        sandboxes leaves them as they are; BackendError if it could not change them."""
        return None

    async def park(self, parked: bool) -> None:
        """Hold still while waiting in the warm pool (``parked``), or go on (a hand-over). A
        backend whose idle sandbox still costs the host CPU (gVisor's sentry wakes on its own,
        ~2.5 % of a core) stops it; the rest leave it as it is. BackendError if it could not."""
        return None


class Backend(abc.ABC):
    name: str
    #: the least memory a sandbox may be given here (a microVM's kernel and warm interpreter
    #: need more than a jail's processes)
    min_memory_mb: int = 64
    #: whether it starts build sandboxes (``SandboxSpec.build_layers``)
    builds: bool = False
    #: whether its sandboxes come with their template's start command running
    starts_templates: bool = False
    #: what a snapshot of a running sandbox keeps: "memory+disk", "disk" (files only: a
    #: sandbox made from it starts its processes afresh), or None (no snapshots)
    snapshot_keeps: str | None = None

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Probe (for real) whether this backend works on this host."""

    @abc.abstractmethod
    async def start(self, spec: SandboxSpec) -> RunningSandbox:
        """Start a sandbox and return once its agent's channel is connected."""

    async def snapshot(self, running: RunningSandbox, spec: SandboxSpec, into: Path) -> None:
        """Save ``running`` (a sandbox of ``spec``) into the new directory ``into``, stopping it
        no longer than the copy needs (its agent's channel quieted by the daemon where the
        memory is kept); sandboxes start from it with ``SandboxSpec.snapshot``."""
        raise BackendError(f"sandboxes of the {self.name} backend cannot be snapshotted")

    async def forget_snapshot(self, into: Path) -> None:
        """A snapshot is deleted: drop what was loaded from it (nobody maps it any more)."""
        return None

    def committed_mb(self, memory_mb: int) -> int:
        """What a sandbox of ``memory_mb`` may take of the host's memory: its cgroup limit."""
        return memory_mb

    async def prepare(self, spec: SandboxSpec) -> None:
        """Get ready to start sandboxes shaped like ``spec`` fast (the microvm makes its
        template snapshot here: a cold boot, once). Called as the daemon starts."""
        return None

    async def forget_image(self, rootfs: Path) -> None:
        """The tree ``rootfs`` is gone (a deleted template's): drop what was made from it
        (a microVM's snapshots of it) that nobody holds."""
        return None

    async def close(self) -> None:
        """The daemon is stopping and every sandbox has been cleaned up: free what is shared."""
        return None

    async def adopt(self, spec: SandboxSpec, held: dict[str, Any]) -> RunningSandbox:
        """A sandbox an earlier daemon of this home started and ``held`` describes (its
        ``RunningSandbox.held``), still running or paused: taken over, its channel connected
        again. BackendError if it is gone (``reclaim_stale`` then frees what it left)."""
        raise BackendError(f"the {self.name} backend cannot adopt sandboxes")

    async def reclaim_stale(self, keep: frozenset[str] = frozenset()) -> int:
        """Free host resources left by a daemon that died, but those of the sandboxes in
        ``keep`` (adopted); returns how many were freed."""
        return 0
