"""A live sandbox as the daemon holds it: its backend handle, its agent client, its timer
and watchers, its egress, its tokens, and its lifecycle state (server/lifecycle.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from firebox.agent_client import AgentClient
from firebox.backends.base import RunningSandbox, SandboxSpec
from firebox.server.egress import SandboxEgress
from firebox.server.egress_policy import Policy
from firebox.server.models import iso
from firebox.settings import SandboxSettings

WATCH_EVENTS_MAX = 10_000  # per watcher, oldest dropped: a busy directory cannot grow memory


@dataclass(eq=False)
class Watcher:
    id: str
    task: asyncio.Task[None] | None = None
    events: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=WATCH_EVENTS_MAX))
    error: str | None = None


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
            "network": {
                "allow_out": [r.text for r in self.policy.allow_out],
                "deny_out": [r.text for r in self.policy.deny_out],
            },
        }
