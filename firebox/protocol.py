"""The one definition of the channel between the daemon and the in-sandbox agent.

Standard library only: this module is imported by the agent inside every sandbox and by the
daemon on the host. Nothing else may define message shapes.

Wire format
-----------
One byte stream (a socket pair in the jail, virtio-serial in a VM) carries frames::

    u32 channel | u32 payload length | u32 header length | header (UTF-8 JSON) | payload

All integers are big-endian. The header is a JSON object whose ``t`` field names the message
type; readers ignore fields they do not know (so a newer peer may add fields without a version
bump). The payload carries raw bytes (process output, file content) so data is never base64'd.

Channels multiplex many operations over the one stream. Channel 0 is the control channel
(``hello`` from the agent). Every other channel is opened by the daemon with a request message
and closed by exactly one final message from the agent: ``result`` or ``error``.

Flow control: every ``data``, ``watch.event``, ``code.result`` and ``code.error`` frame costs
the receiver one credit. A sender of such a stream starts with ``WINDOW`` credits and stops
when it has none; the receiver returns credits with ``credit`` frames as it consumes them.
This bounds memory on both sides no matter how fast a process writes, how busy a watched
directory is or how slowly an HTTP client reads; a peer that sends beyond its credit is broken
or hostile.
"""

from __future__ import annotations

import json
import struct

# The agent imports this module on every sandbox start, where ``typing`` and ``dataclasses``
# (which pulls in ``inspect``) cost over 10 ms of a ~20 ms budget. Type checkers see real
# dataclasses; at run time ``_record`` below builds the same __init__/__eq__/__repr__ cheaply.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass, field
    from typing import Any
else:

    def dataclass(cls=None, /, **_options):
        return _record if cls is None else _record(cls)

    def field(*, default_factory):
        return _Factory(default_factory)


PROTOCOL_VERSION = 1

FRAME_HEAD = struct.Struct(">III")
MAX_PAYLOAD = 1 << 20  # a data frame carries at most 1 MiB
# Headers carry whole requests and results: a long ``cmd`` script, a deep file listing. 8 MiB
# bounds what one frame can make a reader allocate while leaving room for both.
MAX_HEADER = 8 << 20
CHUNK = 256 * 1024  # what senders put in one data frame
WINDOW = 16  # data frames in flight per stream before the sender waits for credit
STREAM_LIMIT = 1 << 20  # asyncio StreamReader buffer limit suited to CHUNK-sized frames

CONTROL_CHANNEL = 0

# Seconds the agent gives a new interpreter to say ready (a python one under software emulation
# takes seconds), and a context's restart the killed cell to let go of the context: the
# daemon waits for these, and a margin, before it calls the agent unresponsive.
INTERPRETER_START_TIMEOUT = 60.0
CONTEXT_RESTART_WAIT = 20.0

# Error codes an agent may return; the daemon maps each to one HTTP status (server/errors.py).
ERROR_CODES = (
    "not_found",
    "exists",
    "not_a_directory",
    "is_a_directory",
    "permission_denied",
    "invalid",
    "no_space",
    "busy",
    "unavailable",
    "internal",
    # set by the daemon's side of the channel, never sent by an agent:
    "timeout",  # the agent did not answer in time
    "too_large",  # a request does not fit in one frame
)


_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Any) -> None:
        self.make = make


def _record(cls: Any) -> Any:
    """Run-time stand-in for ``@dataclass``: fields in annotation order, base classes first."""
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            fields[name] = klass.__dict__.get(name, fields.get(name, _MISSING))
    cls.__dataclass_fields__ = fields

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__} takes at most {len(fields)} positional arguments")
        for name, value in zip(fields, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got {name!r} twice")
            kwargs[name] = value
        for name, default in fields.items():
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is _MISSING:
                raise TypeError(f"{cls.__name__} is missing {name!r}")
            else:
                value = default.make() if isinstance(default, _Factory) else default
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{cls.__name__} got unexpected {', '.join(map(repr, kwargs))}")

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in fields)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields)
        return f"{cls.__name__}({inner})"

    cls.__init__, cls.__eq__, cls.__repr__, cls.__hash__ = __init__, __eq__, __repr__, None
    return cls


def display(name: str) -> str:
    """A file name as text for the wire: Linux names are bytes, and one that is not UTF-8
    (decoded by Python with surrogate escapes) gets U+FFFD where its bad bytes were, since
    JSON text and the API's clients need valid Unicode."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no file name decoding makes
        return name.encode("utf-8", "replace").decode("utf-8")


def as_dict(record: Any) -> dict[str, Any]:
    """A record's fields as a dict (shallow: values are JSON-ready already)."""
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


class ProtocolError(Exception):
    """The byte stream does not follow this module: the peer is broken or hostile."""


