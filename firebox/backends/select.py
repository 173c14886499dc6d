"""Choosing an isolation backend: ``auto`` takes the strongest that works here, and says so.

A backend asked for by name either works or fails with its reason — never a silent downgrade.
"""

from __future__ import annotations

from pathlib import Path

from firebox.backends.base import Availability, Backend, BackendError
from firebox.backends.gvisor.backend import GVisorBackend
from firebox.backends.jail.backend import JailBackend
from firebox.backends.microvm import restore_points
from firebox.backends.microvm.backend import MicroVMBackend
from firebox.backends.owner import Owner

NAMES = ("microvm", "gvisor", "jail")
# What ``auto`` tries, in order: a VM's own kernel on hardware virtualization; else gVisor's
# kernel in user space at native speed; else the VM under software emulation (as strong,
# 5-100x slower at compute). The jail shares the host's kernel: only when asked by name.
AUTO = (("microvm", "kvm"), ("gvisor", None), ("microvm", "tcg"))
# one sentence each on what the choice means for the user's code
CONSEQUENCE = {
    ("microvm", "kvm"): "code runs at near-native speed in a VM of its own",
    ("gvisor", None): "code runs at native speed; system calls and file I/O cost more (gVisor)",
    ("microvm", "tcg"): (
        "code runs 5-100x slower than natively: no KVM here and no working gVisor, so the "
        "microVM's CPU is emulated (install runsc for native speed)"
    ),
    ("jail", None): "code runs at native speed, sharing the host's kernel (the weakest tier)",
}


def backends(owner: Owner, uid_base: int) -> dict[str, Backend]:
    return {
        "microvm": MicroVMBackend(owner, uid_base),
        "gvisor": GVisorBackend(owner, uid_base),
        "jail": JailBackend(owner, uid_base),
    }


def consequence(backend: Backend) -> str:
    """What ``backend``, as it runs here, means for the speed of the user's code."""
    accel = backend.availability().details.get("accel") if backend.name == "microvm" else None
    return CONSEQUENCE.get((backend.name, accel), "")


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
    """The backend called ``name``, or for ``auto`` the first of ``AUTO`` that works here and
    is not in ``ruled_out`` (backends that failed to get ready, with why)."""
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
    reasons: dict[str, str] = {}
    for candidate, accel in AUTO:
        if candidate in ruled_out:
            reasons[candidate] = ruled_out[candidate]
            continue
        backend = found[candidate]
        verdict = backend.availability()
        if not verdict.ok:
            reasons[candidate] = verdict.reason
        elif accel is None or verdict.details.get("accel") == accel:
            return backend
    raise BackendError(
        "no strong isolation backend works on this host (the jail, sharing the host's "
        "kernel, runs only when asked for by name: --isolation jail):\n  "
        + "\n  ".join(f"{name}: {why}" for name, why in reasons.items())
    )
