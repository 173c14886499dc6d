"""The daemon's life: claim its home, get a backend ready, serve the API, stop.

What can go wrong at start-up (another daemon on this home, the port taken, no backend that
works here, an image that will not build) is found before the API is served, and ends the
process with one line that says what to do (``StartError``), not a traceback. A signal that
comes while it starts is kept (uvicorn's handlers are in place from the first step): the
daemon then stops as soon as it has started, freeing what it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from firebox import images
from firebox.backends.base import BackendError
from firebox.backends.jail.backend import JailBackend
from firebox.backends.owner import Owner
from firebox.backends.select import build_backend, consequence, select
from firebox.images import ImageBuildError
from firebox.images import bases as image_bases
from firebox.server import head_limit, telemetry
from firebox.server.app import create_app
from firebox.server.auth import ensure_admin_key
from firebox.server.boot import spec_for
from firebox.server.cluster.store import open_registry
from firebox.server.config import ServerConfig
from firebox.server.home import HomeLock, HomeTaken
from firebox.server.manager import SandboxManager
from firebox.server.mcp import endpoint as mcp_endpoint
from firebox.server.ports.gate import Links
from firebox.server.registry import Registry
from firebox.server.snapshots import Snapshots
from firebox.server.templates.service import BuildSettings, TemplateService

if TYPE_CHECKING:
    from firebox.server.cluster.membership import Membership

log = logging.getLogger("firebox.server")


class StartError(Exception):
    """The daemon cannot start; the message says why and what to do."""


@dataclass(eq=False)
class Running:
    """What a started daemon holds, to be let go of in reverse by ``stop``."""

    home: HomeLock
    registry: Registry
    manager: SandboxManager
    templates: TemplateService
    snapshots: Snapshots
    membership: Membership | None = None  # in a cluster: this node's lease

    async def stop(self) -> None:
        try:
            if self.membership is not None:
                await self.membership.leave()  # no more placement here while it stops
            await self.templates.close()
            await self.manager.shutdown()
            builds = self.templates.build_backend
            if builds is not None and builds is not self.manager.backend:
                await builds.close()
        finally:
            self.registry.close()
            self.home.release()


def run(config: ServerConfig) -> int:
    """``firebox serve``: serve until SIGINT or SIGTERM; 1 if the daemon cannot start."""
    app = create_app()
    server = head_limit.server(app)

    async def main() -> None:
        with server.capture_signals():
            home = _claim(config)  # first: "another daemon serves this home" says the most
            try:
                listener = _listen(config)
            except StartError:
                home.release()
                raise
            daemon = await start(config, home)
            app.state.registry = daemon.registry
            app.state.manager = daemon.manager
            app.state.backend = daemon.manager.backend
            app.state.templates = daemon.templates
            app.state.snapshots = daemon.snapshots
            app.state.preview_domain = config.preview_domain
            app.state.preview_links = Links()
            telemetry.attach(daemon.manager)
            try:
                if not server.should_exit:  # no signal while it started
                    async with mcp_endpoint.running(app.state.mcp):
                        await server.serve(sockets=[listener])
            finally:
                await daemon.stop()
                listener.close()

    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(main())
    except StartError as e:
        print(f"firebox serve: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def _listen(config: ServerConfig) -> socket.socket:
    """The API's socket, bound before anything starts: a port in use is a clear error."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        sock.close()
        raise StartError(
            f"cannot listen on {config.host}:{config.port} ({e.strerror}); another daemon or "
            "program has it: choose another --port"
        ) from None
    # not inheritable: nothing the daemon starts (a supervisor, a jail's processes) may hold
    # the API's socket, which would also keep the port taken after the daemon has gone
    sock.set_inheritable(False)
    return sock


def _claim(config: ServerConfig) -> HomeLock:
    try:
        return HomeLock.claim(config.home, f"http://{config.host}:{config.port}")
    except HomeTaken as e:
        raise StartError(str(e)) from None


