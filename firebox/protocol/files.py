"""File messages. Paths are resolved inside the sandbox against the user's home; permissions are
those of ``user``. A path is never interpreted on the host."""

from __future__ import annotations

from firebox.protocol.messages import Message
from firebox.protocol.records import dataclass


@dataclass(slots=True)
class AtPath(Message):
    """What every request on one path has: the path, and whose permissions it is used with."""

    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileRead(AtPath):
    """Replies: ``Data`` frames with the content, then ``Result`` whose value is the size."""

    T = "file.read"


@dataclass(slots=True)
class FileWrite(AtPath):
    """The daemon then sends ``Data`` frames and ``End``; the agent replies with ``Result``
    whose value is the written file's ``EntryInfo``. Parent directories are created.
    ``metadata`` replaces the file's E2B metadata (``user.e2b.*`` extended attributes)."""

    T = "file.write"
    metadata: dict[str, str] | None = None


@dataclass(slots=True)
class FileList(AtPath):
    """Result value: list of ``EntryInfo`` dicts. ``depth`` 1 lists the directory itself."""

    T = "file.list"
    depth: int = 1


@dataclass(slots=True)
class FileStat(AtPath):
    """Result value: ``EntryInfo`` dict; error ``not_found`` when it does not exist."""

    T = "file.stat"


@dataclass(slots=True)
class FileRemove(AtPath):
    """Removes a file or a whole directory tree; a path that does not exist is no error."""

    T = "file.remove"


@dataclass(slots=True)
class FileRename(Message):
    """Result value: the new ``EntryInfo``."""

    T = "file.rename"
    old_path: str = ""
    new_path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileMakeDir(AtPath):
    """Result value: true when created, false when it already existed (parents are made)."""

    T = "file.mkdir"


@dataclass(slots=True)
class WatchStart(AtPath):
    """Watch a directory: ``WatchStarted``, then ``WatchEvent`` frames (each costs a credit)
    until ``Cancel``, or until the directory itself is removed; then ``Result``. Errors (missing
    directory) come as ``Error`` instead of ``WatchStarted``; a watch that falls so far behind
    that the kernel dropped events ends with ``Error`` code ``busy``."""

    T = "watch.start"
    recursive: bool = False


@dataclass(slots=True)
class WatchStarted(Message):
    """First reply to ``WatchStart``: the watch is in place, so changes made from now on are
    reported (a caller can watch, then act, without a race)."""

    T = "watch.started"


@dataclass(slots=True)
class WatchEvent(Message):
    """``type`` is one of create, write, remove, rename, chmod; ``name`` is relative to the
    watched directory. ``write`` means a file opened for writing was closed (one event per
    write session, not one per ``write()`` call); a rename reports the old and the new name."""

    T = "watch.event"
    type: str = ""
    name: str = ""


@dataclass(slots=True)
class EntryInfo:
    name: str
    path: str
    type: str  # "file" | "dir" | "other"; a symlink: its target's, "symlink" if dangling
    size: int
    mode: int
    permissions: str  # with the type character, as ls shows it: "-rw-r--r--"
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None = None  # resolved, absolute
    metadata: dict[str, str] | None = None  # E2B's file metadata, when the file has any
