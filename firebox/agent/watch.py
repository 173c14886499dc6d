"""Directory watches: inotify events as ``watch.event`` frames, until the daemon cancels.

Event mapping (the ``type`` of ``protocol.WatchEvent``):

- IN_CREATE → ``create``; IN_DELETE → ``remove``; IN_ATTRIB → ``chmod``;
- IN_MOVED_FROM and IN_MOVED_TO → ``rename`` (old name, then new name);
- IN_CLOSE_WRITE → ``write``: one event when a writer closes the file, not one per write()
  (IN_MODIFY would report a 50 MB copy as thousands of events). A process that keeps a file
  open and appends to it is therefore reported when it closes the file.

The files API's uploads (files.py) write a hidden temporary file and rename it into place;
watchers are shown what a plain write shows them instead: the temporary file's own events are
left out, and its rename into place is reported as a ``write`` of the target (a new target was
created empty first, so that shows as ``create``).

Recursive watches add a watch for every subdirectory, and for directories created or moved in
later. A directory created under a watched one may fill before its own watch is in place
(``mkdir -p a/b``), so its entries are reported as ``create`` right after the watch is added;
in that short window an entry can be reported twice. Symlinks to directories are not followed.
Each event costs a credit: a watch whose reader stalls makes the kernel queue fill up, and
when the kernel drops events (IN_Q_OVERFLOW) the watch ends with ``busy`` rather than lying.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import stat
import struct
import threading

from firebox import protocol
from firebox.agent import privs, users
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail, from_os, log

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = (
    IN_CREATE
    | IN_CLOSE_WRITE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_UPLOAD_TEMP = re.compile(r"\..+\.[0-9a-f]{12}\.upload")  # files.py's temporary names
UPLOADS_IN_FLIGHT = 1024  # renames of temporary files awaiting their other half, at most
POLL_MS = 500  # the longest a cancel can go unnoticed if the wake-up pipe were missed

_libc = privs.libc
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class _Tree:
    """The watches of one request: watch descriptor ↔ directory relative to the root."""

    def __init__(self, ifd: int, root: str, recursive: bool) -> None:
        self.ifd = ifd
        self.root = root
        self.recursive = recursive
        self.rel: dict[int, str] = {}
        self.wd: dict[str, int] = {}
        self.root_gone = False
        self.uploads: list[int] = []  # cookies of temporary files moved away, oldest first

    def add(self, rel: str, found: list[tuple[str, str]] | None = None) -> None:
        """Watch directory ``rel`` (and, if recursive, all below it); new entries go to
        ``found`` as creates when the directory is new to us."""
        path = os.path.join(self.root, rel) if rel else self.root
        flags = MASK | (IN_DONT_FOLLOW if rel else 0)
        wd = _libc.inotify_add_watch(self.ifd, os.fsencode(path), flags)
        if wd < 0:
            err = ctypes.get_errno()
            if not rel:
                raise _watch_error(OSError(err, os.strerror(err)), path)
            log(f"cannot watch {path}: {os.strerror(err)}")
            return
        self.rel[wd] = rel
        self.wd[rel] = wd
        if not self.recursive and found is None:
            return
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            return
        for e in entries:
            child = os.path.join(rel, e.name) if rel else e.name
            if found is not None:
                found.append(("create", child))
            if self.recursive and e.is_dir(follow_symlinks=False):
                self.add(child, found)

    def drop(self, rel: str) -> None:
        """Stop watching ``rel`` and below (it moved out of view or away)."""
        for r in [r for r in self.wd if r == rel or r.startswith(rel + "/")]:
            wd = self.wd.pop(r)
            self.rel.pop(wd, None)
            _libc.inotify_rm_watch(self.ifd, wd)

    def handle(self, buf: bytes) -> list[tuple[str, str]]:
        """The (type, name) events in one read of the inotify fd."""
        out: list[tuple[str, str]] = []
        pos = 0
        while pos + _EVENT.size <= len(buf):
            wd, mask, cookie, length = _EVENT.unpack_from(buf, pos)
            raw = buf[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                raise Fail(
                    "busy",
                    f"too many changes under {self.root}: the kernel dropped "
                    "events; watch a smaller tree or read events faster",
                )
            base = self.rel.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                self.rel.pop(wd, None)
                self.wd.pop(base, None)
                self.root_gone = self.root_gone or base == ""
                continue
            if not raw:
                continue  # an event on a watched directory itself: its parent reports it
            name = os.fsdecode(raw)
            rel = os.path.join(base, name) if base else name
            if _UPLOAD_TEMP.fullmatch(name) and not mask & IN_ISDIR:
                if mask & IN_MOVED_FROM:
                    self.uploads = [*self.uploads[-UPLOADS_IN_FLIGHT + 1 :], cookie]
                continue
            if mask & IN_MOVED_TO and cookie in self.uploads:
                self.uploads.remove(cookie)
                out.append(("write", rel))
                continue
            subdir = self.recursive and mask & IN_ISDIR
            if mask & IN_CREATE:
                out.append(("create", rel))
                if subdir:
                    self.add(rel, out)
            if mask & IN_CLOSE_WRITE:
                out.append(("write", rel))
            if mask & IN_ATTRIB:
                out.append(("chmod", rel))
            if mask & IN_DELETE:
                out.append(("remove", rel))
            if mask & IN_MOVED_FROM:
                out.append(("rename", rel))
                if subdir:
                    self.drop(rel)
            if mask & IN_MOVED_TO:
                out.append(("rename", rel))
                if subdir:
                    self.add(rel)
        return out


def _watch_error(e: OSError, path: str) -> Fail:
    if e.errno in (errno.ENOSPC, errno.EMFILE):  # inotify's limits, not the disk
        return Fail(
            "busy",
            f"cannot watch {path}: the sandbox's inotify limits are reached "
            "(fs.inotify.max_user_watches / max_user_instances)",
        )
    return from_os(e, path)


def watch(stream: Stream, msg: protocol.WatchStart, payload: bytes) -> None:
    user = users.lookup(msg.user)
    path = users.resolve(user, msg.path)
    ifd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if ifd < 0:
        err = ctypes.get_errno()
        raise _watch_error(OSError(err, os.strerror(err)), path)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    lock = threading.Lock()
    closed = False

    def wake() -> None:
        with lock:
            if not closed:
                os.write(wake_w, b"\0")

    stream.on_cancel(wake)
    try:
        # The whole watch acts as the user: adding watches and scanning new directories.
        with privs.as_user(user.uid, user.gid, user.name):
            try:
                if not stat.S_ISDIR(os.stat(path).st_mode):
                    raise Fail("not_a_directory", f"{path}: not a directory")
            except OSError as e:
                raise from_os(e, path, user.name) from None
            tree = _Tree(ifd, path, bool(msg.recursive))
            tree.add("")
            stream.send(protocol.WatchStarted())
            _loop(stream, tree, wake_r)
    finally:
        with lock:
            closed = True
            for fd in (ifd, wake_r, wake_w):
                os.close(fd)


def _loop(stream: Stream, tree: _Tree, wake_r: int) -> None:
    poller = select.poll()
    poller.register(tree.ifd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while not (stream.cancelled or stream.done or tree.root_gone):
        if not poller.poll(POLL_MS):
            continue
        try:
            buf = os.read(tree.ifd, 64 * 1024)
        except BlockingIOError:
            continue  # the wake-up pipe: the loop condition sees the cancel
        for kind, name in tree.handle(buf):
            if not stream.send_counted(protocol.WatchEvent(type=kind, name=protocol.display(name))):
                return
