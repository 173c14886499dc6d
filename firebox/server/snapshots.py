"""Snapshots of running sandboxes, and forks: sandboxes made from one.

A snapshot is taken of a running sandbox (``take``) with everything its backend can keep
(``Backend.snapshot_keeps``): a microVM's memory and disk, stopped only while they are copied,
its agent's channel held quiet meanwhile so the saved one is at a frame boundary; a jail's
files (home, /tmp, /root: with no working CRIU on such hosts its processes cannot be saved,
and info says so). Any number of sandboxes start from it (``Origin``), each with an identity
of its own (host name, machine id, reseeded randomness), as template clones have.

Snapshots are their key's: listed, found by id or name, deleted (refused while a sandbox made
from it still maps it: a microVM's RAM and disk). ``fork`` is a hidden snapshot and sandboxes
from it at once; the hidden snapshot goes with the last of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firebox.agent_client import AgentError, AgentGone
from firebox.backends.base import BackendError
from firebox.backends.owner import Owner
from firebox.server.errors import ApiError
from firebox.server.live import LiveSandbox, spec_of
from firebox.server.manager import Origin, SandboxManager
from firebox.server.models import iso
from firebox.server.registry import Conflict
from firebox.server.templates.catalog import Resolved
from firebox.settings import SandboxSettings

log = logging.getLogger("firebox.snapshots")

QUIET_DEADLINE = 5.0
FORKS_MAX = 100  # as E2B's fork count
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Snapshot:
    id: str
    owner: str
    name: str | None
    sandbox_id: str  # the sandbox it was taken from
    hidden: bool
    created_at: float
    record: dict[str, Any]

    @property
    def directory(self) -> Path:
        return Path(self.record["directory"])

    def info(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.id,
            "name": self.name,
            "sandbox_id": self.sandbox_id,
            "template": self.record["spec"]["template"],
            "backend": self.record["backend"],
            "keeps": self.record["keeps"],
            "created_at": iso(self.created_at),
            "size_bytes": self.record["size_bytes"],
        }


class Snapshots:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.registry = manager.registry
        self.root = Owner.of_home(manager.config.home).saved_dir
        manager.on_snapshot_user_end = self._user_ended

    # -- taking one -----------------------------------------------------------------------

    async def take(
        self, owner: str, sandbox_id: str, name: str | None = None, hidden: bool = False
    ) -> Snapshot:
        """A snapshot of ``owner``'s running sandbox (resumed first if paused with
        auto_resume; a 409 saying how otherwise)."""
        backend = self.manager.backend
        keeps = backend.snapshot_keeps
        if keeps is None:
            raise ApiError(
                "invalid_argument", f"sandboxes of the {backend.name} backend cannot be saved"
            )
        if name is not None:
            if not NAME.fullmatch(name):
                raise ApiError(
                    "invalid_argument",
                    f"snapshot name {name!r}: lowercase letters, digits, '.', '_' and '-', "
                    "at most 64, starting with a letter or digit",
                )
            if self.find(owner, name) is not None:
                raise ApiError("conflict", f"a snapshot named {name!r} exists; delete it first")
        live = await self.manager.usable(owner, sandbox_id)
        self._check_room(live, keeps)
        snapshot_id = "snap_" + secrets.token_hex(8)
        into = self.root / snapshot_id
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        async with live.transition, self.manager.lifecycle.unwatched(live):
            if live.ended or live.state != "running":
                raise ApiError("conflict", f"sandbox {live.id} is not running now; try again")
            try:
                if keeps == "memory+disk":
                    await live.agent.hold(QUIET_DEADLINE)
                try:
                    # a microVM's is made by a helper VM of the same size: counted as one
                    with self.manager.admission.starting(
                        backend.committed_mb(live.spec.limits.memory_mb)
                        if keeps == "memory+disk"
                        else 0
                    ):
                        await backend.snapshot(live.running, live.spec, into)
                finally:
                    if keeps == "memory+disk":
                        await live.agent.release()
            except (BackendError, AgentError, AgentGone, TimeoutError, OSError) as e:
                raise ApiError(
                    "sandbox_error", f"could not snapshot sandbox {live.id} ({e}); it runs on"
                ) from None
        snap = Snapshot(
            snapshot_id, owner, name, live.id, hidden, time.time(), self._record(live, into)
        )
        try:
            self.registry.query(
                "INSERT INTO snapshots (id, owner, name, sandbox_id, hidden, created_at, record,"
                " node) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (snap.id, owner, name, live.id, int(hidden), snap.created_at,
                 json.dumps(snap.record), self.registry.node),
            )  # fmt: skip
        except Conflict:  # the same name, taken meanwhile
            await backend.forget_snapshot(into)
            raise ApiError(
                "conflict", f"a snapshot named {name!r} exists; delete it first"
            ) from None
        log.info("snapshot %s of %s (%s)", snap.id, live.id, keeps)
        return snap

    def _check_room(self, live: LiveSandbox, keeps: str) -> None:
        """A snapshot is written where the images are: refused where it would eat into the
        free-disk floor (a microVM's holds its RAM, twice while it is made)."""
        need = live.spec.limits.disk_mb + (
            2 * live.spec.limits.memory_mb if "memory" in keeps else 0
        )
        floor = self.manager.config.min_free_disk_mb
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.root.parent.parent).free >> 20
            if free - need < floor:
                raise ApiError(
                    "no_space",
                    f"a snapshot of {live.id} may take up to {need} MB where {free} MB are free "
                    f"of the {floor} MB firebox keeps free; delete snapshots you no longer need "
                    "(GET /snapshots) or free some disk space",
                )

    async def sweep(self) -> None:
        """At start: a fork's snapshot whose sandboxes all ended while no daemon ran goes,
        and so does a directory of a snapshot the registry does not know (a take cut short)."""
        for snap in self._rows("hidden = 1", ()):
            if not self.users(snap.id):
                with contextlib.suppress(ApiError):
                    await self._delete(snap)
        known = {r[0] for r in self.registry.query("SELECT id FROM snapshots", ())}
        for entry in self.root.iterdir() if self.root.is_dir() else ():
            if entry.is_dir() and entry.name not in known:
                await self.manager.backend.forget_snapshot(entry)

    def _record(self, live: LiveSandbox, into: Path) -> dict[str, Any]:
        size = sum(p.stat().st_blocks * 512 for p in into.rglob("*") if p.is_file())
        return {
            "directory": str(into),
            "backend": self.manager.backend.name,
            "keeps": self.manager.backend.snapshot_keeps,
            "spec": live.record()["spec"],
            "template_build": live.template_build,
            "settings": live.settings.model_dump(mode="json"),
            "size_bytes": size,
        }

    # -- finding, listing, deleting -------------------------------------------------------

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[Snapshot]:
        rows = self.registry.query(
            "SELECT id, owner, name, sandbox_id, hidden, created_at, record FROM snapshots "
            f"WHERE {where} ORDER BY created_at",
            args,
        )
        return [
            Snapshot(r[0], r[1], r[2], r[3], bool(r[4]), float(r[5]), json.loads(r[6]))
            for r in rows
        ]

    def by_id(self, owner: str, snapshot_id: str) -> Snapshot | None:
        """``owner``'s snapshot of that id (E2B's routes, where a name could be a template's)."""
        found = self._rows("owner = ? AND id = ?", (owner, snapshot_id))
        return found[0] if found else None

    def find(self, owner: str, ref: str) -> Snapshot | None:
        """``owner``'s snapshot by id or name (another key's is never found)."""
        found = self._rows("owner = ? AND (id = ? OR name = ?)", (owner, ref, ref))
        return found[0] if found else None

    def get(self, owner: str, ref: str) -> Snapshot:
        snap = self.find(owner, ref)
        if snap is None:
            raise ApiError(
                "not_found", f"no snapshot {ref!r} of this key; list them with GET /snapshots"
            )
        return snap

    def listed(self, owner: str, sandbox_id: str | None = None) -> list[Snapshot]:
        if sandbox_id is not None:
            return self._rows("owner = ? AND hidden = 0 AND sandbox_id = ?", (owner, sandbox_id))
        return self._rows("owner = ? AND hidden = 0", (owner,))

    def users(self, snapshot_id: str) -> list[LiveSandbox]:
        return [s for s in self.manager.all_live() if s.snapshot == snapshot_id]

    async def delete(self, owner: str, ref: str) -> None:
        snap = self.get(owner, ref)
        await self._delete(snap)

    async def _delete(self, snap: Snapshot) -> None:
        users = self.users(snap.id)
        if users and snap.record["keeps"] == "memory+disk":
            raise ApiError(
                "conflict",
                f"snapshot {snap.id} is mapped by {len(users)} running sandbox(es) made from it "
                f"({', '.join(s.id for s in users[:5])}); kill them first",
            )
        self.registry.query("DELETE FROM snapshots WHERE id = ?", (snap.id,))
        await self.manager.backend.forget_snapshot(snap.directory)

    async def _user_ended(self, snapshot_id: str) -> None:
        """A fork ended: its hidden snapshot goes with the last of them."""
        found = self._rows("id = ? AND hidden = 1", (snapshot_id,))
        if found and not self.users(snapshot_id):
            try:
                await self._delete(found[0])
            except ApiError as e:
                log.warning("fork snapshot %s stays: %s", snapshot_id, e.message)

    # -- sandboxes from one ---------------------------------------------------------------

    def origin(self, snap: Snapshot) -> Origin:
        """Where a sandbox made from ``snap`` starts."""
        if snap.record["backend"] != self.manager.backend.name:
            raise ApiError(
                "invalid_argument",
                f"snapshot {snap.id} is of a {snap.record['backend']} sandbox; this daemon runs "
                f"{self.manager.backend.name}",
            )
        spec = spec_of({**snap.record["spec"], "sandbox_id": "", "snapshot": None})
        # a jail's snapshot is its files: its template's start command runs again; a
        # microVM's memory has it running already
        template = Resolved(
            spec.template, spec.rootfs, spec.start, snap.record.get("template_build"), None
        )
        return Origin(snap.id, snap.directory, template, spec.limits)

    async def create(self, owner: str, ref: str, settings: SandboxSettings) -> LiveSandbox:
        """A sandbox made from ``owner``'s snapshot ``ref``."""
        return await self.manager.create(owner, settings, self.origin(self.get(owner, ref)))

    async def fork(
        self, owner: str, sandbox_id: str, count: int, timeout: int | None
    ) -> list[LiveSandbox | ApiError]:
        """``count`` sandboxes starting where ``sandbox_id`` is now: one hidden snapshot, then
        each made from it (each succeeds or fails on its own)."""
        if not 1 <= count <= FORKS_MAX:
            raise ApiError("invalid_argument", f"count is 1 to {FORKS_MAX}")
        snap = await self.take(owner, sandbox_id, hidden=True)
        source = self.manager.get(owner, sandbox_id)
        settings = source.settings.model_copy(update={"timeout": timeout})
        origin = self.origin(snap)
        made = await asyncio.gather(
            *(self.manager.create(owner, settings, origin) for _ in range(count)),
            return_exceptions=True,
        )
        results: list[LiveSandbox | ApiError] = []
        for m in made:
            if isinstance(m, LiveSandbox | ApiError):
                results.append(m)
            elif isinstance(m, Exception):
                results.append(ApiError("sandbox_error", f"the fork failed: {m}"))
            else:
                raise m
        if not any(isinstance(r, LiveSandbox) for r in results):
            await self._user_ended(snap.id)  # nothing uses it: it goes now
        return results