@dataclass(slots=True)
class Frame:
    channel: int
    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header.get("t", ""))


def encode_frame(channel: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return FRAME_HEAD.pack(channel, len(payload), len(head)) + head + payload


def decode_head(head: bytes | bytearray) -> tuple[int, int, int]:
    """(channel, payload length, header length) of a frame's first ``FRAME_HEAD.size`` bytes.

    For readers that read a frame in parts (head, then header, then payload) instead of
    feeding a ``FrameDecoder``; the limits are checked before anything is allocated.
    """
    channel, plen, hlen = FRAME_HEAD.unpack_from(head)
    if plen > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {plen} bytes exceeds {MAX_PAYLOAD}")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds {MAX_HEADER}")
    return channel, plen, hlen


def decode_header(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


class FrameDecoder:
    """Incremental decoder: feed bytes, take whole frames. No I/O, usable by both sides."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= FRAME_HEAD.size:
            channel, plen, hlen = decode_head(self._buf)
            end = FRAME_HEAD.size + hlen + plen
            if len(self._buf) < end:
                break
            header = decode_header(self._buf[FRAME_HEAD.size : FRAME_HEAD.size + hlen])
            payload = bytes(self._buf[FRAME_HEAD.size + hlen : end])
            del self._buf[:end]
            frames.append(Frame(channel, header, payload))
        return frames


# --- message shapes ---------------------------------------------------------------------------
#
# Each message is a dataclass; ``T`` is its wire type. ``to_header`` and ``from_header`` are the
# only conversions, and ``from_header`` drops unknown fields so old readers accept new writers.


@dataclass(slots=True)
class Message:
    T = ""

    def to_header(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.T}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> Any:
        known = {k: v for k, v in header.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as e:
            raise ProtocolError(f"bad {cls.T!r} message: {e}") from None


# control channel


@dataclass(slots=True)
class Hello(Message):
    """First frame the agent sends, on channel 0, once it serves requests."""

    T = "hello"
    version: int = PROTOCOL_VERSION
    agent_pid: int = 0
    backend: str = ""


@dataclass(slots=True)
class Ping(Message):
    T = "ping"


@dataclass(slots=True)
class Resume(Message):
    """Daemon → agent on channel 0, first thing after a VM is restored from its template's
    snapshot: every clone starts with the template's kernel RNG state, clock, hostname and
    machine id, so it takes fresh ones from the host. The agent answers with a new Hello."""

    T = "resume"
    entropy: str = ""  # hex: host randomness, mixed into the guest kernel's pool, then reseed
    time_ns: int = 0  # the host's wall clock
    hostname: str = ""
    machine_id: str = ""
    boot_id: str = ""  # what /proc/sys/kernel/random/boot_id shows inside


@dataclass(slots=True)
class Configure(Message):
    """Daemon → agent on channel 0, once, after the agent's hello, on every backend: the
    sandbox's limits that the agent applies itself (names as in ``firebox.settings.Limits``).
    It precedes every request, so all that the agent starts for them has these limits; what
    it started before (the default python interpreter) gets them now. 0 leaves one as it is."""

    T = "configure"
    # the sandbox's process limit, where its own kernel enforces it (a microVM's guest cgroup;
    # a jail's is the host's cgroup, set by the backend)
    processes: int = 0
    open_files: int = 0  # RLIMIT_NOFILE, soft and hard, of every process the agent starts


# egress: a sandbox with a network policy reaches the outside only through the daemon's proxy


@dataclass(slots=True)
class NetAccept(Message):
    """Daemon → agent: serve the egress proxy port inside the sandbox (listening from the
    first such request on) and carry the next connection made to it on this channel.

    Replies: ``NetListening`` at once; ``NetConnected`` when a connection arrives; then the
    connection's bytes as ``Data`` frames both ways (credited as uploads and downloads are)
    and ``End`` from either side for its half-close; ``Result`` once both halves are closed.
    ``Cancel`` closes the connection. The daemon keeps one accept outstanding per sandbox,
    like a listen backlog."""

    T = "net.accept"
    port: int = 3128


@dataclass(slots=True)
class NetListening(Message):
    T = "net.listening"
    port: int = 0


@dataclass(slots=True)
class NetConnected(Message):
    T = "net.connected"


# generic replies and stream control


@dataclass(slots=True)
class Result(Message):
    """Final message of a successful request; fields depend on the request."""

    T = "result"
    value: Any = None


@dataclass(slots=True)
class Error(Message):
    """Final message of a failed request."""

    T = "error"
    code: str = "internal"
    message: str = ""


@dataclass(slots=True)
class Data(Message):
    """A chunk of a byte stream; the frame payload holds the bytes. ``fd`` 1/2 for processes."""

    T = "data"
    fd: int | None = None


@dataclass(slots=True)
class End(Message):
    """End of a byte stream: an upload towards the agent (``file.write``), or one direction of
    an egress connection (either way). Process stdin goes by ``process.stdin`` instead."""

    T = "end"


@dataclass(slots=True)
class Credit(Message):
    """The receiver consumed ``n`` data frames; the sender may send ``n`` more."""

    T = "credit"
    n: int = 1


@dataclass(slots=True)
class Cancel(Message):
    """Stop the operation on this channel; the agent at once ends the channel with
    ``Result(value=None)`` (unless its final message was already on the way) and sends nothing
    more on it. A read stops, a watch stops, an upload is dropped (the target is untouched),
    and a process is *detached*: its output is discarded but it runs on until it exits or is
    signalled (the daemon cancels when its client went away)."""

    T = "cancel"


# processes


@dataclass(slots=True)
class ProcessStart(Message):
    """Start a process. Exactly one of ``argv`` or ``cmd`` (run by /bin/bash -c).

    Replies on the channel: ``ProcessStarted``, then ``Data`` frames (fd 1 and 2), then a final
    ``Result`` whose value is ``ProcessExit`` fields. ``stdin=False`` closes stdin at once.
    """

    T = "process.start"
    argv: list[str] | None = None
    cmd: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    stdin: bool = False
    timeout: float | None = None  # seconds; the agent kills the process group when it expires
    tag: str | None = None
    # bytes of stdout and stderr together forwarded at most; past it the agent sends a marker
    # on stderr, discards the rest (still draining the pipes) and reports output_truncated
    output_limit: int | None = None


@dataclass(slots=True)
class ProcessStarted(Message):
    T = "process.started"
    pid: int = 0


@dataclass(slots=True)
class ProcessExit:
    """Value of the final ``Result`` of a process channel."""

    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    # OOM kills so far by the sandbox's own kernel (a microVM's), so the daemon can tell a
    # memory-limit kill; None where the kernel is the host's (the daemon reads the cgroup)
    kernel_oom_kills: int | None = None
    output_truncated: bool = False  # it wrote more than ProcessStart.output_limit
    # a writable filesystem of the sandbox (home, /tmp) had no blocks or inodes left when it
    # failed, so the daemon can name the disk limit as the likely cause
    disk_full: bool = False


@dataclass(slots=True)
class ProcessStdin(Message):
    """Write the payload to a running process's stdin, or close it with ``eof``."""

    T = "process.stdin"
    pid: int = 0
    eof: bool = False


@dataclass(slots=True)
class ProcessSignal(Message):
    """Send ``signal`` (a number) to the process group of ``pid``."""

    T = "process.signal"
    pid: int = 0
    signal: int = 9


@dataclass(slots=True)
class ProcessList(Message):
    """Result value: a list of ``ProcessInfo`` dicts for processes started through the agent."""

    T = "process.list"


@dataclass(slots=True)
class ProcessInfo:
    """A process started through the agent (``ProcessList``); the REST API's shape too."""

    pid: int
    cmd: str | None
    argv: list[str] | None
    cwd: str | None
    user: str
    tag: str | None
    envs: dict[str, str]


# files. Paths are resolved inside the sandbox against the user's home; permissions are those of
# ``user``. A path is never interpreted on the host.


@dataclass(slots=True)
class FileRead(Message):
    """Replies: ``Data`` frames with the content, then ``Result`` whose value is the size."""

    T = "file.read"
    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileWrite(Message):
    """The daemon then sends ``Data`` frames and ``End``; the agent replies with ``Result``
    whose value is the written file's ``EntryInfo``. Parent directories are created."""

    T = "file.write"
    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileList(Message):
    """Result value: list of ``EntryInfo`` dicts. ``depth`` 1 lists the directory itself."""

    T = "file.list"
    path: str = ""
    user: str = "user"
    depth: int = 1


@dataclass(slots=True)
class FileStat(Message):
    """Result value: ``EntryInfo`` dict; error ``not_found`` when it does not exist."""

    T = "file.stat"
    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileRemove(Message):
    """Removes a file or a whole directory tree."""

    T = "file.remove"
    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileRename(Message):
    """Result value: the new ``EntryInfo``."""

    T = "file.rename"
    old_path: str = ""
    new_path: str = ""
    user: str = "user"


@dataclass(slots=True)
class FileMakeDir(Message):
    """Result value: true when created, false when it already existed (parents are made)."""

    T = "file.mkdir"
    path: str = ""
    user: str = "user"


@dataclass(slots=True)
class WatchStart(Message):
    """Watch a directory: ``WatchStarted``, then ``WatchEvent`` frames (each costs a credit)
    until ``Cancel``, or until the directory itself is removed; then ``Result``. Errors (missing
    directory) come as ``Error`` instead of ``WatchStarted``; a watch that falls so far behind
    that the kernel dropped events ends with ``Error`` code ``busy``."""

    T = "watch.start"
    path: str = ""
    user: str = "user"
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
    type: str  # "file" | "dir" | "symlink" | "other"
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: float
    symlink_target: str | None = None


# code contexts: named, stateful interpreters (python via IPython, javascript via node, bash)

LANGUAGES = ("python", "javascript", "bash")


@dataclass(slots=True)
class ContextCreate(Message):
    """Start a context. Result value: ``ContextInfo`` fields. ``language`` is one of
    ``LANGUAGES``; ``cwd`` defaults to the user's home."""

    T = "context.create"
    language: str = "python"
    cwd: str | None = None
    user: str = "user"


@dataclass(slots=True)
class ContextInfo:
    """A code context (``ContextCreate``, ``ContextList``); the REST API's shape too."""

    id: str
    language: str
    cwd: str


@dataclass(slots=True)
class ContextList(Message):
    """Result value: a list of ``ContextInfo`` dicts (the default python context included)."""

    T = "context.list"


@dataclass(slots=True)
class ContextRestart(Message):
    """Kill the context's interpreter and start a fresh one (its state is lost)."""

    T = "context.restart"
    id: str = ""


@dataclass(slots=True)
class ContextRemove(Message):
    T = "context.remove"
    id: str = ""


@dataclass(slots=True)
class CodeRun(Message):
    """Run a cell in a context (``context_id``, else the default context of ``language``,
    else the default python context).

    Replies on the channel, each costing a credit: ``Data`` frames (fd 1/2, UTF-8 text as it is
    printed), ``CodeResult`` frames (one per display call and the cell's final value), at most
    one ``CodeError``; then the final ``Result`` whose value is ``CodeDone`` fields. ``timeout``
    interrupts the cell (KeyboardInterrupt for python, keeping the context's state); a cell that
    cannot be interrupted, or whose interpreter dies (``os._exit``, out of memory), ends with
    the context restarted and ``CodeDone.restarted`` set.
    """

    T = "code.run"
    code: str = ""
    context_id: str | None = None
    language: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    # python: run without counting an execution, storing history or showing the value (the
    # daemon's warm-up of a restored VM, which must leave no trace in the user's context)
    silent: bool = False
    # bytes of printed text (stdout and stderr) forwarded at most; past it a marker on stderr,
    # the rest dropped while the cell runs on, and CodeDone.output_truncated set
    output_limit: int | None = None


@dataclass(slots=True)
class CodeResult(Message):
    """One rich result: ``data`` maps MIME types to content (text, or base64 for binary types
    such as image/png), ``chart`` is the structured data of a matplotlib chart or None."""

    T = "code.result"
    data: dict[str, Any] = field(default_factory=dict)
    is_main_result: bool = False
    chart: dict[str, Any] | None = None


@dataclass(slots=True)
class CodeError(Message):
    """The cell raised: ``traceback`` shows the user's code, not the agent's."""

    T = "code.error"
    name: str = ""
    value: str = ""
    traceback: str = ""


@dataclass(slots=True)
class CodeDone:
    """Value of the final ``Result`` of a ``code.run`` channel."""

    execution_count: int | None = None
    timed_out: bool = False
    restarted: bool = False  # the interpreter died or could not be interrupted; state is lost
    reason: str | None = None  # why, when restarted or timed out
    output_truncated: bool = False  # it printed more than CodeRun.output_limit


MESSAGES: dict[str, type[Message]] = {
    m.T: m
    for m in (
        Hello,
        Ping,
        Resume,
        Configure,
        NetAccept,
        NetListening,
        NetConnected,
        Result,
        Error,
        Data,
        End,
        Credit,
        Cancel,
        ProcessStart,
        ProcessStarted,
        ProcessStdin,
        ProcessSignal,
        ProcessList,
        FileRead,
        FileWrite,
        FileList,
        FileStat,
        FileRemove,
        FileRename,
        FileMakeDir,
        WatchStart,
        WatchStarted,
        WatchEvent,
        ContextCreate,
        ContextList,
        ContextRestart,
        ContextRemove,
        CodeRun,
        CodeResult,
        CodeError,
    )
}


def parse(header: dict[str, Any]) -> Message:
    """Turn a frame header into its message; unknown types are a protocol error."""
    cls = MESSAGES.get(str(header.get("t")))
    if cls is None:
        raise ProtocolError(f"unknown message type {header.get('t')!r}")
    msg: Message = cls.from_header(header)
    return msg


def encode(channel: int, msg: Message, payload: bytes = b"") -> bytes:
    return encode_frame(channel, msg.to_header(), payload)
