"""The daemon's template service: runs builds, keeps their uploads, answers what a template
name means, and removes what nothing uses.

Builds run one at a time by default (``--max-builds``): on a small host a build competes with
the sandboxes it will serve. A build that waits says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox.backends.base import Backend
from firebox.backends.select import forget_image, prune_orphans
from firebox.images import bases as image_bases
from firebox.images import layers, leases
from firebox.server.egress import EgressSettings
from firebox.server.errors import ApiError
from firebox.server.templates import builds
from firebox.server.templates.catalog import Catalog, TemplateRecord, builtin
from firebox.server.templates.distribute import local_rootfs, remove_stale_pushes
from firebox.server.templates.run import BuildRunner
from firebox.settings import Limits

log = logging.getLogger("firebox.templates")
_HASH = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
MAX_UPLOAD = 1 << 30


@dataclass
class BuildSettings:
    """What builds may use; the daemon's flags fill it."""

    max_builds: int = 1
    step_timeout: float = 20 * 60.0
    build_timeout: float = 60 * 60.0
    ready_timeout: float = 120.0
    disk_mb: int = 4096  # what one step may write
    min_free_disk_mb: int = 2048  # what the image directory's disk keeps free (admission's)
    max_memory_mb: int = 8192
    allow: list[str] = field(default_factory=list)  # hosts on top of the package sources
    # what the daemon's sandboxes get by default: the template is started once with these,
    # so that a microVM's snapshot made then is the one creates restore
    sandbox_limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class BuildRequest:
    name: str
    tags: tuple[str, ...]
    template: dict[str, Any]  # the validated wire shape (firebox.recipes)
    cpu_count: float
    memory_mb: int
    skip_cache: bool
    allow_out: tuple[str, ...]
    pool_size: int | None = None


class Holdings:
    """This daemon's leases (images/leases.py) on the trees and layers of its templates that
    are on this node, so that a prune, of this daemon or another on the host, removes none of
    them. (In a cluster, a template built on another node has no layers here, and its tree
    only once pulled: distribute.py, which takes the lease then.)"""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def hold(self, record: TemplateRecord) -> None:
        tree = local_rootfs(record).parent
        if str(tree) not in self._fds and tree.is_dir():
            fd = leases.hold(tree, lambda entry: (entry / "image.json").is_file())
            if fd is not None:
                self._fds[str(tree)] = fd
        for key in record.layers:
            if key in self._fds or layers.find(key) is None:
                continue  # held already, or not on this node
            if (fd := layers.hold(key)) is not None:
                self._fds[key] = fd

    def keep_only(self, records: list[TemplateRecord]) -> None:
        """Let go of what none of ``records`` is made of."""
        wanted = {str(local_rootfs(r).parent) for r in records}
        wanted |= {k for r in records for k in r.layers}
        for name in [n for n in self._fds if n not in wanted]:
            os.close(self._fds.pop(name))


async def _nothing(build_id: str) -> None:
    return None


