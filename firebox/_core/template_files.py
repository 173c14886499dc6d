"""Which local files a template's COPY step takes, as Docker and E2B pick them.

``src`` is a path or glob pattern relative to the build context (``*`` and ``?`` within a
path component, ``[...]`` classes, ``**`` across components; dot files match like others);
a matched directory brings everything under it. Files are left out when the context's
``.dockerignore`` or the template's ``file_ignore_patterns`` exclude them, with Docker's
rules: a pattern is relative to the context, matches a path or any of its parents, ``!``
takes an earlier exclusion back, and the last pattern that matches decides.

What matched is hashed and packed by ``firebox.recipes.files``, whose docstring defines both.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from firebox.exceptions import InvalidArgumentException
from firebox.recipes import FileEntry, FilesHash, write_tar
from firebox.recipes.files import CHUNK

_GLOB = re.compile(r"[*?[]")

Item = tuple[FileEntry, str]  # a member and the local path it is read from


def read_dockerignore(context: Path) -> list[str]:
    """The patterns of ``context``'s ``.dockerignore``; none when it has none."""
    try:
        text = (context / ".dockerignore").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class IgnoreRules:
    """Docker's ignore patterns, compiled."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for pattern in patterns:
            pattern = pattern.strip()
            negated = pattern.startswith("!")
            pattern = posixpath.normpath(pattern.lstrip("!").strip().lstrip("/"))
            if pattern not in ("", "."):
                self.rules.append((negated, glob_regex(pattern)))
        self.has_exceptions = any(negated for negated, _ in self.rules)

    def ignored(self, rel: str) -> bool:
        candidates = [rel]
        while "/" in candidates[-1]:
            candidates.append(candidates[-1].rsplit("/", 1)[0])
        verdict = False
        for negated, regex in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                verdict = not negated
        return verdict


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob pattern as a regex over ``/``-separated relative paths."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_component(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _component(part: str) -> str:
    out, i = [], 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := part.find("]", i + 2)) > 0:
            body = part[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = re.sub(r"([\\\]^])", r"\\\1", body[1:] if negate else body)
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        elif ch == "\\" and i + 1 < len(part):
            i += 1
            out.append(re.escape(part[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def collect(context: Path, src: str, ignore: IgnoreRules, resolve_symlinks: bool) -> list[Item]:
    """The members ``src`` brings, sorted by name; raises if it brings none."""
    pattern = posixpath.normpath(src)
    walker = _Walker(context, ignore, resolve_symlinks)
    if _GLOB.search(pattern) is None:
        walker.take(pattern)
    else:
        walker.match(pattern)
    if not walker.found:
        raise InvalidArgumentException(
            f"COPY {src!r}: no files match it in {context} (.dockerignore and "
            "file_ignore_patterns applied); the path is relative to the template's "
            "file_context_path, by default the directory of the file that made the template"
        )
    return sorted(walker.found.values(), key=lambda item: item[0].name)


class _Walker:
    def __init__(self, context: Path, ignore: IgnoreRules, resolve_symlinks: bool) -> None:
        self.context, self.ignore, self.resolve = context, ignore, resolve_symlinks
        self.found: dict[str, Item] = {}
        self.seen_dirs: set[tuple[int, int]] = set()  # followed symlinks must not loop

    def take(self, rel: str) -> None:
        """``rel`` and, if a directory, everything under it."""
        path = str(self.context / rel)
        st = self._stat(path)
        if st is None:
            return
        if rel != "." and not self.ignore.ignored(rel):
            entry = _entry(rel, path, st)
            if entry is not None:
                self.found[rel] = (entry, path)
        if stat.S_ISDIR(st.st_mode):
            self._below(rel, path, st)

    def match(self, pattern: str) -> None:
        """Everything a glob pattern matches, walking down from its fixed prefix."""
        parts = pattern.split("/")
        fixed = next(i for i, p in enumerate(parts) if _GLOB.search(p))
        base = "/".join(parts[:fixed]) or "."
        regex = glob_regex(pattern)
        for rel in self._paths_under(base, set()):
            if regex.fullmatch(rel):
                self.take(rel)

    def _paths_under(self, rel: str, seen: set[tuple[int, int]]) -> Iterator[str]:
        path = str(self.context / rel)
        try:
            st = os.stat(path)
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for e in entries:
            child = e.name if rel == "." else f"{rel}/{e.name}"
            yield child
            if e.is_dir(follow_symlinks=self.resolve) and not self._pruned(child):
                yield from self._paths_under(child, seen)

    def _below(self, rel: str, path: str, st: os.stat_result) -> None:
        if (st.st_dev, st.st_ino) in self.seen_dirs:
            return
        self.seen_dirs.add((st.st_dev, st.st_ino))
        for e in os.scandir(path):
            child = e.name if rel == "." else f"{rel}/{e.name}"
            if not self._pruned(child):
                self.take(child)

    def _pruned(self, rel: str) -> bool:
        # an ignored directory is skipped whole unless a ! pattern may take a part back
        return not self.ignore.has_exceptions and self.ignore.ignored(rel)

    def _stat(self, path: str) -> os.stat_result | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if self.resolve and stat.S_ISLNK(st.st_mode):
            with contextlib.suppress(OSError):  # dangling (or a loop): it stays a link
                st = os.stat(path)  # what it points to
        return st


def _entry(rel: str, path: str, st: os.stat_result) -> FileEntry | None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return FileEntry(rel, "file", mode, st.st_size, mtime=st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        return FileEntry(rel, "dir", mode, mtime=st.st_mtime)
    if stat.S_ISLNK(st.st_mode):
        return FileEntry(rel, "symlink", mode, target=os.readlink(path), mtime=st.st_mtime)
    return None  # sockets, fifos, devices: nothing a template can hold


def files_hash(src: str, dest: str, items: list[Item]) -> str:
    """The ``filesHash`` of a COPY step whose ``src`` brought ``items``."""
    digest = FilesHash(src, dest)
    for entry, path in items:
        digest.add(entry)
        if entry.kind == "file":
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


def write_upload(out: IO[bytes], src: str, dest: str, items: list[Item], expected: str) -> None:
    """Packs ``items`` into ``out``; raises if the files changed since they were hashed."""
    try:
        written = write_tar(out, src, dest, items)
    except OSError as e:
        written = f"unreadable ({e})"
    if written != expected:
        raise InvalidArgumentException(
            f"COPY {src!r}: the files changed while the template was being uploaded ({written}); "
            "build again once they are settled"
        )
