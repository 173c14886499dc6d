"""A built template's tree as an OCI image (distribute.py pushes it): one layout, one image of
one layer, the tree's files, written here without a registry client or a layer tool.

The layer is a gzip'd tar written in name order (each directory before its contents) with
whole-second times and no names for owners, so that the same tree makes the same layer, which
a registry then keeps once. It keeps what a sandbox sees of the tree: directories, files,
symlinks and FIFOs; hard links within the tree; modes (set-id bits too, though builds strip
them from what they make); numeric owners (the tree's own /etc/passwd names them); modification
times to the second; and extended attributes (``SCHILY.xattr.*``, which umoci applies), but
overlayfs's own (``trusted.overlay.*``, spent by flattening) and file capabilities (never kept
in a template: images/layers.py). Device nodes and sockets are left out: a build sandbox cannot
make devices (the /dev that debootstrap leaves in firebox's own images is unused: every sandbox
gets a /dev of its own), and a socket is nothing without its process.

The image's config repeats the template's environment, workdir, user and start command for
whoever reads the registry, and names the tree (``io.firebox.template.tree``), which a pull
checks; nodes start the template from its record, which stays the one truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from firebox.images.oci_ref import LAYOUT_TAG

if TYPE_CHECKING:
    from firebox.server.templates.catalog import TemplateRecord

GZIP_LEVEL = 1  # a third of the tree's size, at about the speed the tar is written
LABEL = "io.firebox.template"
_NOT_KEPT = ("trusted.overlay.", "security.capability")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class _Blob:
    """A layer's bytes on their way to its file: the tar hashed before compression (its diff
    id, which the config lists) and after (its digest, which names the blob)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.diff_id = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.size = 0
        self._gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # gzip, its mtime 0

    def write(self, data: bytes) -> int:
        self.diff_id.update(data)
        self._put(self._gzip.compress(data))
        return len(data)

    def finish(self) -> None:
        self._put(self._gzip.flush())

    def _put(self, data: bytes) -> None:
        self.digest.update(data)
        self.out.write(data)
        self.size += len(data)


def walk(top: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``top`` (relative, not ``top`` itself) with its lstat, each directory
    before its contents and each directory's entries by name: the same tree, the same order."""
    todo = [""]
    while todo:
        rel = todo.pop()
        subdirs = []
        for name in sorted(os.listdir(top / rel if rel else top)):
            path = f"{rel}/{name}" if rel else name
            st = os.lstat(top / path)
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(path)
        todo.extend(reversed(subdirs))


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a file system without them
        return {}
    found = {}
    for name in sorted(names):
        if name.startswith(_NOT_KEPT):
            continue
        with contextlib.suppress(OSError):
            value = os.getxattr(path, name, follow_symlinks=False)
            # tarfile writes a value that is not UTF-8 back as its bytes (hdrcharset=BINARY)
            found[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return found


def _member(
    top: Path, rel: str, st: os.stat_result, links: dict[tuple[int, int], str]
) -> tarfile.TarInfo | None:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
    info.mtime = int(st.st_mtime)  # a float would cost every entry a pax header
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1:  # hard links: the first path has the data, the others name it
            first = links.setdefault((st.st_dev, st.st_ino), rel)
            if first != rel:
                info.type, info.linkname = tarfile.LNKTYPE, first
                return info
        info.size = st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(top / rel)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        return None  # a device node or a socket: see the module's docstring
    info.pax_headers = _xattrs(top / rel)
    return info


def write_layer(tree: Path, out: IO[bytes]) -> tuple[str, str, int]:
    """``tree`` as a gzip'd tar layer into ``out``: its digest, diff id and size."""
    blob = _Blob(out)
    links: dict[tuple[int, int], str] = {}
    # a stream ("w|"): tarfile only writes to the blob (typeshed asks for a whole file)
    with tarfile.open(fileobj=blob, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, st in walk(tree):
            info = _member(tree, rel, st, links)
            if info is None:
                continue
            if info.isreg():
                # the tree is the build's, done and unchanging; never a link followed
                fd = os.open(tree / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    blob.finish()
    return f"sha256:{blob.digest.hexdigest()}", f"sha256:{blob.diff_id.hexdigest()}", blob.size


def image_config(record: TemplateRecord, diff_id: str, arch: str) -> dict[str, Any]:
    created = datetime.fromtimestamp(record.built_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = record.start
    config: dict[str, Any] = {
        "Env": [f"{k}={v}" for k, v in start.envs.items()],
        "User": start.user,
        "Labels": {
            f"{LABEL}.name": record.name,
            f"{LABEL}.build-id": record.build_id,
            f"{LABEL}.tree": Path(record.rootfs).parent.name,  # checked by the pull
        },
    }
    if start.workdir:
        config["WorkingDir"] = start.workdir
    if start.start_cmd:
        config["Cmd"] = ["/bin/sh", "-c", start.start_cmd]
    return {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created": created, "created_by": f"firebox template build {record.build_id}"}
        ],
    }


def _put_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def write_layout(tree: Path, layout: Path, record: TemplateRecord, arch: str) -> int:
    """An OCI image layout at ``layout`` holding ``tree`` as the image ``LAYOUT_TAG``; the
    size of its layer."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    with tempfile.NamedTemporaryFile(dir=blobs, delete=False) as out:
        digest, diff_id, size = write_layer(tree, out)
    os.rename(out.name, blobs / digest.split(":", 1)[1])
    layer = {"mediaType": LAYER, "digest": digest, "size": size}
    config = _put_blob(layout, json.dumps(image_config(record, diff_id, arch)).encode(), CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}
    entry = _put_blob(layout, json.dumps(manifest).encode(), MANIFEST)
    entry["annotations"] = {"org.opencontainers.image.ref.name": LAYOUT_TAG}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    return size
