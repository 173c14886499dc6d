"""Live sandboxes: create, find (per owner), time out, end, reclaim.

The manager owns every running sandbox's backend handle and agent client. A sandbox ends for
one of four reasons — killed by its owner, timed out, its process died, the daemon stopped — and
every path goes through ``_end``, which frees everything exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox import protocol
from firebox.agent_client import AgentClient, AgentError, AgentGone
from firebox.agent_client.start import NotReady, start_and_wait
from firebox.backends.base import Backend, BackendError
from firebox.images.cache import image_root
from firebox.server import liveness, telemetry
from firebox.server.admission import Admission, HostLimits
from firebox.server.boot import Booted, boot, spec_for
from firebox.server.config import ServerConfig
from firebox.server.egress import EgressSettings, Resolver, SandboxEgress, parse_resolve
from firebox.server.egress_policy import Policy, PolicyError, parse_networks, parse_policy
from firebox.server.errors import ApiError
from firebox.server.lifecycle import Lifecycle
from firebox.server.live import OUT_OF_MEMORY, LiveSandbox, adopted, cancel_task, spec_of
from firebox.server.metrics import Sampler
from firebox.server.pool import Source, WarmPool
from firebox.server.registry import Registry
from firebox.server.templates.catalog import Catalog, Resolved
from firebox.settings import (
    Bound,
    Limits,
    Network,
    SandboxSettings,
    SettingsError,
    StartConfig,
    resolve,
)

log = logging.getLogger("firebox.manager")


@dataclass(frozen=True)
class Origin:
    """Where a sandbox made from a snapshot starts: the snapshot (``directory``), and the
    template and shape of the sandbox it was taken from."""

    snapshot_id: str
    directory: Path
    template: Resolved
    limits: Limits


WATCHERS_MAX = 16  # per sandbox: each holds an inotify instance and a task
# A sandbox of a new shape may need its backend to get ready first: the microvm makes a
# snapshot for it (a cold boot, once per shape; ~20 s here under software emulation).
PREPARE_DEADLINE = 300.0
TEMPLATE_READY_DEADLINE = 60.0  # for a built template's start command to become ready
ADOPT_DEADLINE = 10.0  # for an adopted sandbox's agent to answer through its supervisor


class SandboxManager:
    def __init__(self, config: ServerConfig, registry: Registry, backend: Backend) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        # what a template name means (server/templates); a template another node built is
        # pulled from the template registry (server/templates/distribute.py)
        self.catalog = Catalog(
            registry, config.template_registry, config.template_registry_insecure
        )
        self._live: dict[str, LiveSandbox] = {}
        # a sandbox with these comes from the pool
        self.default_limits = resolve(None, config.limits, config.ceilings())
        self.admission = Admission(
            HostLimits(
                config.max_sandboxes,
                config.max_memory_mb,
                config.min_free_memory_mb,
                config.min_free_disk_mb,
            ),
            backend.committed_mb(self.default_limits.memory_mb),
            disks=[image_root(), config.home],
            running=lambda: (
                [s.committed_mb for s in self._live.values() if s.holds_host]
                + [backend.committed_mb(self.default_limits.memory_mb)] * self.pool.waiting()
            ),
        )
        self.egress = EgressSettings(
            Resolver(parse_resolve(config.egress_resolve)), parse_networks(config.egress_permit)
        )
        self.pool = WarmPool(self.default_limits, backend, config.pool_size, self.admission)
        self.metrics = Sampler(self.all_live)  # CPU, memory, disk of each sandbox (metrics.py)
        # a sandbox made from a snapshot ended (server/snapshots.py drops a fork's snapshot)
        self.on_snapshot_user_end: Callable[[str], Awaitable[None]] | None = None
        self.lifecycle = Lifecycle(
            config,
            registry,
            backend,
            self.admission,
            self.egress,
            owned=lambda owner: [s for s in self.all_live() if s.owner == owner],
            end=self._end,
            watch=self._watch,
        )

    # -- lifecycle of the daemon ----------------------------------------------------------

    async def adopt(self) -> None:
        """The sandboxes an earlier daemon of this home started run on, each held by its
        supervisor: take each over (its channel, record, timer, egress), report those that
        died meanwhile, and free what they, and only they, left."""
        kept: set[str] = set()
        for sandbox_id, owner, record in self.registry.live_records():
            if record is None:
                why = "lost: the daemon before this one left no record of it"
            elif record["backend"] != self.backend.name:
                why = f"lost: it ran on {record['backend']}, this daemon runs {self.backend.name}"
            else:
                try:
                    await self._adopt(sandbox_id, owner, record)
                    kept.add(sandbox_id)
                    continue
                except (BackendError, AgentError, AgentGone, TimeoutError, OSError) as e:
                    why = f"crashed while the daemon was down: {e}"
                except protocol.ProtocolError as e:  # an agent of another firebox version
                    why = f"lost: its agent cannot be adopted by this daemon ({e})"
                except (KeyError, ValueError, TypeError) as e:  # a record of another version
                    why = f"lost: its record could not be read ({e!r})"
            self.registry.mark_ended(sandbox_id, why)
            log.warning("sandbox %s %s", sandbox_id, why)
        if kept:
            log.warning("adopted %d sandboxes of the daemon before this one", len(kept))
        freed = await self.backend.reclaim_stale(frozenset(kept))
        if freed:
            log.warning("reclaimed %d sandbox resources left by a previous daemon", freed)

    async def _adopt(self, sandbox_id: str, owner: str, record: dict[str, Any]) -> None:
        running = await self.backend.adopt(spec_of(record["spec"]), record["held"])
        agent = AgentClient(running.reader, running.writer)
        try:
            if record["state"] == "running":
                await agent.adopt(ADOPT_DEADLINE)
            elif running.pause_keeps == "memory":  # frozen: it reads this once thawed
                await agent.send_control(protocol.Adopt())
            settings = SandboxSettings.model_validate(record["settings"])
            net = settings.network
            policy = parse_policy(
                net.allow_out if net else [],
                net.deny_out if net else [],
                settings.allow_internet_access,
            )
        except BaseException:
            await agent.close()
            await running.cleanup()
            raise
        live = adopted(record, sandbox_id, owner, running, agent, policy)
        self._live[live.id] = live
        if live.state == "running":
            await self.lifecycle.reopen_egress(live)
            self._watch(live)
        self.lifecycle.schedule(live)

    def start_pool(self, templates: list[str]) -> None:
        """The daemon's background work: the warm pool, and the metrics sampler."""
        self.pool.start(templates)
        self.metrics.start()

    async def shutdown(self) -> None:
        """Stop serving. The sandboxes run on for the next daemon to adopt, unless this one
        was told to end them (``--on-stop end``)."""
        await self.metrics.stop()
        await self.pool.close()
        if self.config.keep_sandboxes_on_stop:
            await self.let_go()
        else:
            await asyncio.gather(
                *(self._end(s, "daemon stopped") for s in list(self._live.values())),
                return_exceptions=True,
            )
        await self.backend.close()

    async def let_go(self) -> None:
        """Hold none of the sandboxes any more (each left running, its record kept): for a
        daemon that stops, or a backend that adopted them and then could not get ready."""
        for live in list(self._live.values()):
            await self._let_go(live)

    async def _let_go(self, live: LiveSandbox) -> None:
        """Leave a sandbox running for the next daemon: its record kept, our hold on it
        (timer, monitor, watchers, egress proxy, channel) dropped."""
        self._live.pop(live.id, None)
        if live.timer is not None:
            live.timer.cancel()
        if live.monitor is not None:
            await cancel_task(live.monitor)
        for watcher in live.watchers.values():
            await cancel_task(watcher.task)
        if live.egress is not None:
            await live.egress.close()
        self.registry.set_record(live.id, live.record())
        await live.agent.close()

    # -- the API's operations -------------------------------------------------------------

    async def create(
        self, owner: str, settings: SandboxSettings, origin: Origin | None = None
    ) -> LiveSandbox:
        """A running sandbox as ``settings`` ask, their limits within this daemon's bounds and
        what they leave out the daemon's defaults. A sandbox of the default limits comes from
        the pool. With ``origin``, it starts from a snapshot (server/snapshots.py), of the
        shape and template of the sandbox it was taken from."""
        started = time.perf_counter()
        try:
            live = await self._create(owner, settings, origin)
        except ApiError as e:
            telemetry.CREATES.labels(outcome=e.code).inc()
            raise
        telemetry.CREATES.labels(outcome="ok").inc()
        telemetry.CREATE_SECONDS.observe(time.perf_counter() - started)
        return live

    async def _create(
        self, owner: str, settings: SandboxSettings, origin: Origin | None
    ) -> LiveSandbox:
        limits, policy = self._checked(settings)
        if origin is not None:
            template, limits = origin.template, origin.limits
        else:
            template = await self.catalog.ready(owner, settings.template)
        spec = spec_for(template.name, limits, template.rootfs, template.start)
        if origin is not None:
            spec = dataclasses.replace(spec, snapshot=origin.directory)
        booted = None
        if limits == self.default_limits and origin is None:
            key = self._pool_for(template)
            booted = await self.pool.take(key)  # a pooled one is counted already, and ready
        pooled = booted is not None
        if booted is None:
            with self.admission.starting(self.backend.committed_mb(limits.memory_mb)):
                try:
                    if origin is None:  # a snapshot is ready as it is
                        await asyncio.wait_for(self.backend.prepare(spec), PREPARE_DEADLINE)
                except TimeoutError:
                    raise ApiError(
                        "timeout",
                        f"the {self.backend.name} backend could not get ready for this size "
                        f"of sandbox in {PREPARE_DEADLINE:.0f} s; try again, or use the "
                        "default limits",
                    ) from None
                except BackendError as e:
                    raise ApiError("unavailable", str(e)) from None
                booted = await boot(self.backend, spec)
        egress = None
        if policy.opens_anything:
            egress = SandboxEgress(booted.spec.sandbox_id, booted.agent, policy, self.egress)
            try:
                await egress.start()
            except (AgentError, AgentGone) as e:
                await booted.discard()
                raise ApiError(
                    "sandbox_error", f"the sandbox's egress could not start: {e}"
                ) from None
        if not pooled and self._needs_start(template):
            assert template.start is not None
            await self._start_template(booted, template.start, egress)
        now = time.time()
        live = LiveSandbox(
            id=booted.spec.sandbox_id,
            owner=owner,
            settings=settings,
            backend=self.backend.name,
            started_at=now,
            end_at=now + (settings.timeout or self.config.default_timeout),
            spec=booted.spec,
            running=booted.running,
            agent=booted.agent,
            policy=policy,
            egress=egress,
            committed_mb=self.backend.committed_mb(limits.memory_mb),
            template_build=template.build_id,
            template_envs=dict(template.start.envs) if template.start else {},
            snapshot=origin.snapshot_id if origin else None,
        )
        self._live[live.id] = live
        self.registry.add_sandbox(
            live.id, owner, template.name, live.backend, settings.metadata, now, live.end_at
        )
        self.registry.set_record(live.id, live.record())
        self.lifecycle.schedule(live)
        self._watch(live)
        return live

    def _watch(self, live: LiveSandbox) -> None:
        """Watch a running sandbox for a crash until it ends or is paused (liveness.py)."""
        live.monitor = asyncio.create_task(
            liveness.watch(
                live.running, live.agent, live.backend, lambda why: self._crashed(live, why)
            )
        )

    def _needs_start(self, template: Resolved) -> bool:
        """Whether the daemon starts ``template``'s start command (a microVM's snapshot has
        it running already)."""
        return bool(template.start and template.start.start_cmd) and not (
            self.backend.starts_templates
        )

    def _pool_for(self, template: Resolved) -> str:
        """The pool a create of ``template`` takes from (made at a built template's first)."""
        if template.build_id is None:
            return template.name
        start = template.start if self._needs_start(template) else None

        async def ready(booted: Booted) -> None:
            if start is not None:
                await self._start_template(booted, start, None)

        self.pool.ensure(
            template.build_id,
            Source(
                lambda: spec_for(
                    template.name, self.default_limits, template.rootfs, template.start
                ),
                self.config.pool_size if template.pool_size is None else template.pool_size,
                ready,
            ),
        )
        return template.build_id

    async def _start_template(
        self, booted: Booted, start: StartConfig, egress: SandboxEgress | None
    ) -> None:
        """A built template's start command, running and ready before the sandbox is handed
        out. Its environment is the template's (as in a microVM's snapshot), never a create's."""
        try:
            await start_and_wait(booted.agent, start, TEMPLATE_READY_DEADLINE)
        except (NotReady, AgentError, AgentGone) as e:
            if egress is not None:
                await egress.close()
            await booted.discard()
            said = f"; its output ended with:\n{e.output}" if isinstance(e, NotReady) else ""
            raise ApiError(
                "sandbox_error", f"the template's start command failed: {e}{said}"
            ) from None

    def template_users(self, build_id: str) -> int:
        """How many running sandboxes and snapshots were made from the build ``build_id``
        (a snapshot starts sandboxes on its template's tree)."""
        live = sum(1 for s in self._live.values() if s.template_build == build_id)
        # the record is JSON text: read here, not by SQL (SQLite and PostgreSQL read JSON
        # each their own way); snapshots are few
        saved = self.registry.query("SELECT record FROM snapshots", ())
        return live + sum(1 for (r,) in saved if json.loads(r).get("template_build") == build_id)

    async def forget_template(self, build_id: str) -> None:
        """A built template is going: its pool too."""
        await self.pool.forget(build_id)

    def _checked(self, settings: SandboxSettings) -> tuple[Limits, Policy]:
        """The limits and egress policy ``settings`` ask for, checked against this daemon's
        bounds before anything starts (ApiError names what is wrong)."""
        least = {"memory_mb": Bound(self.backend.min_memory_mb, f"a {self.backend.name} sandbox")}
        net = settings.network
        try:
            limits = resolve(settings.limits, self.config.limits, self.config.ceilings(), least)
        except SettingsError as e:
            raise ApiError("invalid_argument", str(e)) from None
        try:
            policy = parse_policy(
                net.allow_out if net else [],
                net.deny_out if net else [],
                settings.allow_internet_access,
            )
        except PolicyError as e:
            raise ApiError("invalid_argument", f"network: {e}") from None
        return limits, policy

    def get(self, owner: str, sandbox_id: str) -> LiveSandbox:
        """``owner``'s sandbox, running or paused (``usable`` for a call into it)."""
        live = self._live.get(sandbox_id)
        # Another key's sandbox is indistinguishable from a missing one: no existence oracle.
        if live is None or live.owner != owner or live.ended:
            reason = self.registry.end_reason(sandbox_id, owner)
            why = (
                f"it ended ({reason})"
                if reason
                else "it ended, timed out, or belongs to another key"
            )
            raise ApiError(
                "sandbox_not_found", f"sandbox {sandbox_id} is not running: {why}; create a new one"
            )
        return live

    async def usable(self, owner: str, sandbox_id: str) -> LiveSandbox:
        """``owner``'s sandbox, running, for a call into it (lifecycle.usable)."""
        return await self.lifecycle.usable(self.get(owner, sandbox_id))

    def live(self, sandbox_id: str) -> LiveSandbox | None:
        """The sandbox of that id, running or paused, whoever owns it: for callers that
        check access themselves (the E2B edge's access tokens)."""
        live = self._live.get(sandbox_id)
        return None if live is None or live.ended else live

    def all_live(self) -> list[LiveSandbox]:
        return [s for s in self._live.values() if not s.ended]

    def list(self, owner: str, metadata: dict[str, str]) -> list[LiveSandbox]:
        return [
            s
            for s in self._live.values()
            if s.owner == owner
            and not s.ended
            and all(s.settings.metadata.get(k) == v for k, v in metadata.items())
        ]

    def set_timeout(self, owner: str, sandbox_id: str, timeout: int) -> None:
        live = self.get(owner, sandbox_id)
        if live.state == "paused":  # what it will have once resumed
            live.left = float(timeout)
            self.registry.set_record(live.id, live.record())
            return
        live.end_at = time.time() + timeout
        self.registry.set_end_at(live.id, live.end_at)
        self.registry.set_record(live.id, live.record())
        self.lifecycle.schedule(live)

    async def pause(self, owner: str, sandbox_id: str) -> LiveSandbox:
        live = self.get(owner, sandbox_id)
        await self.lifecycle.pause(live)
        return live

    async def resume(self, owner: str, sandbox_id: str, timeout: int | None = None) -> bool:
        """Resume ``owner``'s paused sandbox (True), or extend a running one's timeout."""
        return await self.lifecycle.resume(self.get(owner, sandbox_id), timeout)

    async def set_network(self, owner: str, sandbox_id: str, settings: SandboxSettings) -> None:
        """Replace a running sandbox's egress policy with the one ``settings`` ask for (only
        its network fields count). Connections already open keep going; new ones meet the new
        policy. A sandbox that had no egress gets its proxy now."""
        live = self.get(owner, sandbox_id)
        _, policy = self._checked(settings.model_copy(update={"limits": None}))
        async with live.network_lock:  # two updates at once start one proxy, not two
            if live.state == "paused":
                pass  # its proxy opens with the new policy when it resumes
            elif live.egress is None and policy.opens_anything:
                egress = SandboxEgress(live.id, live.agent, policy, self.egress)
                try:
                    await egress.start()
                except (AgentError, AgentGone) as e:
                    raise ApiError(
                        "sandbox_error", f"the sandbox's egress could not start: {e}"
                    ) from None
                if live.ended:  # it ended meanwhile: its end closed no proxy of this one
                    await egress.close()
                    raise ApiError("sandbox_not_found", f"sandbox {live.id} ended meanwhile")
                live.egress = egress
            elif live.egress is not None:
                live.egress.policy = policy
            live.policy = policy
            # the way in is the create's: an egress update never opens or closes the ports
            network = (settings.network or Network()).model_copy(
                update={"allow_public_traffic": live.public_traffic}
            )
            live.settings = live.settings.model_copy(
                update={
                    "network": network,
                    "allow_internet_access": settings.allow_internet_access,
                }
            )
            self.registry.set_record(live.id, live.record())

    async def kill(self, owner: str, sandbox_id: str) -> None:
        await self._end(self.get(owner, sandbox_id), "killed")

    def count(self) -> int:
        return len(self._live)

    # -- internals ------------------------------------------------------------------------

    async def _crashed(self, live: LiveSandbox, why: str) -> None:
        if not live.ended:
            log.warning("sandbox %s %s: %s", live.id, why, live.running.limit_events())
            if live.ended_out_of_memory():
                why = f"{OUT_OF_MEMORY} (past its limit of {live.spec.limits.memory_mb} MB)"
            await self._end(live, why)

    async def _end(self, live: LiveSandbox, reason: str) -> None:
        if live.ended:
            return
        live.ended = True
        live.end_reason = reason
        self._live.pop(live.id, None)
        # recorded first: the owner asking meanwhile is told why (freeing may take seconds)
        self.registry.mark_ended(live.id, reason)
        if live.timer is not None:
            live.timer.cancel()
        # next: every call still waiting on the agent ends now, not after the rest is freed
        await live.agent.close()
        for watcher in live.watchers.values():
            await cancel_task(watcher.task)
        live.watchers.clear()
        if live.egress is not None:
            await live.egress.close()
        try:
            await live.running.cleanup()
        except Exception:  # recorded as ended all the same; what is left shows in the log
            log.exception("sandbox %s: freeing its host resources failed", live.id)
        if live.monitor is not None and live.monitor is not asyncio.current_task():
            await cancel_task(live.monitor)
        log.info("sandbox %s ended: %s", live.id, reason)
        if live.snapshot is not None and self.on_snapshot_user_end is not None:
            await self.on_snapshot_user_end(live.snapshot)
