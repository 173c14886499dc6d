"""Whose host resources a backend's sandboxes are: one daemon home's, or one tool run's.

Only one daemon serves a home at a time (server/home.py locks it), and everything a backend
makes on the host for that home's sandboxes is named after it: their cgroups under
``firebox/<key>``, their disks and VM directories under ``<image dir>/jail-rw/<key>`` and
``<image dir>/vm/<key>``. So a daemon reclaims what a dead daemon of its own home left, and
never what another daemon holds. A tool that starts sandboxes beside a daemon (``firebox image
build`` making a snapshot) is an owner of its own for its run.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from firebox.confine.cgroups import DEFAULT_PARENT, PARENT_ENV
from firebox.images.cache import image_root

RUN_ROOT = Path("/run/firebox")


@dataclass(frozen=True, slots=True)
class Owner:
    key: str  # names everything below
    cgroup_parent: str  # the sandboxes' cgroups are its children

    @classmethod
    def of_home(cls, home: Path) -> Owner:
        key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
        # FIREBOX_CGROUP_PARENT names a parent delegated to the daemon (systemd), or a test's
        return cls(key, os.environ.get(PARENT_ENV) or f"{DEFAULT_PARENT}/{key}")

    @classmethod
    def of_process(cls, what: str) -> Owner:
        """A run of a tool, ``what`` (``image-build``): its own for as long as it runs."""
        key = f"{what}-{os.getpid()}"
        return cls(key, f"{DEFAULT_PARENT}/{key}")

    @property
    def jail_disks(self) -> Path:
        """Where the jails' writable disks are mounted (jail/rwdisk.py)."""
        return image_root() / "jail-rw" / self.key

    @property
    def saved_dir(self) -> Path:
        """Where snapshots of its sandboxes are kept (server/snapshots.py): beside the images,
        which a microVM's uid must reach to map one's RAM and disk."""
        return image_root() / "saved" / self.key

    @property
    def run_dir(self) -> Path:
        """Where the sandboxes' supervisors listen (supervision.py): root's only, and under
        /run, which a reboot empties as it ends them."""
        return RUN_ROOT / self.key

    @property
    def vm_dirs(self) -> Path:
        """Where each microVM's overlay disk and sockets are (microvm/backend.py)."""
        return image_root() / "vm" / self.key
