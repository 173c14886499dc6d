"""Bases of custom templates: the root tree a template's own steps start from.

A base is either Debian of a release the host's apt sources serve (``debian_base``: the
``base`` template's recipe, python3 and what sandboxes need on minbase, for that release), or
an OCI image from a registry the host can reach (``oci_base``, in oci.py). Both are cached
under the image directory like the template images, are adapted for firebox (adapt.py: the
sandbox user, the agent's mount point, and the checks that the agent can run there), and are
never executed on the host while that happens.

The Debian base of the host's own release *is* the ``base`` template's image: one tree.
Entries no one holds (``hold_base``) are removed by ``prune`` (and by ``prune_images``,
which removes every entry no template's current recipe makes).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import current_recipe, known_templates, leases
from ._fs import remove_tree
from .adapt import adapt, check
from .apt_sources import MIRROR_ENV, host_codename, host_mirror, pick_mirror, read_sources
from .cache import Progress, build_cached, image_root, read_marker
from .errors import ImageBuildError
from .oci import oci_base
from .rootfs import build_rootfs, make_recipe

__all__ = [
    "BaseEntry",
    "adapt",
    "debian_base",
    "hold_base",
    "list_bases",
    "oci_base",
    "prune",
    "resolve_release",
]

# Names the archive gives to moving releases; each resolves to a codename for the cache key,
# so that the tree changes when "stable" does.
SUITE_ALIASES = ("oldoldstable", "oldstable", "stable", "testing", "unstable")
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")
RELEASE_TIMEOUT = 30.0
_RELEASE = re.compile(r"[a-z][a-z0-9-]*")


def _quiet(message: str) -> None:
    pass


class _Missing(Exception):
    pass


def _read_head(url: str, limit: int = 65536) -> str:
    """The first ``limit`` bytes at ``url`` (http(s), ftp or file), within RELEASE_TIMEOUT."""
    deadline = time.monotonic() + RELEASE_TIMEOUT
    try:
        with urllib.request.urlopen(url, timeout=RELEASE_TIMEOUT) as response:
            data = b""
            while len(data) < limit and time.monotonic() < deadline:
                chunk = response.read(min(8192, limit - len(data)))
                if not chunk:
                    break
                data += chunk
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise _Missing from exc
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file: mirrors
            raise _Missing from exc
        raise
    return data.decode("utf-8", "replace")


def served_codename(mirror: str, suite: str, progress: Progress) -> str | None:
    """The codename ``mirror`` serves as ``suite`` (from its Release file); None if the
    mirror could not be asked; ImageBuildError if it answers that it has no such release."""
    for name in ("InRelease", "Release"):
        url = f"{mirror.rstrip('/')}/dists/{suite}/{name}"
        try:
            text = _read_head(url)
        except _Missing:
            continue
        except (OSError, ValueError) as exc:  # URLError is an OSError
            progress(f"could not read {url} ({exc}); taking {suite!r} as it is")
            return None
        for line in text.splitlines():
            if line.startswith("Codename:"):
                return line.split(":", 1)[1].strip() or suite
        return suite
    raise ImageBuildError(
        f"the Debian mirror {mirror} has no release {suite!r} (no dists/{suite}/Release there); "
        "use a release it serves, by codename (bookworm, trixie) or as stable/testing"
    )


def _need_script(codename: str, scripts: Path) -> None:
    if not (scripts / codename).exists():
        raise ImageBuildError(
            f"this host's debootstrap knows no release {codename!r} (nothing in {scripts}); "
            "check the name, or install a newer debootstrap (e.g. from backports) for a "
            "release newer than it"
        )


def resolve_release(
    release: str,
    progress: Progress = _quiet,
    *,
    etc_apt: Path = Path("/etc/apt"),
    environ: Mapping[str, str] = os.environ,
    scripts: Path = DEBOOTSTRAP_SCRIPTS,
) -> tuple[str, str]:
    """The codename and the mirror a Debian base of ``release`` is debootstrapped from.

    A release the host's apt sources list is taken from them as it is, with no network; an
    alias (stable, testing…) or a release they do not list is looked up on the host's mirror,
    which says whether it serves it and under which codename.
    """
    if not _RELEASE.fullmatch(release):
        raise ImageBuildError(f"{release!r} is not a Debian release name (bookworm, stable…)")
    if release not in SUITE_ALIASES:
        _need_script(release, scripts)  # a typo fails here, before any network
    host = host_codename(environ=environ)
    if environ.get(MIRROR_ENV):  # the mirror given for the host's release, which it serves
        listed = environ[MIRROR_ENV] if release == host else None
    else:
        listed = pick_mirror(read_sources(etc_apt), release)
    if listed and release not in SUITE_ALIASES:
        return release, listed
    mirror = listed or host_mirror(host, etc_apt, environ)
    codename = served_codename(mirror, release, progress) or release
    _need_script(codename, scripts)
    return codename, mirror


def debian_base(release: str, progress: Progress | None = None) -> Path:
    """The root tree of Debian ``release`` (minbase and the ``base`` template's packages,
    adapted for firebox), debootstrapped from the host's mirror unless cached. Needs root;
    ImageBuildError says what failed."""
    report = progress or _quiet
    codename, mirror = resolve_release(release, report)
    recipe = make_recipe("base", codename, mirror)

    def build(target: Path, log: Path, prog: Progress) -> None:
        build_rootfs(recipe, target, log, prog)  # includes post.apply
        found = check(target)
        prog(f"Python {found.version[0]}.{found.version[1]} at {found.path}")

    return build_cached(recipe, build, root=image_root(), progress=report)


@dataclass(frozen=True)
class BaseEntry:
    name: str
    rootfs: Path
    kind: str  # "debian" or "oci"
    source: str  # the Debian codename, or the image reference it was first pulled as
    size_bytes: int
    built_at: str


def list_bases(root: Path | None = None) -> list[BaseEntry]:
    """The complete base entries in the image directory, with their sizes."""
    root = root or image_root()
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        marker = read_marker(entry) if entry.is_dir() and not entry.name.startswith(".") else None
        recipe = marker.get("recipe") if marker else None
        if not marker or not isinstance(recipe, dict):
            continue
        if recipe.get("kind") == "oci":
            try:
                source = str(json.loads((entry / "oci.json").read_text())["ref"])
            except (OSError, ValueError, KeyError):
                source = str(recipe.get("digest"))
            kind = "oci"
        elif recipe.get("template") == "base":
            kind, source = "debian", str(recipe.get("codename"))
        else:
            continue
        size = marker.get("size_bytes")
        built = str(marker.get("built_at", ""))
        found.append(BaseEntry(entry.name, entry / "rootfs", kind, source, int(size or 0), built))
    return found


_held: dict[str, int] = {}  # entry name -> this process's lease on it, held until it exits


def hold_base(rootfs: Path) -> bool:
    """Lease the base ``rootfs`` to this process until it exits, so that no prune removes it
    while templates are made from it; False if it was pruned meanwhile (make it again)."""
    entry = rootfs.parent
    if entry.name not in _held:
        fd = leases.hold(entry, lambda e: read_marker(e) is not None)
        if fd is None:
            return False
        _held[entry.name] = fd
    return True


def prune(keep: Iterable[str | Path] = ()) -> list[str]:
    """Remove the bases that are not in ``keep`` (entry names or rootfs paths), not a
    template's current image and not held by any process; the names of those removed."""
    kept = {Path(k).parent.name if Path(k).name == "rootfs" else str(k) for k in keep}
    kept |= {current_recipe(t).name for t in known_templates()}
    root = image_root()
    stale = [root / b.name for b in list_bases(root) if b.name not in kept]
    return leases.prune(stale, remove_tree)
