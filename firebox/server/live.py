"""A live sandbox as the daemon holds it: its backend handle, its agent client, its timer
and watchers, its egress, its tokens, and its lifecycle state (server/lifecycle.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox.agent_client import AgentClient
from firebox.backends.base import RunningSandbox, SandboxSpec
from firebox.server.egress import SandboxEgress
from firebox.server.egress_policy import Policy
from firebox.server.models import iso
from firebox.settings import Limits, SandboxSettings, StartConfig

WATCH_EVENTS_MAX = 10_000  # per watcher, oldest dropped: a busy directory cannot grow memory


ACTIVITY_KEPT = 200  # entries of activity.py's log per sandbox


@dataclass(eq=False)
class Watcher:
    id: str
    task: asyncio.Task[None] | None = None
    events: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=WATCH_EVENTS_MAX))
    error: str | None = None


OUT_OF_MEMORY = "crashed: out of memory"  # how such an end is recorded (manager._crashed)


@dataclass(eq=False)
class LiveSandbox:
    id: str
    owner: str
    settings: SandboxSettings  # as its create asked; ``spec.limits`` are what it has
    backend: str
    started_at: float
    end_at: float
    spec: SandboxSpec
    running: RunningSandbox
    agent: AgentClient
    timer: asyncio.TimerHandle | None = None
    monitor: asyncio.Task[None] | None = None
    watchers: dict[str, Watcher] = field(default_factory=dict)
    ended: bool = False
    end_reason: str = ""  # why it ended, once it has (as the registry records it)
    # limit counters (oom kills, pids.max hits) as last seen, to tell which failure hit one
    limits_seen: dict[str, int] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    egress: SandboxEgress | None = None
    committed_mb: int = 0  # what it holds of the host's memory (admission)
    # opens the sandbox's insides without an API key: E2B's in-sandbox protocol (envd) sends
    # only this (X-Access-Token), so every sandbox has one; it never opens another sandbox
    access_token: str = field(default_factory=lambda: secrets.token_hex(24))
    # opens the sandbox's ports other than the in-sandbox daemon's (E2B's traffic token: its
    # code-interpreter SDK sends only this); never its files or processes
    traffic_token: str = field(default_factory=lambda: secrets.token_hex(24))
    network_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # set_network, one at a time
    # a built template's: its build (server/templates) and the environment its steps set
    template_build: str | None = None
    template_envs: dict[str, str] = field(default_factory=dict)
    # its lifecycle (server/lifecycle.py): "running" or "paused", one change at a time
    state: str = "running"
    paused_at: float | None = None
    left: float = 0.0  # of its timeout, when it was paused
    transition: asyncio.Lock = field(default_factory=asyncio.Lock)
    snapshot: str | None = None  # the snapshot it was made from (server/snapshots.py)
    # what was run in it through the API, the last few hundred (activity.py)
    activity: deque[Any] = field(default_factory=lambda: deque(maxlen=ACTIVITY_KEPT))

    def ended_out_of_memory(self) -> bool:
        """Whether the host's OOM killer struck in it since last looked: a gVisor sandbox
        ends as a whole at its memory limit (its kernel is one host process); reads the
        cgroup's counter, so ask before the sandbox is freed."""
        if self.end_reason.startswith(OUT_OF_MEMORY):
            return True
        try:
            now = self.running.limit_events().get("oom_kill", 0)
        except OSError:
            return False
        return now > self.limits_seen.get("oom_kill", 0)

    def out_of_memory_message(self) -> str:
        mb = self.spec.limits.memory_mb
        return (
            f"sandbox {self.id} went past its memory limit of {mb} MB and ended (a {self.backend} "
            "sandbox cannot lose one process to it: its kernel is one host process); create one "
            f'with more memory, limits={{"memory_mb": {2 * mb}}}, or use less'
        )

    def record(self) -> dict[str, Any]:
        """Everything a restarted daemon needs to adopt it (``adopted``), as JSON."""
        return {
            "settings": self.settings.model_dump(mode="json"),
            "spec": spec_record(self.spec),
            "backend": self.backend,
            "started_at": self.started_at,
            "end_at": self.end_at,
            "state": self.state,
            "paused_at": self.paused_at,
            "left": self.left,
            "access_token": self.access_token,
            "traffic_token": self.traffic_token,
            "template_build": self.template_build,
            "template_envs": self.template_envs,
            "committed_mb": self.committed_mb,
            "snapshot": self.snapshot,
            "held": self.running.held(),
        }

    @property
    def public_traffic(self) -> bool:
        """Whether its ports answer without its traffic token (server/ports/gate.py)."""
        return self.settings.network is not None and self.settings.network.allow_public_traffic

    @property
    def holds_host(self) -> bool:
        """Whether it holds host memory now (a microVM paused to disk does not)."""
        return not (self.state == "paused" and self.running.pause_keeps == "disk")

    @property
    def envs(self) -> dict[str, str]:
        """Set for every command and cell in it (theirs win, then the create's)."""
        return {**self.template_envs, **self.settings.envs}

    @property
    def output_limit(self) -> int:
        """Bytes of output a command or cell may send (the rest is discarded)."""
        return self.spec.limits.output_mb << 20

    def info(self) -> dict[str, Any]:
        return {
            "sandbox_id": self.id,
            "template": self.spec.template,
            "metadata": self.settings.metadata,
            "started_at": iso(self.started_at),
            "end_at": iso(self.end_at),
            "state": self.state,
            "paused_at": iso(self.paused_at) if self.paused_at is not None else None,
            "pause_keeps": self.running.pause_keeps,
            "lifecycle": self.settings.lifecycle.model_dump(),
            "backend": self.backend,
            **self.spec.limits.model_dump(),
            "allow_internet_access": self.policy.allow_internet_access,
            "traffic_access_token": self.traffic_token,
            "network": {
                "allow_out": [r.text for r in self.policy.allow_out],
                "deny_out": [r.text for r in self.policy.deny_out],
                "allow_public_traffic": self.public_traffic,
            },
        }


