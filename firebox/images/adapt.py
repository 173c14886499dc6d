"""What firebox adds to any base tree, and the checks that the tree can carry a sandbox.

A base is a Debian tree debootstrapped here or the root filesystem of an OCI image from a
registry, i.e. anyone's files. Nothing in it is executed on the host (no chroot, not its
Python): every fact comes from reading files, with symlinks followed inside the tree
(``resolve_in_tree``), never on the host. What firebox adds is ``post.apply``'s (the user
``user``, uid 1000, its home, the agent's mount point, machine-id…), after the few fixes an
image not made for firebox needs (below).

The hash of this module's source is part of every base's cache key, as post's is.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from . import post
from ._fs import resolve_in_tree
from .errors import ImageBuildError

# The oldest Python the agent runs on: vermin over firebox/agent and firebox/protocol finds
# zip(strict=) and fcntl.F_SETPIPE_SZ (3.10); nothing newer.
MIN_PYTHON = (3, 10)
# The agent is started as /usr/bin/python3 (backends/agent_files.py, the jail's zygote).
PYTHON = "usr/bin/python3"
# Where images built from python.org's sources (Docker's "python" images) put it instead.
LOCAL_PYTHON = "usr/local/bin/python3"

# host machine -> (OCI architecture name, ELF e_machine)
_ARCHES = {"x86_64": ("amd64", 62), "aarch64": ("arm64", 183)}
_ELF_MACHINES = {3: "386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390x", 40: "arm"}
_ELF_MACHINES.update({e: arch for arch, e in _ARCHES.values()} | {243: "riscv64"})
_VERSIONED = re.compile(r"python(\d+)\.(\d+)")
# Where the backends mount over a read-only root (the jail's bubblewrap, the microVM's init);
# an image made for a container runtime often lacks them, as the runtime makes its own.
MOUNT_POINTS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "root": 0o700}


def source_hash() -> str:
    """sha256 of this module's source: changing the adaptation makes new base entries."""
    return hashlib.sha256(inspect.getsource(sys.modules[__name__]).encode()).hexdigest()


def host_arch() -> str:
    """This host's architecture as OCI names it (``amd64``, ``arm64``)."""
    machine = platform.machine()
    if machine not in _ARCHES:
        raise ImageBuildError(f"firebox does not know this host's architecture {machine!r}")
    return _ARCHES[machine][0]


@dataclass(frozen=True)
class PythonFound:
    path: str  # inside the tree, every symlink followed: "/usr/bin/python3.11"
    version: tuple[int, int]


def _lib_version(root: Path, binary: Path) -> tuple[int, int] | None:
    """The newest ``lib/python3.N`` beside the binary's ``bin`` (or in usr/lib) that holds a
    standard library (its ``os.py``)."""
    prefixes = ["usr"]
    if binary.parent.parent.is_relative_to(root):
        prefixes.insert(0, binary.parent.parent.relative_to(root).as_posix())
    found = []
    for prefix in dict.fromkeys(prefixes):
        lib = resolve_in_tree(root, f"{prefix}/lib")
        for name in os.listdir(lib) if lib.is_dir() else ():
            match = _VERSIONED.fullmatch(name)
            if match and resolve_in_tree(root, f"{prefix}/lib/{name}/os.py").is_file():
                found.append((int(match[1]), int(match[2])))
    return max(found, default=None)


