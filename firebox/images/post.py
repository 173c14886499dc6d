"""Steps applied to a fresh base tree (debootstrapped, or an OCI image's), from the host,
without chroot.

Nothing inside the tree is executed: we only write files. Because this runs as host root on a
tree that may come from anyone's image, every path is looked up inside the tree (a symlink is
followed as the sandbox would follow it, never on the host) and no write goes through a symlink,
so nothing in the tree can redirect a write onto the host.

The hash of this module's source is part of the image recipe, so editing anything here makes
the next build produce a new image.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sys
from pathlib import Path

from ._fs import resolve_in_tree
from .errors import ImageBuildError

USER = "user"
UID = GID = 1000
HOME = "/home/user"
SHELL = "/bin/bash"
HOSTNAME = "sandbox"
AGENT_LIB = "/opt/firebox/lib"  # empty mount point; the agent code is bind-mounted here


def source_hash() -> str:
    """sha256 of this module's source: the post-debootstrap part of the recipe."""
    return hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()


def _inside(root: Path, rel: str) -> Path:
    """Where ``rel`` is in the tree, its directories' symlinks followed inside it; refused if
    ``rel`` itself is a symlink (a write would go wherever it points)."""
    path = resolve_in_tree(root, rel, follow_last=False)
    if path.is_symlink():
        raise ImageBuildError(
            f"refusing to write {path}: it is a symlink, which could lead outside {root}"
        )
    return path


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    with os.fdopen(fd, "a") as fh:
        fh.write(line + "\n")


def _ensure_entry(root: Path, rel: str, line: str, id_field: int | None) -> None:
    """Append ``line`` to a colon-separated database unless its name is present.

    ``id_field`` is checked so we never give uid/gid 1000 a second name.
    """
    path = _inside(root, rel)
    if not path.exists():
        return  # e.g. no gshadow in this tree: nothing to keep consistent
    wanted = line.split(":")
    text = path.read_text()
    for existing in text.splitlines():
        fields = existing.split(":")
        if fields[0] == wanted[0]:
            return
        if id_field is not None and len(fields) > id_field and fields[id_field] == wanted[id_field]:
            raise ImageBuildError(
                f"{rel} already has id {wanted[id_field]} as {fields[0]!r}; the sandbox user "
                f"needs it (bump the recipe or fix the package list)"
            )
    if text and not text.endswith("\n"):
        line = "\n" + line
    _append_line(path, line)


def add_user(root: Path) -> None:
    _ensure_entry(root, "etc/passwd", f"{USER}:x:{UID}:{GID}::{HOME}:{SHELL}", 2)
    _ensure_entry(root, "etc/group", f"{USER}:x:{GID}:", 2)
    # "!" locks the password; empty last-change day keeps the file reproducible.
    _ensure_entry(root, "etc/shadow", f"{USER}:!::0:99999:7:::", None)
    _ensure_entry(root, "etc/gshadow", f"{USER}:!::", None)


def make_home(root: Path) -> None:
    home = _inside(root, HOME)
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    home.chmod(0o755)
    skel = _inside(root, "etc/skel")
    if skel.is_dir():  # what useradd -m would copy: .bashrc, .profile
        for item in skel.iterdir():
            dest = home / item.name
            # lexists: a dangling link planted in an image's home must not be written through
            if item.is_file() and not item.is_symlink() and not os.path.lexists(dest):
                shutil.copy2(item, dest, follow_symlinks=False)
                os.lchown(dest, UID, GID)
    os.chown(home, UID, GID)


def make_dirs(root: Path) -> None:
    _inside(root, AGENT_LIB).mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = _inside(root, "tmp")
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)


def _write_file(root: Path, rel: str, text: str) -> None:
    """Replace ``root/rel`` with ``text`` (mode 0644), never following a symlink."""
    path = _inside(root, rel)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o644)  # an existing file keeps its mode otherwise
        fh.write(text)


def write_hostname(root: Path) -> None:
    _write_file(root, "etc/hostname", HOSTNAME + "\n")


# Debian's python3-matplotlib reads /etc/matplotlibrc on top of the built-in defaults and
# ships it with "backend: TkAgg"; a sandbox has no display, so select the file renderer.
# Harmless in templates without matplotlib (nothing reads it).
MATPLOTLIBRC = """\
# Written by firebox: sandboxes have no display, so render with the non-interactive Agg
# backend. Every other setting keeps matplotlib's default.
backend: Agg
"""


def write_matplotlibrc(root: Path) -> None:
    _write_file(root, "etc/matplotlibrc", MATPLOTLIBRC)


def clean_apt(root: Path) -> None:
    """Drop downloaded packages and indexes: the guest never runs apt, and they are large."""
    archives = _inside(root, "var/cache/apt/archives")
    for deb in archives.glob("*.deb") if archives.is_dir() else ():
        deb.unlink()
    cache = _inside(root, "var/cache/apt")
    for binary in cache.glob("*.bin") if cache.is_dir() else ():
        binary.unlink()  # pkgcache.bin/srcpkgcache.bin: derived from the lists removed below
    lists = _inside(root, "var/lib/apt/lists")
    for item in lists.iterdir() if lists.is_dir() else ():
        # Keep the partial/ directory and the lock file apt expects to find.
        if item.name != "lock" and (item.is_symlink() or item.is_file()):
            item.unlink()


def allow_user_pip(root: Path) -> None:
    """Let ``pip install`` work for the sandbox's user, as in E2B's image: Debian marks its
    Python externally managed (PEP 668), which refuses even ``--user`` installs. Packages go
    to ~/.local (on the sandbox's disk); the image itself is read-only either way."""
    lib = _inside(root, "usr/lib")
    for name in sorted(os.listdir(lib)) if lib.is_dir() else ():
        if name.startswith("python3"):
            # looked up again inside the tree: python3.N may be a link, possibly absolute
            marker = _inside(root, f"usr/lib/{name}/EXTERNALLY-MANAGED")
            if marker.is_file():
                marker.unlink()


def empty_machine_id(root: Path) -> None:
    """An empty /etc/machine-id (systemd's "not yet set"), so each sandbox can have its own
    bound over it: the jail's bubblewrap and the microVM's init need a file to mount on."""
    _write_file(root, "etc/machine-id", "")


# E2B's sandboxes let their user sudo without a password, and code written for them does. Root
# inside a firebox sandbox is never root on the host (its own kernel, or a user namespace), so
# this gives nothing the sandbox did not have through user="root". Templates without sudo
# just carry an unused file.
SUDOERS = "# Written by firebox: as in E2B's sandboxes\nuser ALL=(ALL:ALL) NOPASSWD: ALL\n"


def allow_user_sudo(root: Path) -> None:
    if _inside(root, "etc/sudoers.d").is_dir():
        _write_file(root, "etc/sudoers.d/user", SUDOERS)
        _inside(root, "etc/sudoers.d/user").chmod(0o440)  # sudo ignores a writable file


STEPS = (
    add_user,
    allow_user_sudo,
    empty_machine_id,
    make_home,
    make_dirs,
    write_hostname,
    write_matplotlibrc,
    allow_user_pip,
    clean_apt,
)


def apply(root: Path) -> None:
    for step in STEPS:
        step(root)
