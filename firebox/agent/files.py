"""The files API: every operation runs with the filesystem identity of the requested user.

``privs.as_user`` switches the handler thread's fsuid/fsgid for the duration of each filesystem
call, so the kernel checks permissions (and assigns ownership of new files) exactly as for the
user's own processes; the agent's capabilities do not apply while it acts as a non-root user.

Uploads go to a temporary file beside the target and are renamed over it only once complete,
so an interrupted or failed upload never leaves a half-written file in the target's place.
What the files report follows E2B's envd, whose SDKs read it: permissions with the type
character (``-rw-r--r--``), a symlink as its target's type, a missing path's removal as done.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from firebox import protocol
from firebox.agent import privs, users
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, from_os

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import Any

MAX_ENTRIES = 20_000  # a listing larger than this is refused: one result must fit a header

_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink"}
META_XATTR = "user.e2b."  # E2B's namespace for file metadata, kept for its SDKs to find
UPLOAD_SUFFIX = ".upload"  # temporary upload files: .<name>.<12 hex>.upload (watch.py hides them)


def _as(user: users.User) -> Any:
    return privs.as_user(user.uid, user.gid, user.name)


def entry_info(
    path: str, names: tuple[dict[int, str], dict[int, str]], st: os.stat_result | None = None
) -> dict[str, Any]:
    """``protocol.EntryInfo`` of ``path``, as E2B's envd gives it: a symlink reports its
    target's type (``symlink`` only when the target is missing) and its resolved target."""
    if st is None:
        st = os.lstat(path)
    target = None
    if stat.S_ISLNK(st.st_mode):
        target = protocol.display(os.path.realpath(path))
        with contextlib.suppress(OSError):  # a dangling link: reported as the link itself
            st = os.stat(path)
    kind = _TYPES.get(stat.S_IFMT(st.st_mode), "other")
    info = protocol.EntryInfo(
        name=protocol.display(os.path.basename(path) or path),
        path=protocol.display(path),
        type=kind,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        permissions=stat.filemode(st.st_mode),
        owner=names[0].get(st.st_uid, str(st.st_uid)),
        group=names[1].get(st.st_gid, str(st.st_gid)),
        modified_time=st.st_mtime,
        symlink_target=target,
        metadata=_metadata(path) if kind in ("file", "dir") else None,
    )
    return protocol.as_dict(info)


def _metadata(path: str) -> dict[str, str] | None:
    """The file's ``user.e2b.*`` extended attributes (E2B's file metadata), prefix dropped."""
    try:
        found = {
            name[len(META_XATTR) :]: os.getxattr(path, name).decode("utf-8", "replace")
            for name in os.listxattr(path)
            if name.startswith(META_XATTR)
        }
    except OSError:
        return None  # no xattrs on this filesystem, or the file went away meanwhile
    return found or None


def _set_metadata(fd: int, path: str, metadata: dict[str, str]) -> None:
    try:
        for key, value in metadata.items():
            os.setxattr(fd, META_XATTR + key, value.encode())
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            where = "under /home or /tmp"
            if os.environ.get("FIREBOX_BACKEND") == "gvisor":  # its host-backed files have none
                where = "under /dev/shm (gVisor keeps extended attributes only in memory)"
            raise Fail(
                "invalid",
                f"{path}: this filesystem cannot hold file metadata (extended attributes); "
                f"write the file without metadata or {where}",
            ) from None
        if e.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
            raise Fail("invalid", f"{path}: the metadata is too large for the file") from None
        raise


def read(stream: Stream, msg: protocol.FileRead, payload: bytes) -> int | None:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    try:
        with _as(user):
            # O_NONBLOCK: opening a FIFO must not hang the request; reads block again below.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise from_os(e, path, user.name) from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise Fail("is_a_directory", f"{path}: is a directory; list it instead")
        os.set_blocking(fd, True)
        size = 0
        while True:
            data = os.read(fd, protocol.CHUNK)
            if not data:
                return size
            if not stream.send_counted(protocol.Data(), data):
                return None  # cancelled: the channel is already closed
            size += len(data)
    except OSError as e:
        raise from_os(e, path, user.name) from None
    finally:
        os.close(fd)


def write(stream: Stream, msg: protocol.FileWrite, payload: bytes) -> dict[str, Any] | None:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    metadata = msg.metadata if isinstance(msg.metadata, dict) else {}
    with _as(user):
        fd, tmp, target, placeholder = _create_temp(path, user)
    try:
        try:
            if metadata:
                _set_metadata(fd, path, {str(k): str(v) for k, v in metadata.items()})
            while True:
                item = stream.receive()
                if item is None:
                    raise _Cancelled
                frame, data = item
                if isinstance(frame, protocol.End):
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # Credit only once the bytes are on their way to disk: memory stays bounded.
                stream.grant(1)
        finally:
            os.close(fd)
        with _as(user):
            os.rename(tmp, target)
            return entry_info(target, users.id_names())
    except _Cancelled:
        _discard(tmp, user, target, placeholder)
        return None
    except OSError as e:
        _discard(tmp, user, target, placeholder)
        raise from_os(e, path, user.name) from None
    except BaseException:
        _discard(tmp, user, target, placeholder)
        raise