def _elf_arch(binary: Path) -> str | None:
    """The architecture an ELF file is built for, from its header; None if not ELF."""
    with open(binary, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None  # e.g. a script wrapper: the interpreter it names is checked by its use
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(machine, f"ELF machine {machine}")


def find_python(root: Path) -> PythonFound:
    """The tree's /usr/bin/python3, its version and architecture checked against the agent's
    needs and this host's; ImageBuildError saying what to change otherwise."""
    binary = resolve_in_tree(root, PYTHON)
    if not binary.is_file():
        raise ImageBuildError(
            "the base has no Python 3 at /usr/bin/python3 (firebox's agent, which serves every "
            "sandbox, is a Python program started from there); use an image with python3 "
            "installed, or add it to the image (apt-get install python3, apk add python3)"
        )
    inside = "/" + binary.relative_to(root).as_posix()
    match = _VERSIONED.fullmatch(binary.name)
    version = (int(match[1]), int(match[2])) if match else _lib_version(root, binary)
    if version is None:
        raise ImageBuildError(
            f"cannot tell which Python {inside} in the base is: its name has no version and no "
            "lib/python3.N with a standard library is beside it; use an image whose python3 is "
            "a regular installation"
        )
    if version < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        raise ImageBuildError(
            f"the base's Python is {version[0]}.{version[1]} ({inside}); firebox's agent needs "
            f"Python {need} or newer: use a newer image (Debian 12, Ubuntu 22.04, python:3.11 "
            "and later have one)"
        )
    arch, host = _elf_arch(binary), host_arch()
    if arch is not None and arch != host:
        raise ImageBuildError(
            f"the base's {inside} is built for {arch}, but this host runs {host}; use the "
            f"image's linux/{host} variant"
        )
    return PythonFound(inside, version)


def check_users(root: Path) -> None:
    """uid and gid 1000 are the sandbox user's, named ``user``: an image that gives them to
    another name (Ubuntu's ``ubuntu``, node's ``node``), or that has a ``user`` with other ids,
    cannot be adapted without changing what its own files belong to."""
    for rel, kind in (("etc/passwd", "uid"), ("etc/group", "gid")):
        path = resolve_in_tree(root, rel)
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) < 3:
                continue
            name, number = fields[0], fields[2]
            if (name == post.USER) != (number == str(post.UID)):
                taken = f"{kind} 1000 as {name!r}" if name != post.USER else f"{name!r} as {number}"
                raise ImageBuildError(
                    f"the base's /{rel} has {taken}; sandboxes run as {post.USER!r} with "
                    f"{kind} 1000: remove or renumber that entry in the image (userdel, "
                    "groupdel, or usermod/groupmod -u/-g) or use another base"
                )


def _prepare(root: Path) -> None:
    """The fixes a tree not made for firebox may need before ``post.apply``: the backends'
    mount points, an /etc with passwd and group (post adds to them), and /usr/bin/python3
    where only /usr/local has it."""
    for rel, mode in MOUNT_POINTS.items():
        point = resolve_in_tree(root, rel)
        if not os.path.lexists(point):
            point.mkdir(mode=mode, parents=True)
            point.chmod(mode)  # mkdir's mode is cut by the umask
    etc = resolve_in_tree(root, "etc")
    if not etc.is_dir():
        if os.path.lexists(etc):
            raise ImageBuildError(f"the base's /etc is not a directory ({etc}); use another base")
        etc.mkdir(mode=0o755, parents=True)
    for name, line in (("passwd", "root:x:0:0:root:/root:/bin/sh"), ("group", "root:x:0:")):
        path = etc / name
        if not os.path.lexists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(line + "\n")
    link = resolve_in_tree(root, PYTHON, follow_last=False)
    if not os.path.lexists(link) and resolve_in_tree(root, LOCAL_PYTHON).is_file():
        link.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.symlink("/" + LOCAL_PYTHON, link)  # never follows: fails if anything is there


def check(root: Path) -> PythonFound:
    """Refuse, with what to do, a tree that cannot carry a sandbox. Reads files only."""
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise ImageBuildError(f"{root} is not a directory")
    found = find_python(root)
    check_bash(root)
    check_users(root)
    return found


def check_bash(root: Path) -> None:
    """The agent runs every command and RUN step with bash (as E2B's envd does)."""
    bash = resolve_in_tree(root, "bin/bash")
    if not bash.is_file():
        raise ImageBuildError(
            "the base has no /bin/bash, which sandboxes run commands with; use a base that "
            "has it (Debian and Ubuntu images do; on Alpine add bash to the image first)"
        )


def adapt(root: Path) -> PythonFound:
    """Make a base tree one firebox can run sandboxes on: the fixes above, the checks, then
    ``post.apply``. Needs root (it chowns the home to uid 1000)."""
    _prepare(root)
    found = check(root)
    post.apply(root)
    return found
