"""Find the Debian release and archive mirror that the host's own apt uses.

The guest is built from the same release and the same mirror as the host, so nothing about
the network location of the archive is hard-coded. Parsing is done by pure functions over file
contents (easy to test); the ``host_*`` functions only read files and the environment.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageBuildError

MIRROR_ENV = "FIREBOX_APT_MIRROR"
CODENAME_ENV = "FIREBOX_DEBIAN_CODENAME"

# debootstrap fetches with wget or from a local tree; apt-only transports such as
# "mirror+http" or "cdrom" would make it fail later with a less helpful message.
_USABLE_SCHEMES = ("http://", "https://", "ftp://", "file:")

_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[[^\]]*\]\s*)?(\S+)\s+(\S+)(?:\s+(.*))?$")


class AptSourceError(ImageBuildError):
    """The host's Debian release or archive mirror could not be determined."""


@dataclass(frozen=True)
class SourceEntry:
    """One (type, URI) pair of an apt source, with the suites and components it serves."""

    type: str
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release(5) ``KEY=value`` lines; values may be shell-quoted."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            continue
        result[key.strip()] = words[0] if words else ""
    return result


def parse_one_line(text: str) -> list[SourceEntry]:
    """Parse the one-line ``sources.list`` format: ``deb [opts] URI SUITE COMPONENTS...``."""
    entries: list[SourceEntry] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = _ONE_LINE.match(line)
        if not match:
            continue
        kind, uri, suite, components = match.groups()
        entries.append(SourceEntry(kind, uri, (suite,), tuple((components or "").split())))
    return entries


def _deb822_paragraphs(text: str) -> list[dict[str, str]]:
    paragraphs: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue  # comments may sit inside a paragraph without ending it
        if not line.strip():
            if fields:
                paragraphs.append(fields)
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:  # continuation of the previous field
                fields[last] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    if fields:
        paragraphs.append(fields)
    return paragraphs


def parse_deb822(text: str) -> list[SourceEntry]:
    """Parse the deb822 ``.sources`` format (Types/URIs/Suites/Components paragraphs)."""
    entries: list[SourceEntry] = []
    for fields in _deb822_paragraphs(text):
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for kind in fields.get("types", "").split():
            for uri in fields.get("uris", "").split():
                entries.append(SourceEntry(kind, uri, suites, components))
    return entries


def pick_mirror(entries: Iterable[SourceEntry], codename: str) -> str | None:
    """The URI of the first ``deb`` entry serving exactly ``codename`` with ``main``.

    Exact match on the suite skips ``-updates``/``-security``/backports archives, which are
    not complete releases that debootstrap could install from.
    """
    for entry in entries:
        if (
            entry.type == "deb"
            and codename in entry.suites
            and "main" in entry.components
            and entry.uri.startswith(_USABLE_SCHEMES)
        ):
            return entry.uri
    return None


def read_sources(etc_apt: Path = Path("/etc/apt")) -> list[SourceEntry]:
    """All entries of ``sources.list`` then ``sources.list.d/*`` in apt's (name) order."""
    entries: list[SourceEntry] = []
    main_list = etc_apt / "sources.list"
    if main_list.is_file():
        entries += parse_one_line(main_list.read_text(errors="replace"))
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list" and path.is_file():
                entries += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources" and path.is_file():
                entries += parse_deb822(path.read_text(errors="replace"))
    return entries


def host_codename(
    os_release: Iterable[Path] = (Path("/etc/os-release"), Path("/usr/lib/os-release")),
    environ: Mapping[str, str] = os.environ,
) -> str:
    """The host's release codename (``VERSION_CODENAME``), or ``$FIREBOX_DEBIAN_CODENAME``."""
    if environ.get(CODENAME_ENV):
        return environ[CODENAME_ENV]
    for path in os_release:
        if path.is_file():
            codename = parse_os_release(path.read_text(errors="replace")).get("VERSION_CODENAME")
            if codename:
                return codename
            break
    raise AptSourceError(
        "could not find VERSION_CODENAME in /etc/os-release, so the Debian release for the "
        f"guest is unknown; set {CODENAME_ENV} (e.g. bookworm) and {MIRROR_ENV} to the "
        "Debian archive URI"
    )


def host_mirror(
    codename: str,
    etc_apt: Path = Path("/etc/apt"),
    environ: Mapping[str, str] = os.environ,
) -> str:
    """The Debian archive URI for ``codename`` from apt's sources, or ``$FIREBOX_APT_MIRROR``."""
    if environ.get(MIRROR_ENV):
        return environ[MIRROR_ENV]
    uri = pick_mirror(read_sources(etc_apt), codename)
    if uri is None:
        raise AptSourceError(
            f"no apt source in {etc_apt}/sources.list or {etc_apt}/sources.list.d/ has a "
            f"'deb' entry for suite {codename!r} with component 'main'; set {MIRROR_ENV} to "
            "the Debian archive URI this host can reach (the one apt uses for that release)"
        )
    return uri
