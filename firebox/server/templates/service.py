"""The daemon's template service: runs builds, keeps their uploads, answers what a template
name means, and removes what nothing uses.

Builds run one at a time by default (``--max-builds``): on a small host a build competes with
the sandboxes it will serve. A build that waits says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox.agent_client import start
from firebox.backends.base import Backend, BackendError, SandboxSpec
from firebox.images import bases as image_bases
from firebox.images import layers, leases
from firebox.server.boot import boot
from firebox.server.egress import EgressSettings
from firebox.server.egress_policy import PolicyError, parse_policy
from firebox.server.errors import ApiError
from firebox.server.templates import bases, builds, steps
from firebox.server.templates.catalog import Catalog, TemplateRecord, builtin
from firebox.server.templates.runner import BuildSandbox, StepFailure
from firebox.server.templates.sources import Sources, host_sources
from firebox.settings import Limits

log = logging.getLogger("firebox.templates")
_HASH = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
MAX_UPLOAD = 1 << 30
# where sandboxes mount their writable disk (backends/jail/rwdisk.py, the microVM's init)
PLACES = ("home/user", "tmp", "root")


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
    """This daemon's leases (images/leases.py) on the trees and layers of its templates, so
    that a prune, of this daemon or another on the host, removes none of them."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def hold(self, record: TemplateRecord) -> None:
        tree = Path(record.rootfs).parent
        if str(tree) not in self._fds:
            fd = leases.hold(tree, lambda entry: (entry / "image.json").is_file())
            if fd is not None:
                self._fds[str(tree)] = fd
        for key in record.layers:
            if key not in self._fds and (fd := layers.hold(key)) is not None:
                self._fds[key] = fd

    def keep_only(self, records: list[TemplateRecord]) -> None:
        """Let go of what none of ``records`` is made of."""
        wanted = {str(Path(r.rootfs).parent) for r in records}
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
        self._sources: Sources | None = None
        self._holdings = Holdings()
        for record in catalog.all_records():
            self._holdings.hold(record)

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
        self._holdings.keep_only(left)
        await self._collect_and_forget()

    async def _collect_and_forget(self) -> dict[str, list[str]]:
        removed = await asyncio.to_thread(self._collect)
        for name in removed["trees"]:
            await self.runtime.forget_image(builds.trees_root() / name / "rootfs")
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
        return {"trees": removed, "layers": layers.prune({k for r in kept for k in r.layers})}

    async def prune(self) -> dict[str, Any]:
        """``firebox template prune``: everything no template needs, and base images no
        template is built on."""
        removed: dict[str, Any] = await self._collect_and_forget()
        in_use = {r.base_tree for r in self.catalog.all_records()}
        removed["bases"] = await asyncio.to_thread(image_bases.prune, in_use)
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
                await asyncio.wait_for(self._steps(build, req), self.settings.build_timeout)
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

    def _policy_and_envs(self, req: BuildRequest) -> tuple[Any, dict[str, str]]:
        if self._sources is None:
            self._sources = host_sources()
        allowed = [*self._sources.hosts, *self.settings.allow, *req.allow_out]
        try:
            return parse_policy(allowed), dict(self._sources.envs)
        except PolicyError as e:
            raise ApiError("invalid_argument", f"allow_out: {e}") from None

    async def _steps(self, build: builds.Build, req: BuildRequest) -> None:
        spec = req.template
        base = await bases.resolve(spec, build.owner, self.catalog, build.log, self.egress)
        image_bases.hold_base(base.tree)  # kept for as long as this daemon runs
        build.log(f"base: {base.label}")
        policy, source_envs = self._policy_and_envs(req)
        limits = Limits(
            cpu_count=req.cpu_count,
            memory_mb=req.memory_mb + self.settings.disk_mb,
            disk_mb=self.settings.disk_mb,
        )
        held = [fd for key in base.layers if (fd := layers.hold(key)) is not None]
        diffs = [d for key in base.layers if (d := layers.find(key)) is not None]
        keys = list(base.layers)
        parent, state = base.key, base.state
        forced = req.skip_cache or bool(spec.get("force"))
        recorded = False
        try:
            for i, step in enumerate(spec["steps"], start=1):
                what = steps.describe(step)
                if not steps.makes_layer(step):
                    state = state.after(step)
                    build.log(f"step {i}: {what}", step=i)
                    continue
                forced = forced or bool(step.get("force"))
                self._check_disk(i)
                key = steps.layer_key(build.owner, parent, step, state, forced)
                diff = layers.find(key)
                if diff is not None:
                    build.log(f"step {i}: CACHED {what}", step=i)
                else:
                    build.log(f"step {i}: {what}", step=i)
                    started = time.monotonic()
                    diff = await self._make_layer(
                        build, i, step, state, key, base.tree, diffs, limits, policy, source_envs
                    )
                    build.log(f"step {i}: done in {time.monotonic() - started:.1f} s", step=i)
                if (fd := layers.hold(key)) is not None:
                    held.append(fd)
                diffs.append(diff)
                keys.append(key)
                parent, state = key, state.after(step)
            envs = await self._expand_envs(build, state, base.tree, diffs, limits, source_envs)
            final_start = steps.final_start(spec, base.start, state, envs)
            build.log("writing the template's tree")
            rootfs, size = await asyncio.to_thread(
                builds.write_tree,
                base.tree,
                diffs,
                builds.tree_key(base.key, keys),
                {"base": base.label},
                build.log,
            )
            self._check_places(rootfs)
            record = builds.record_for(
                build, rootfs, base.label, base.tree, keys, final_start, len(spec["steps"]), size
            )
            record = dataclasses.replace(record, pool_size=req.pool_size)
            self._holdings.hold(record)  # from now on: no prune removes its tree
            await self._check_start(build, record)
            self.catalog.add(record)
            recorded = True
            build.log(f"template {build.name}:{','.join(build.tags)} is ready ({size >> 20} MB)")
            build.finish("ready")
        finally:
            for fd in held:
                os.close(fd)
            if not recorded:  # a tree of a build that failed at its start: prunable
                self._holdings.keep_only(self.catalog.all_records())

    def _check_places(self, rootfs: Path) -> None:
        """Where every sandbox mounts its own writable disk must be a directory of the tree:
        a link there would name a path the backends resolve outside the image."""
        for place in PLACES:
            try:
                real = stat.S_ISDIR(os.lstat(rootfs / place).st_mode)
            except FileNotFoundError:
                real = False
            if not real:
                raise builds.BuildFailed(
                    builds.failure(
                        f"the template's /{place} is not a directory (a link, or removed); "
                        "sandboxes mount their own writable disk there: keep it a directory "
                        "and put links inside it instead",
                        None,
                    )
                )

    def _check_disk(self, step: int | None) -> None:
        """Refuse a step (or the tree) that could take the image directory's disk past the
        daemon's free-disk floor: a step may write up to ``disk_mb``."""
        free = shutil.disk_usage(layers.root().parent).free >> 20
        need = self.settings.disk_mb + self.settings.min_free_disk_mb
        if free < need:
            raise builds.BuildFailed(
                builds.failure(
                    f"the host has {free} MB free for images; a build step may write up to "
                    f"{self.settings.disk_mb} MB and the daemon keeps "
                    f"{self.settings.min_free_disk_mb} MB free (--min-free-disk-mb): remove "
                    "unused templates (firebox template delete, then firebox template prune)",
                    step,
                )
            )

    async def _make_layer(
        self,
        build: builds.Build,
        index: int,
        step: dict[str, Any],
        state: steps.State,
        key: str,
        base_tree: Path,
        diffs: list[Path],
        limits: Limits,
        policy: Any,
        source_envs: dict[str, str],
    ) -> Path:
        cmd, user = steps.command(step, state)
        assert self.build_backend is not None
        sandbox = await BuildSandbox.start(
            self.build_backend, base_tree, diffs, limits, policy, self.egress
        )
        try:
            if step["type"] == "COPY":
                await self._place_files(build.owner, step, sandbox)
            envs = dict(source_envs)  # the ENV so far is in the command (State.prelude)

            def line(stream: str, text: str) -> None:
                build.log(text, "error" if stream == "stderr" else "info", index)

            cwd = state.workdir if step["type"] == "RUN" else "/"
            try:
                await sandbox.run(cmd, user, cwd, envs, self.settings.step_timeout, line)
            except StepFailure as e:
                raise builds.BuildFailed(
                    builds.failure(
                        f"step {index} ({steps.describe(step)}) failed: {e.message}",
                        index,
                        command=step["args"][0] if step["type"] == "RUN" else steps.describe(step),
                        exit_code=e.exit_code,
                        output=e.output,
                    )
                ) from None
            return await sandbox.commit(key, {"step": steps.describe(step), "build": build.id})
        finally:
            await sandbox.close()

    async def _expand_envs(
        self,
        build: builds.Build,
        state: steps.State,
        base_tree: Path,
        diffs: list[Path],
        limits: Limits,
        source_envs: dict[str, str],
    ) -> dict[str, str]:
        """The ENV's values as the template's shell expands them (``$PATH`` and the like),
        in a build sandbox over the final layers; nothing of it is kept."""
        if not state.exports:
            return {}
        assert self.build_backend is not None
        sandbox = await BuildSandbox.start(
            self.build_backend, base_tree, diffs, limits, parse_policy(), self.egress
        )
        try:
            out = await sandbox.output(*steps.print_envs(state), 60)
        except StepFailure as e:
            raise builds.BuildFailed(
                builds.failure(
                    f"the ENV values could not be expanded: {e.message}", None, output=e.output
                )
            ) from None
        finally:
            await sandbox.close()
        envs = steps.parse_envs(state, out)
        build.log("environment: " + ", ".join(f"{k}={v}" for k, v in envs.items()))
        return envs

    async def _place_files(self, owner: str, step: dict[str, Any], sandbox: BuildSandbox) -> None:
        """The step's upload, into the sandbox, where its script unpacks and places it."""
        await sandbox.write(steps.COPY_ARCHIVE, self.upload_path(owner, step["filesHash"]))

    async def _check_start(self, build: builds.Build, record: TemplateRecord) -> None:
        """Start the template once, as a create will, and wait for its ready command: a
        microVM's snapshot of it is made now (its start command running), not at the first
        create."""
        command = record.start.start_cmd
        build.log(f"starting the template{f': {command}' if command else ''}")
        spec = SandboxSpec(
            sandbox_id="bld_" + os.urandom(8).hex(),
            template=f"{record.name}:{record.tags[0]}",
            rootfs=Path(record.rootfs),
            limits=self.settings.sandbox_limits,
            start=record.start,
        )
        try:
            await self.runtime.prepare(spec)  # a microVM's snapshot, its server running
            booted = await boot(self.runtime, spec)
        except BackendError as e:
            raise builds.BuildFailed(
                builds.failure(
                    f"the template did not start: {e}", None, command=record.start.start_cmd
                )
            ) from None
        try:
            if command and not self.runtime.starts_templates:
                await start.start_and_wait(
                    booted.agent,
                    record.start,
                    self.settings.ready_timeout,
                    lambda text: build.log(text, step=None),
                )
        except start.NotReady as e:
            raise builds.BuildFailed(
                builds.failure(
                    f"the template's start command did not become ready: {e}",
                    None,
                    command=record.start.start_cmd,
                    exit_code=None,
                    output=e.output,
                )
            ) from None
        finally:
            await booted.discard()
        build.log("the start command is ready" if command else "the template starts")
