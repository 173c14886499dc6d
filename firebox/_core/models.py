"""The SDK's value types, shared by the sync and the async API.

Plain dataclasses and enums, named and shaped like E2B's so that code moves over unchanged.
They are built from daemon answers by ``firebox._core.responses``, never by hand-parsing
elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import IO, Any, TypeVar

T = TypeVar("T")

# A callback for output or events. Its return value is ignored; in the async SDK it may also be
# a coroutine function, whose result is awaited before the next chunk is read.
OutputHandler = Callable[[T], object]


@dataclass
class SandboxInfo:
    """A sandbox as the daemon describes it (``GET /sandboxes/{id}``)."""

    sandbox_id: str
    template: str
    metadata: dict[str, str]
    started_at: datetime
    end_at: datetime  # when the sandbox's timeout expires and it is killed
    state: str  # "running" or "paused"
    backend: str  # "microvm" or "jail"
    cpu_count: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None  # the writable disk: home, /tmp and /root share it
    processes: int | None = None
    open_files: int | None = None  # per process
    output_mb: int | None = None  # printed output forwarded per command or cell
    allow_internet_access: bool = False
    # allow_out, deny_out; allow_public_traffic (its ports answer without the traffic token)
    network: dict[str, Any] = field(default_factory=dict)
    paused_at: datetime | None = None
    # what a pause keeps: "disk" (memory on disk: survives a host reboot), "memory" (frozen in
    # place: lost at a reboot), None (its backend cannot pause)
    pause_keeps: str | None = None
    # {"on_timeout": "kill"|"pause", "auto_resume": bool}
    lifecycle: dict[str, Any] = field(default_factory=dict)
    # its ports are <port>-<sandbox id>.<domain>; the token opens them (Sandbox.get_host)
    domain: str = ""
    traffic_access_token: str = ""

    @property
    def template_id(self) -> str:
        """E2B's name for ``template``."""
        return self.template


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot of a sandbox (``create_snapshot``): sandboxes start from it with
    ``Sandbox.create(snapshot=...)``."""

    snapshot_id: str
    name: str | None
    sandbox_id: str  # the sandbox it was taken from
    template: str
    backend: str
    # "memory+disk": a sandbox made from it starts where this one was, processes running;
    # "disk": its files only (a jail here: processes start afresh)
    keeps: str
    created_at: datetime
    size_bytes: int


@dataclass(frozen=True)
class SandboxQuery:
    """What ``Sandbox.list(query=...)`` keeps, as E2B's: sandboxes carrying all of
    ``metadata``'s pairs, in one of ``state`` ("running", "paused"), started at or after
    ``started_after``, made from ``template``."""

    metadata: dict[str, str] | None = None
    state: list[str] | None = None
    started_after: datetime | None = None
    template: str | None = None


@dataclass
class SandboxMetrics:
    """A sandbox's CPU, memory and disk at one time (``get_metrics``), as E2B's. The daemon
    samples every 5 s and keeps an hour; a figure the host cannot measure is None."""

    timestamp: datetime
    cpu_count: float  # its CPU limit
    cpu_used_pct: float | None  # of that limit, since the sample before
    mem_used: int  # bytes it holds, less file cache the kernel would drop first
    mem_total: int | None  # what it may hold before an OOM kill
    mem_cache: int  # page cache charged to it
    disk_used: int | None  # its writable disk: home, /tmp and /root
    disk_total: int | None


@dataclass
class CommandResult:
    """The outcome of a finished command."""

    stdout: str
    stderr: str
    exit_code: int
    # a limit the command hit ("output_truncated": it wrote more than the daemon forwards, and
    # the rest of its output was discarded), or why the agent could not finish it
    error: str | None = None


@dataclass
class ProcessInfo:
    """A command running in a sandbox (``commands.list()``)."""

    pid: int
    tag: str | None
    cmd: str | None  # the shell command line; None when the command was started from argv
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    user: str | None = None


class FileType(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass
class EntryInfo:
    """A file, directory or link in a sandbox."""

    name: str
    type: FileType
    path: str
    size: int
    mode: int
    permissions: str  # "-rwxr-xr-x"
    owner: str
    group: str
    modified_time: datetime
    symlink_target: str | None = None
    metadata: dict[str, str] | None = None  # as written with files.write(metadata=)


@dataclass
class WriteEntry:
    """One file for ``files.write_files``: where it goes and what it holds."""

    path: str
    data: str | bytes | IO[bytes] | IO[str]


class FilesystemEventType(Enum):
    CREATE = "create"
    WRITE = "write"
    REMOVE = "remove"
    RENAME = "rename"
    CHMOD = "chmod"


@dataclass
class FilesystemEvent:
    """A change seen by a directory watcher; ``name`` is relative to the watched directory."""

    name: str
    type: FilesystemEventType


@dataclass(frozen=True)
class CommandStart:
    """NDJSON ``start``: the command runs, as process ``pid``."""

    pid: int


@dataclass(frozen=True)
class CommandOutput:
    """NDJSON ``stdout`` / ``stderr``: a chunk of output, UTF-8 decoded by the daemon."""

    stream: str  # "stdout" or "stderr"
    data: str


@dataclass(frozen=True)
class CommandEnd:
    """NDJSON ``end``: the command is over.

    ``error`` is None, "timeout", another limit the daemon names (e.g. "memory_limit"), or an API
    error code when the agent failed (exit_code -1); ``message`` explains it.
    """

    exit_code: int
    error: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class CommandPty:
    """NDJSON ``pty``: a chunk of a terminal session's screen, as the terminal's bytes."""

    data: bytes


@dataclass(frozen=True)
class PtySize:
    """A terminal's size (E2B's ``PtySize``), in character cells."""

    rows: int
    cols: int


CommandEvent = CommandStart | CommandOutput | CommandPty | CommandEnd

# What iterating a command handle yields, as E2B's handles do: ``(stdout, None, None)``,
# ``(None, stderr, None)``, or ``(None, None, pty)`` (a terminal session's bytes).
CommandOutputTriple = tuple[str, None, None] | tuple[None, str, None] | tuple[None, None, bytes]