def spec_record(spec: SandboxSpec) -> dict[str, Any]:
    return {
        "sandbox_id": spec.sandbox_id,
        "template": spec.template,
        "rootfs": str(spec.rootfs),
        "limits": spec.limits.model_dump(),
        "hostname": spec.hostname,
        "start": dataclasses.asdict(spec.start) if spec.start else None,
        "snapshot": str(spec.snapshot) if spec.snapshot else None,
    }


def spec_of(record: dict[str, Any]) -> SandboxSpec:
    start = record.get("start")
    return SandboxSpec(
        sandbox_id=record["sandbox_id"],
        template=record["template"],
        rootfs=Path(record["rootfs"]),
        limits=Limits(**record["limits"]),
        hostname=record["hostname"],
        start=StartConfig(**start) if start else None,
        snapshot=Path(record["snapshot"]) if record.get("snapshot") else None,
    )


def adopted(
    record: dict[str, Any],
    sandbox_id: str,
    owner: str,
    running: RunningSandbox,
    agent: AgentClient,
    policy: Policy,
) -> LiveSandbox:
    """The sandbox ``record`` describes, as a restarted daemon takes it over."""
    return LiveSandbox(
        id=sandbox_id,
        owner=owner,
        settings=SandboxSettings.model_validate(record["settings"]),
        backend=record["backend"],
        started_at=float(record["started_at"]),
        end_at=float(record["end_at"]),
        spec=spec_of(record["spec"]),
        running=running,
        agent=agent,
        policy=policy,
        committed_mb=int(record["committed_mb"]),
        access_token=record["access_token"],
        traffic_token=record["traffic_token"],
        template_build=record.get("template_build"),
        template_envs=dict(record.get("template_envs") or {}),
        state=record["state"],
        paused_at=record.get("paused_at"),
        left=float(record.get("left") or 0.0),
        snapshot=record.get("snapshot"),
    )


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a sandbox's task (a monitor, a watcher's pump) and wait for it, boundedly; the
    current task never waits for itself."""
    if task is None or task.done() or task is asyncio.current_task():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 5)
