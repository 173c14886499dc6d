"""The files of a COPY step: the upload that carries them and the hash that names it.

The SDK matches a COPY's ``src`` against the build context (firebox/_core/template_files.py),
hashes what matched into the step's ``filesHash`` and, when the daemon does not have that
hash yet, uploads the files as one archive. Both sides use this module, so the daemon can
check that an upload is what its hash says (``hash_tar``).

The upload: a gzip-compressed POSIX (pax) tar.

- Members are the matched paths relative to the build context, ``/``-separated, exactly as
  ``src`` matched them, directories recursed: ``src="app"`` gives ``app``, ``app/main.py``,
  ``app/lib``, ``app/lib/util.py``; ``src="*.py"`` gives ``a.py``, ``b.py``;
  ``src="conf/*.ini"`` gives ``conf/a.ini`` (not ``conf`` itself); ``src="."`` gives everything
  in the context (the context directory itself is no member).
- Names are relative, with no ``.`` or ``..`` components and no empty ones; each appears once,
  members in strictly ascending order of name (by code point). A directory's header name ends
  in ``/``, as tar writes it; below, names are without it.
- Types: regular files, directories and symbolic links only (no hard links, devices or
  fifos; the SDK leaves those out). A symlink keeps its target verbatim, which may point
  anywhere, unless the step asked to resolve symlinks, in which case the upload holds what
  they point to. Extract uploads inside the build sandbox, never as root on the host.
- Mode: each file's permission bits (``0o7777``); owner uid/gid 0 without names (the COPY's
  owner argument decides who owns the copies); mtime the local file's (not hashed).

Where the files go (the daemon, as E2B's builder): the part of ``src`` before its first
component with a glob character (``*``, ``?``, ``[``) names the source in the extracted tree
(``.`` for the whole of it); a file is copied to ``dest`` (into it when ``dest`` ends with
``/``), a directory's contents into ``dest``.

The hash (``filesHash``): SHA-256, hex, of::

    b"firebox-files-v1\\0" + src + b"\\0" + dest + b"\\0"
    then, for each member in order:
        name + b"\\0" + kind + b" " + mode in octal + b" " + size in decimal + b"\\0"
        + (a file: its bytes | a symlink: its target + b"\\0" | a directory: nothing)

with ``kind`` ``f``, ``d`` or ``l``, ``size`` 0 for all but files, text as UTF-8.
It changes when a file's path, mode, content or link target changes, or the step's ``src``
or ``dest`` does; not with owners or times, so checkouts of the same files share the cache.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Literal

from firebox.recipes.errors import RecipeError

HASH_PREFIX = b"firebox-files-v1\0"
CHUNK = 1 << 20
_KINDS = {"file": "f", "dir": "d", "symlink": "l"}


@dataclass(frozen=True)
class FileEntry:
    """One member of an upload."""

    name: str  # relative to the build context, as in the tar
    kind: Literal["file", "dir", "symlink"]
    mode: int  # permission bits
    size: int = 0  # files only
    target: str = ""  # symlinks only
    mtime: float = 0.0  # carried in the tar, not hashed


class FilesHash:
    """The ``filesHash`` of one COPY step, fed member by member in the upload's order."""

    def __init__(self, src: str, dest: str) -> None:
        self._sha = hashlib.sha256(HASH_PREFIX + _utf8(src) + b"\0" + _utf8(dest) + b"\0")
        self._last: str | None = None

    def add(self, entry: FileEntry) -> None:
        """Starts a member; a file's bytes follow with ``update``."""
        check_member_name(entry.name)
        if self._last is not None and entry.name <= self._last:
            raise RecipeError(
                f"upload member {entry.name!r} comes after {self._last!r}: members must be "
                "unique and in ascending order of name"
            )
        self._last = entry.name
        size = entry.size if entry.kind == "file" else 0
        header = f"{entry.name}\0{_KINDS[entry.kind]} {entry.mode & 0o7777:o} {size}\0"
        self._sha.update(_utf8(header))
        if entry.kind == "symlink":
            self._sha.update(_utf8(entry.target) + b"\0")

    def update(self, data: bytes) -> None:
        self._sha.update(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def check_member_name(name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RecipeError(
            f"upload member {name!r} is not a plain relative path (no leading '/', no '.', "
            "'..' or empty components)"
        )


def write_tar(out: IO[bytes], src: str, dest: str, items: Iterable[tuple[FileEntry, str]]) -> str:
    """Writes the upload of ``items`` (each member with the local path to read it from) to
    ``out`` and returns the hash of what it wrote, which differs from the hash computed before
    only if the files changed in between."""
    digest = FilesHash(src, dest)
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for entry, path in items:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.mtime = entry.mode & 0o7777, int(entry.mtime)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.kind != "file":
                info.type = tarfile.DIRTYPE if entry.kind == "dir" else tarfile.SYMTYPE
                info.linkname = entry.target
                digest.add(entry)
                tar.addfile(info)
                continue
            with open(path, "rb") as f:
                # the size read now, not at hashing time: the tar must hold what it says
                info.size = os.fstat(f.fileno()).st_size
                digest.add(FileEntry(entry.name, "file", entry.mode, info.size))
                tar.addfile(info, _Tee(f, digest))
    return digest.hexdigest()


def hash_tar(upload: IO[bytes], src: str, dest: str) -> str:
    """The hash of an upload (a seekable file), for the daemon to compare with the step's
    ``filesHash``; raises ``RecipeError`` if the upload is not in the format above."""
    digest = FilesHash(src, dest)
    try:
        with tarfile.open(fileobj=upload, mode="r:gz") as tar:
            for member in tar:
                entry = _entry(member)
                digest.add(entry)
                if entry.kind == "file":
                    data = tar.extractfile(member)
                    assert data is not None  # a regular file always has data
                    while chunk := data.read(CHUNK):
                        digest.update(chunk)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise RecipeError(f"the upload is not a gzip'd tar ({e}); upload it again") from None
    return digest.hexdigest()


def _entry(member: tarfile.TarInfo) -> FileEntry:
    mode = member.mode & 0o7777
    if member.isreg():
        return FileEntry(member.name, "file", mode, member.size)
    if member.isdir():
        return FileEntry(member.name, "dir", mode)
    if member.issym():
        return FileEntry(member.name, "symlink", mode, target=member.linkname)
    raise RecipeError(
        f"upload member {member.name!r} is neither a file, a directory nor a symlink; "
        "uploads hold only those"
    )


class _Tee:
    """A file read by tarfile that feeds the hash on the way."""

    def __init__(self, f: IO[bytes], digest: FilesHash) -> None:
        self._f, self._digest = f, digest

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._digest.update(data)
        return data


def _utf8(text: str) -> bytes:
    # surrogateescape: a file name that is not UTF-8 still hashes (as its own bytes)
    return text.encode("utf-8", "surrogateescape")
