"""Stage the agent's code for a sandbox to mount read-only.

Inside a sandbox the agent is imported as ``firebox.agent.main`` from ``/opt/firebox/lib``,
where ``firebox/__init__.py`` is empty (the host package's ``__init__`` pulls in the SDK and its
dependencies, which the guest does not have) and ``firebox/protocol/`` is the real one. Only
the files the agent needs are staged: nothing of the daemon, its keys or its configuration.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import shutil
import tempfile
from pathlib import Path

GUEST_LIB = "/opt/firebox/lib"
AGENT_COMMAND = [
    "/usr/bin/python3",
    "-I",
    "-S",
    "-c",
    f"import sys; sys.path.insert(0, {GUEST_LIB!r}); from firebox.agent.main import main; main()",
]

_PACKAGE = Path(__file__).resolve().parents[1]  # firebox/
# bump when the staged layout changes (2: with bytecode; 3: the protocol as a package)
STAGE_VERSION = b"3"


def _sources(packages: tuple[str, ...]) -> list[tuple[Path, str]]:
    files = []
    for package in packages:
        for src in sorted((_PACKAGE / package).glob("*.py")):
            files.append((src, f"firebox/{package}/{src.name}"))
    return files


def stage_host(root: Path) -> Path:
    """The supervisor's code (supervisor/ and the protocol), staged as the agent's is: run as
    ``python3 -I -S`` on the host, where the host package's ``__init__`` (the SDK) would cost
    its start-up. Apart from the agent's, so that changing one never changes the other's
    digest (a microVM snapshot holds the agent's)."""
    return stage(root, ("protocol", "supervisor"), "host-lib")


def stage(
    root: Path,
    packages: tuple[str, ...] = ("protocol", "agent"),
    name: str = "agent-lib",
    extras: dict[str, bytes] | None = None,
) -> Path:
    """Copy the agent into ``root/agent-lib/<digest>`` (world-readable) and return that dir.

    ``root`` must be reachable by the sandboxes' unprivileged host uid, as the image cache is
    (bubblewrap resolves bind sources with that uid's permissions).

    The directory name is a digest of the content, so a running sandbox keeps the code it
    started with while a new daemon version stages its own next to it. ``extras``: files
    beside the code, by name (a gVisor agent's seccomp program).
    """
    sources = _sources(packages)
    extras = extras or {}
    digest = hashlib.sha256(STAGE_VERSION)
    for src, rel in sources:
        digest.update(rel.encode() + b"\0" + src.read_bytes())
    for rel, data in sorted(extras.items()):
        digest.update(rel.encode() + b"\0" + data)
    target = root / name / digest.hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    # a directory of this call's own: two threads of one daemon may stage at once (a fresh
    # node's first creates), and must not write into (or remove) each other's
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    for src, rel in sources:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    (tmp / "firebox" / "__init__.py").write_text("")
    for rel, data in extras.items():
        (tmp / rel).write_bytes(data)
    # The guest mounts this read-only, so its Python could not cache bytecode and would compile
    # the agent on every sandbox start (~7 ms). Compile here: the guest image is the host's
    # Debian release, so its interpreter shares this one's bytecode tag (cpython-3XX); a guest
    # with another version just ignores these files. Unchecked hashes, since the directory's
    # name already changes with its content.
    compileall.compile_dir(
        tmp, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    (tmp / ".complete").write_text("")
    for dirpath, _dirs, names in os.walk(tmp):  # after compiling: __pycache__ too
        os.chmod(dirpath, 0o755)
        for name in names:
            os.chmod(os.path.join(dirpath, name), 0o644)
    os.chmod(target.parent, 0o755)
    try:
        tmp.rename(target)
    except OSError:  # a concurrent stager won the race with identical content
        shutil.rmtree(tmp, ignore_errors=True)
    return target
