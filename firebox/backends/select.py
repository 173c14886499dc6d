"""Choosing an isolation backend: ``auto`` takes the strongest that works here, and says so.

A backend asked for by name either works or fails with its reason — never a silent downgrade.
"""

from __future__ import annotations

from pathlib import Path

from firebox.backends.base import Availability, Backend, BackendError
from firebox.backends.jail.backend import JailBackend
from firebox.backends.microvm import restore_points
from firebox.backends.microvm.backend import MicroVMBackend
from firebox.backends.owner import Owner

# strongest first: a VM has its own kernel; the jail shares the host's
NAMES = ("microvm", "jail")


def backends(owner: Owner, uid_base: int) -> dict[str, Backend]:
    return {"microvm": MicroVMBackend(owner, uid_base), "jail": JailBackend(owner, uid_base)}


def build_backend(running: Backend, owner: Owner, uid_base: int) -> Backend | None:
    """What runs template builds: the daemon's backend if it can, else a jail of its own
    (its cgroups and disks named apart from the sandboxes'), or None if neither works here."""
    if running.builds:
        return running
    jail = JailBackend(Owner(f"{owner.key}-build", f"{owner.cgroup_parent}-build"), uid_base)
    return jail if jail.availability().ok else None


async def forget_image(running: Backend, rootfs: Path) -> None:
    """The tree ``rootfs`` (a deleted template's) is gone: what any backend made of it goes
    too, whichever backend this daemon runs (a microVM daemon beside it made snapshots)."""
    await running.forget_image(rootfs)
    if not isinstance(running, MicroVMBackend):
        await restore_points.prune_made_from(rootfs.parent)


async def prune_orphans() -> list[str]:
    """What backends made of trees that are gone (a microVM's snapshots), nobody holding it."""
    return await restore_points.prune_orphans()


def report(uid_base: int) -> dict[str, Availability]:
    """What `firebox doctor` prints: every backend with its verdict."""
    out: dict[str, Availability] = {}
    for name, backend in backends(Owner.of_process("doctor"), uid_base).items():
        out[name] = backend.availability()
    return out


def select(
    name: str, owner: Owner, uid_base: int, ruled_out: dict[str, str] | None = None
) -> Backend:
    """The backend called ``name``, or for ``auto`` the strongest that works here and is not
    in ``ruled_out`` (backends that failed to get ready, with why)."""
    found = backends(owner, uid_base)
    ruled_out = ruled_out or {}
    if name != "auto":
        if name not in found:
            raise BackendError(f"unknown isolation {name!r}; choose auto, {', '.join(NAMES)}")
        backend = found[name]
        verdict = backend.availability()
        if not verdict.ok:
            raise BackendError(f"isolation {name!r} cannot run on this host: {verdict.reason}")
        return backend
    reasons = []
    for candidate in NAMES:
        if candidate in ruled_out:
            reasons.append(f"{candidate}: {ruled_out[candidate]}")
            continue
        backend = found[candidate]
        verdict = backend.availability()
        if verdict.ok:
            return backend
        reasons.append(f"{candidate}: {verdict.reason}")
    raise BackendError("no isolation backend works on this host:\n  " + "\n  ".join(reasons))
