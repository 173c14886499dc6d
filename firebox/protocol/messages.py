"""Message shapes: the ``Message`` base, and the messages of the control channel, of egress and
of every request's replies and stream control. Requests by subject are in ``processes``,
``files`` and ``contexts``; ``catalogue`` maps wire types to them all.

Each message is a dataclass; ``T`` is its wire type. ``to_header`` and ``from_header`` are the
only conversions, and ``from_header`` drops unknown fields so old readers accept new writers.
"""

from __future__ import annotations

from firebox.protocol.framing import ProtocolError
from firebox.protocol.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# 2: quiesce/quiesced, detach and adopt (pause, snapshots, a daemon restart); an agent
# without them is told apart at its hello, not by a pause that never ends
PROTOCOL_VERSION = 2

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
    "connection_refused",  # nothing listens on the port a net.connect names
    "internal",
    # set by the daemon's side of the channel, never sent by an agent:
    "timeout",  # the agent did not answer in time
    "too_large",  # a request does not fit in one frame
)


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
    machine id, so it takes fresh ones from the host. The agent answers with a new Hello.
    Also sent when a paused VM wakes, with only ``time_ns`` set: it keeps its identity."""

    T = "resume"
    entropy: str = ""  # hex: host randomness, mixed into the guest kernel's pool, then reseed
    time_ns: int = 0  # the host's wall clock
    hostname: str = ""
    machine_id: str = ""
    boot_id: str = ""  # what /proc/sys/kernel/random/boot_id shows inside


@dataclass(slots=True)
class Quiesce(Message):
    """Daemon → agent on channel 0, before a VM is paused: write nothing more until the next
    ``Resume``. The agent answers ``Quiesced`` as the last frame it writes, so the VM's memory
    is saved with no frame half sent (the daemon has cancelled every channel first)."""

    T = "quiesce"


@dataclass(slots=True)
class Quiesced(Message):
    T = "quiesced"


@dataclass(slots=True)
class Adopt(Message):
    """Daemon → agent on channel 0, first thing from a daemon that took over the sandbox (a
    restart): the daemon before it is gone, and so is everything it listened to. The agent
    detaches every open channel (a cell or command runs on, unheard), then says hello, after
    which only the new daemon's channels carry frames."""

    T = "adopt"


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
class NetConnect(Message):
    """Daemon → agent: connect to ``port`` on the sandbox's own loopback (a server a process in
    it runs) and carry the connection on this channel, as ``NetAccept`` carries one: the way in
    for the daemon's port proxy (server/ports), with no network device in the sandbox.

    Replies: ``NetConnected`` once connected (``Error`` ``connection_refused`` when nothing
    listens there); then ``Data`` both ways, credited, ``End`` for a half-close, ``Result``
    once both halves are closed; ``Cancel`` closes the connection."""

    T = "net.connect"
    port: int = 0


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


@dataclass(slots=True)
class Detach(Message):
    """The daemon stops listening on this channel and wants no answer: the agent sends
    nothing more on it, and what the channel served goes on unheard. Unlike ``Cancel`` a
    running cell is not interrupted: it runs to its end, its output discarded. Sent for every
    open channel before a pause, so nothing is waiting on a stream that has no reader."""

    T = "detach"