class TemplateService:
    def __init__(
        self,
        catalog: Catalog,
        build_backend: Backend | None,
        runtime: Backend,
        egress: EgressSettings,
        home: Path,
        settings: BuildSettings | None = None,
        in_use: Callable[[str], int] = lambda build_id: 0,
        forget: Callable[[str], Awaitable[None]] | None = None,
        no_builds: str = "",
    ) -> None:
        self.catalog = catalog
        self.in_use = in_use  # how many live sandboxes run on a build's tree
        self.forget = forget or _nothing  # drop a build's warm pool
        self.build_backend = build_backend  # where steps run (a jail: backends/select.py)
        self.no_builds = no_builds  # why there is none
        self.runtime = runtime  # where the template's sandboxes will run
        self.egress = egress
        self.settings = settings or BuildSettings()
        self.files = home / "template-files"
        self._builds: dict[str, builds.Build] = {}
        self._slots = asyncio.Semaphore(self.settings.max_builds)
        self._holdings = Holdings()
        for record in catalog.all_records():
            self._holdings.hold(record)
        catalog.distribution.hold = self._holdings.hold  # a tree pulled from another node
        self._runner = BuildRunner(self)

    # -- uploads -------------------------------------------------------------------------

    def upload_path(self, owner: str, files_hash: str) -> Path:
        if not _HASH.match(files_hash):
            raise ApiError(
                "invalid_argument",
                f"files hash {files_hash!r} is not valid (letters, digits, '-' and '_')",
            )
        # per key: one key's uploads tell another nothing, and are never used by it
        return self.files / owner / f"{files_hash}.tar"

    async def store_upload(self, owner: str, files_hash: str, chunks: Any) -> None:
        target = self.upload_path(owner, files_hash)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise ApiError(
                            "too_large",
                            f"a COPY's files may take at most {MAX_UPLOAD >> 20} MB; "
                            "copy less, or install it in a RUN step",
                        )
                    await asyncio.to_thread(out.write, chunk)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- names and files -----------------------------------------------------------------

    async def delete(self, owner: str, ref: str) -> None:
        """Drop ``owner``'s template ``ref`` (a tag, or every tag of a name); its tree and
        layers go too once nothing else holds them."""
        records = self.catalog.owned(owner, ref)
        if not records:
            raise ApiError("not_found", f"no template {ref!r} of this key")
        if (n := sum(self.in_use(r.build_id) for r in records)) > 0:
            raise ApiError(
                "conflict",
                f"template {ref!r} is used by {n} running sandbox(es); kill them, then delete it",
            )
        self.catalog.remove(owner, ref)
        left = self.catalog.all_records()
        for record in records:
            if record.build_id not in {r.build_id for r in left}:
                await self.forget(record.build_id)  # its pool
                await self.catalog.distribution.forget(record)  # the registry's copy
        self._holdings.keep_only(left)
        await self._collect_and_forget()

    async def _collect_and_forget(self) -> dict[str, list[str]]:
        removed = await asyncio.to_thread(self._collect)
        for name in removed["trees"]:
            await forget_image(self.runtime, builds.trees_root() / name / "rootfs")
        return removed

    def _collect(self) -> dict[str, list[str]]:
        """Remove the trees and layers that no template of any daemon on this host is made
        of: every daemon leases what its templates use (``Holdings``), so what nobody holds
        is free to go; what was removed."""
        kept = self.catalog.all_records()
        mine = {Path(r.rootfs).parent.name for r in kept}
        root = builds.trees_root()
        trees = [
            entry
            for entry in (root.iterdir() if root.is_dir() else ())
            if not entry.name.startswith(".") and entry.is_dir() and entry.name not in mine
        ]
        removed = leases.prune(trees, builds.remove_entry)
        remove_stale_pushes(root)
        return {"trees": removed, "layers": layers.prune({k for r in kept for k in r.layers})}

    async def prune(self) -> dict[str, Any]:
        """``firebox template prune``: everything no template needs, and base images no
        template is built on."""
        removed: dict[str, Any] = await self._collect_and_forget()
        in_use = {r.base_tree for r in self.catalog.all_records()}
        removed["bases"] = await asyncio.to_thread(image_bases.prune, in_use)
        removed["snapshots"] = await prune_orphans()
        return removed

    # -- builds --------------------------------------------------------------------------

    def start_build(
        self, owner: str, req: BuildRequest, build_id: str | None = None
    ) -> builds.Build:
        """Start ``req``'s build; ``build_id``: one handed out before (E2B's edge asks for a
        build before it sends the template), else a new one."""
        if self.build_backend is None:
            raise ApiError(
                "unavailable",
                f"template builds run in jails, and the jail backend cannot run here: "
                f"{self.no_builds}",
            )
        if builtin(req.name) is not None:
            raise ApiError(
                "invalid_argument",
                f"{req.name!r} is one of firebox's own templates; give yours another name",
            )
        if req.memory_mb > self.settings.max_memory_mb:
            raise ApiError(
                "invalid_argument",
                f"memory_mb {req.memory_mb} is more than builds may use here "
                f"({self.settings.max_memory_mb}, firebox serve --max-build-memory-mb)",
            )
        for step in req.template["steps"]:
            if step["type"] == "COPY" and not self.upload_path(owner, step["filesHash"]).is_file():
                raise ApiError(
                    "invalid_argument",
                    f"COPY {step['args'][0]}: its files ({step['filesHash']}) were not "
                    "uploaded; PUT them to /templates/files/{hash} first",
                )
        if build_id in self._builds:
            raise ApiError("conflict", f"build {build_id} has started already; request another")
        build = builds.new_build(owner, req.name, req.tags, build_id)
        self._builds[build.id] = build
        build.task = asyncio.create_task(self._run(build, req))
        return build

    def get(self, owner: str, build_id: str) -> builds.Build:
        build = self._builds.get(build_id)
        if build is None or build.owner != owner:
            raise builds.no_such_build(build_id)
        return build

    async def cancel(self, owner: str, build_id: str) -> builds.Build:
        build = self.get(owner, build_id)
        if build.task is not None and not build.task.done():
            build.task.cancel()
            with contextlib.suppress(BaseException):
                await build.task
        return build

    async def close(self) -> None:
        for build in self._builds.values():
            if build.task is not None and not build.task.done():
                build.task.cancel()
                with contextlib.suppress(BaseException):
                    await build.task

    async def _run(self, build: builds.Build, req: BuildRequest) -> None:
        if self._slots.locked():
            build.log("waiting for another build to finish (--max-builds)")
        try:
            async with self._slots:
                build.status = "building"
                await asyncio.wait_for(self._runner.run(build, req), self.settings.build_timeout)
        except asyncio.CancelledError:
            build.log("cancelled", "error")
            build.finish("cancelled", builds.failure("the build was cancelled"))
        except TimeoutError:
            msg = (
                f"the build took over {self.settings.build_timeout / 60:.0f} min (--build-timeout)"
            )
            build.log(msg, "error")
            build.finish("error", builds.failure(msg))
        except builds.BuildFailed as e:
            build.log(e.reason["message"], "error", e.reason.get("step"))
            build.finish("error", e.reason)
        except ApiError as e:
            build.log(e.message, "error")
            build.finish("error", builds.failure(e.message))
        except Exception as e:  # noqa: BLE001 (reported to the client, logged in full here)
            log.exception("template build %s failed", build.id)
            build.finish("error", builds.failure(f"the build failed unexpectedly: {e!r}"))
