"""One template build's steps, from its base to a recorded template: each step found in the
layer cache or made in a build sandbox (runner.py), the ENV expanded, the layers flattened into
the template's tree, the template started once (a microVM's snapshot is taken then), pushed to
the template registry if the daemon has one (distribute.py), and its names recorded. The
service (service.py) runs it under the build's slot and deadline."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firebox.agent_client import start
from firebox.backends.base import BackendError, SandboxSpec
from firebox.images import bases as image_bases
from firebox.images import layers
from firebox.server.boot import boot
from firebox.server.egress_policy import PolicyError, parse_policy
from firebox.server.errors import ApiError
from firebox.server.templates import bases, builds, steps
from firebox.server.templates.catalog import TemplateRecord
from firebox.server.templates.runner import BuildSandbox, StepFailure
from firebox.server.templates.sources import Sources, host_sources
from firebox.settings import Limits

if TYPE_CHECKING:
    from firebox.server.templates.service import BuildRequest, TemplateService

# where sandboxes mount their writable disk (backends/jail/rwdisk.py, the microVM's init)
PLACES = ("home/user", "tmp", "root")


class BuildRunner:
    def __init__(self, svc: TemplateService) -> None:
        self.svc = svc
        self._sources: Sources | None = None

    def _policy_and_envs(self, req: BuildRequest) -> tuple[Any, dict[str, str]]:
        if self._sources is None:
            self._sources = host_sources()  # read once: the host's configuration
        allowed = [*self._sources.hosts, *self.svc.settings.allow, *req.allow_out]
        try:
            return parse_policy(allowed), dict(self._sources.envs)
        except PolicyError as e:
            raise ApiError("invalid_argument", f"allow_out: {e}") from None

    async def run(self, build: builds.Build, req: BuildRequest) -> None:
        """Take ``req``'s steps from its base to a recorded template (or BuildFailed)."""
        spec = req.template
        base = await bases.resolve(spec, build.owner, self.svc.catalog, build.log, self.svc.egress)
        image_bases.hold_base(base.tree)  # kept for as long as this daemon runs
        build.log(f"base: {base.label}")
        policy, source_envs = self._policy_and_envs(req)
        limits = Limits(
            cpu_count=req.cpu_count,
            memory_mb=req.memory_mb + self.svc.settings.disk_mb,
            disk_mb=self.svc.settings.disk_mb,
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
                build,
                rootfs,
                base.label,
                base.tree,
                keys,
                final_start,
                len(spec["steps"]),
                size,
                req.pool_size,
            )
            self.svc._holdings.hold(record)  # from now on: no prune removes its tree
            await self._check_start(build, record)
            # before it is recorded: once a create may find it, every node can start it
            record = await self.svc.catalog.distribution.push(record, build.log)
            self.svc.catalog.add(record)
            recorded = True
            build.log(f"template {build.name}:{','.join(build.tags)} is ready ({size >> 20} MB)")
            build.finish("ready")
        finally:
            for fd in held:
                os.close(fd)
            if not recorded:  # a tree of a build that failed at its start: prunable
                self.svc._holdings.keep_only(self.svc.catalog.all_records())

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
        need = self.svc.settings.disk_mb + self.svc.settings.min_free_disk_mb
        if free < need:
            raise builds.BuildFailed(
                builds.failure(
                    f"the host has {free} MB free for images; a build step may write up to "
                    f"{self.svc.settings.disk_mb} MB and the daemon keeps "
                    f"{self.svc.settings.min_free_disk_mb} MB free (--min-free-disk-mb): remove "
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
        assert self.svc.build_backend is not None
        sandbox = await BuildSandbox.start(
            self.svc.build_backend, base_tree, diffs, limits, policy, self.svc.egress
        )
        try:
            if step["type"] == "COPY":
                await self._place_files(build.owner, step, sandbox)
            envs = dict(source_envs)  # the ENV so far is in the command (State.prelude)

            def line(stream: str, text: str) -> None:
                build.log(text, "error" if stream == "stderr" else "info", index)

            cwd = state.workdir if step["type"] == "RUN" else "/"
            try:
                await sandbox.run(cmd, user, cwd, envs, self.svc.settings.step_timeout, line)
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
        assert self.svc.build_backend is not None
        sandbox = await BuildSandbox.start(
            self.svc.build_backend, base_tree, diffs, limits, parse_policy(), self.svc.egress
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
        await sandbox.write(steps.COPY_ARCHIVE, self.svc.upload_path(owner, step["filesHash"]))

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
            limits=self.svc.settings.sandbox_limits,
            start=record.start,
        )
        try:
            await self.svc.runtime.prepare(spec)  # a microVM's snapshot, its server running
            booted = await boot(self.svc.runtime, spec)
        except BackendError as e:
            raise builds.BuildFailed(
                builds.failure(
                    f"the template did not start: {e}", None, command=record.start.start_cmd
                )
            ) from None
        try:
            if command and not self.svc.runtime.starts_templates:
                await start.start_and_wait(
                    booted.agent,
                    record.start,
                    self.svc.settings.ready_timeout,
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
