"""Process messages: start one (by argv or by a shell command line), feed its stdin, signal
it, list what the agent started; its output comes back as ``Data`` on the request's channel."""

from __future__ import annotations

from firebox.protocol.messages import Message
from firebox.protocol.records import dataclass, field


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