class _Cancelled(Exception):
    pass


def _create_temp(path: str, user: users.User) -> tuple[int, str, str, int | None]:
    """Open a new temporary file next to the upload's target: (fd, temp path, target, the
    inode of the empty placeholder made for a new target). A new target is created empty
    first so that watchers see what a plain write shows them (create, then write), not the
    temporary file (watch.py hides it and reports its rename into place as a write)."""
    try:
        # Write through a symlink, as `cp` or a shell redirect would, rather than replace it.
        target = os.path.realpath(path) if os.path.islink(path) else path
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        try:
            existing: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise Fail("is_a_directory", f"{path}: is a directory")
        placeholder = None
        if existing is None:
            # read-only: closing it must not look like a finished write to the watchers
            pfd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            placeholder = os.fstat(pfd).st_ino
            os.close(pfd)
        name = f".{os.path.basename(target)}.{os.urandom(6).hex()}{UPLOAD_SUFFIX}"
        tmp = os.path.join(parent, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError as e:  # makedirs: a file where a parent directory should be
        raise Fail("not_a_directory", f"{path}: {e.filename} is not a directory") from None
    except OSError as e:
        raise from_os(e, path, user.name) from None
    if existing is not None:
        # Replacing a file keeps what its owner set: an executable script stays executable,
        # and root overwriting the user's file leaves it the user's.
        try:
            os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
            if (existing.st_uid, existing.st_gid) != (user.uid, user.gid):
                os.fchown(fd, existing.st_uid, existing.st_gid)
        except OSError:
            pass  # not the owner's to give away: the new file stays the writer's
    return fd, tmp, target, placeholder


def _discard(tmp: str, user: users.User, target: str, placeholder: int | None) -> None:
    """Remove what a failed upload made: its temporary file, and the target's placeholder
    unless another upload has put a file there meanwhile."""
    with contextlib.suppress(OSError, Fail), _as(user):
        os.unlink(tmp)
    if placeholder is None:
        return
    with contextlib.suppress(OSError, Fail), _as(user):
        if os.lstat(target).st_ino == placeholder:
            os.unlink(target)


def list_(stream: Stream, msg: protocol.FileList, payload: bytes) -> list[dict[str, Any]]:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    depth = msg.depth
    if not isinstance(depth, int) or depth < 1:
        raise Fail("invalid", f"depth must be 1 or more, not {depth!r}")
    names = users.id_names()
    out: list[dict[str, Any]] = []

    def walk(directory: str, level: int) -> None:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            if level == 1:
                raise
            return  # an unreadable subdirectory is listed, just not entered
        for e in entries:
            if len(out) >= MAX_ENTRIES:
                raise Fail(
                    "invalid",
                    f"{path} holds more than {MAX_ENTRIES} entries at depth "
                    f"{depth}; list with a smaller depth",
                )
            try:
                out.append(entry_info(e.path, names, e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # removed while we listed
            if level < depth and e.is_dir(follow_symlinks=False):
                walk(e.path, level + 1)

    try:
        with _as(user):
            if not stat.S_ISDIR(os.stat(path).st_mode):
                raise Fail("not_a_directory", f"{path}: not a directory")
            walk(path, 1)
    except OSError as e:
        raise from_os(e, path, user.name) from None
    return out


def stat_(stream: Stream, msg: protocol.FileStat, payload: bytes) -> dict[str, Any]:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    try:
        with _as(user):
            return entry_info(path, users.id_names())
    except OSError as e:
        raise from_os(e, path, user.name) from None


def remove(stream: Stream, msg: protocol.FileRemove, payload: bytes) -> None:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    if path == "/":
        raise Fail("invalid", "refusing to remove /")
    try:
        with _as(user):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return  # already gone: E2B's envd removes a missing path without complaint
            if stat.S_ISDIR(st.st_mode):
                import shutil  # only here: most agents never remove a tree

                shutil.rmtree(path)
            else:
                os.unlink(path)
    except OSError as e:
        raise from_os(e, path, user.name) from None


def rename(stream: Stream, msg: protocol.FileRename, payload: bytes) -> dict[str, Any]:
    user = users.lookup(msg.user)
    old = users.resolve(user, msg.old_path)
    new = users.resolve(user, msg.new_path)
    try:
        with _as(user):
            try:
                os.rename(old, new)
            except OSError as e:
                if e.errno != errno.EXDEV:  # /tmp and the home are separate filesystems
                    raise
                import shutil

                shutil.move(old, new)
            return entry_info(new, users.id_names())
    except OSError as e:
        raise from_os(e, f"{old} -> {new}", user.name) from None


def make_dir(stream: Stream, msg: protocol.FileMakeDir, payload: bytes) -> bool:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    try:
        with _as(user):
            try:
                os.makedirs(path)
                return True
            except FileExistsError:
                if os.path.isdir(path):
                    return False
                raise Fail("not_a_directory", f"{path}: a file is in the way") from None
    except OSError as e:
        raise from_os(e, path, user.name) from None