async def start(config: ServerConfig, home: HomeLock) -> Running:
    """With the home claimed: open the registry, have the image and a backend ready, fill
    the pool. What it made is let go of again if it fails (the home too)."""
    registry = None
    try:
        registry = open_registry(config)
        ensure_admin_key(registry, config.admin_key_path, given=bool(config.admin_key_file))
        if config.build_image_on_start and images.image_path(images.DEFAULT_TEMPLATE) is None:
            log.warning("the guest image is missing; building it now (a few minutes, once)")
            await asyncio.to_thread(
                images.build_image,
                images.DEFAULT_TEMPLATE,
                lambda m: log.warning("image: %s", m),
            )
        manager = await _ready_manager(config, registry)
    except BaseException as e:
        if registry is not None:
            registry.close()
        home.release()
        if isinstance(e, BackendError | ImageBuildError | OSError):
            raise StartError(str(e)) from None
        raise
    # what templates are built on is kept: a build on one of them starts from its base
    for record in manager.catalog.all_records():
        # in a cluster, a template another node built may have no base here
        with contextlib.suppress(OSError):
            image_bases.hold_base(Path(record.base_tree))
    try:  # best effort: a cache that cannot be pruned now is pruned by a later start
        removed = await asyncio.to_thread(images.prune_images)
        if removed:
            log.warning("removed images no template uses any more: %s", ", ".join(removed))
    except (OSError, ImageBuildError) as e:
        log.warning("could not prune the image cache: %s", e)
    manager.start_pool([images.DEFAULT_TEMPLATE])
    templates = _templates(config, manager)
    builds = templates.build_backend
    if builds is not None and builds is not manager.backend:
        # a build's jails outlive a daemon that dies mid-build (no --die-with-parent): what
        # the last one left goes now (builds are never adopted)
        freed = await builds.reclaim_stale()
        if freed:
            log.warning("reclaimed %d template build leftovers", freed)
    snapshots = Snapshots(manager)
    await snapshots.sweep()
    running = Running(home, registry, manager, templates, snapshots)
    if config.cluster_db:  # last: placement may choose this node from now on
        from firebox.server.cluster.membership import Membership
        from firebox.server.cluster.postgres import PostgresRegistry

        assert isinstance(registry, PostgresRegistry)
        running.membership = Membership(
            manager, registry, config.advertise_url, config.lease_seconds
        )
        try:
            await running.membership.join()
        except BaseException:
            running.membership = None
            await running.stop()
            raise
    return running


def _templates(config: ServerConfig, manager: SandboxManager) -> TemplateService:
    owner = Owner.of_home(config.home)
    builds = build_backend(manager.backend, owner, config.uid_base)
    why = ""
    if builds is None:
        why = JailBackend(owner, config.uid_base).availability().reason
        log.warning("template builds are off: they run in jails, and %s", why)
    settings = BuildSettings(
        max_builds=config.max_builds,
        allow=list(config.build_allow),
        disk_mb=config.build_disk_mb,
        min_free_disk_mb=config.min_free_disk_mb,
        max_memory_mb=config.max_build_memory_mb,
        build_timeout=config.build_timeout,
        step_timeout=config.build_step_timeout,
        sandbox_limits=manager.default_limits,
    )
    return TemplateService(
        manager.catalog,
        builds,
        manager.backend,
        manager.egress,
        config.home,
        settings,
        in_use=manager.template_users,
        forget=manager.forget_template,
        no_builds=why,
    )


async def _ready_manager(config: ServerConfig, registry: Registry) -> SandboxManager:
    """The backend, got ready (a microVM's template snapshot is made here, once), after what
    a dead daemon of this home left is reclaimed. With ``auto`` a backend that works but
    cannot get ready (say, its snapshot fails) gives way to the next, loudly; a backend asked
    for by name either gets ready or the daemon stops."""
    owner = Owner.of_home(config.home)
    ruled_out: dict[str, str] = {}
    while True:
        backend = select(config.isolation, owner, config.uid_base, ruled_out)
        log.warning(
            "isolation: %s (%s): %s",
            backend.name,
            backend.availability().reason,
            consequence(backend),
        )
        manager = SandboxManager(config, registry, backend)
        await manager.adopt()
        try:
            await backend.prepare(spec_for(images.DEFAULT_TEMPLATE, manager.default_limits))
            return manager
        except BackendError as e:
            log.error("isolation %s could not get ready: %s", backend.name, e)
            await manager.let_go()  # what it adopted holds no timer or channel of ours
            await backend.close()
            if config.isolation != "auto":
                raise
            ruled_out[backend.name] = f"could not get ready: {e}"
