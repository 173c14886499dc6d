"""Process messages: start one (by argv or by a shell command line), attach to one that runs,
feed its stdin, signal it, list what the agent started; its output comes back as ``Data`` on
the channels listening to it."""

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
    # run it on a new terminal of this size ({"cols": N, "rows": N}): stdin, stdout and
    # stderr are the terminal, whose output comes as ``Data`` with fd 3; ``ProcessStdin``
    # types into it and ``ProcessResize`` resizes it
    pty: dict[str, int] | None = None


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
class ProcessAttach(Message):
    """Listen to a running process (started with ``ProcessStart``) from now on.

    Replies on the channel exactly as a ``ProcessStart`` channel does after its
    ``ProcessStarted``: ``ProcessStarted`` (the same pid), then the ``Data`` frames the process
    writes from then on (what it wrote before is gone), then the final ``Result`` with the
    ``ProcessExit`` fields. An unknown pid, or a process whose output is over, is an ``Error``
    ``not_found``.

    A process has any number of listeners: the channel that started it (while it is open) and
    every attached one; each gets all the output from the moment it joined. The slowest
    listener paces the process (its pipe fills while a listener owes credit), as a lone one
    does; a listener that cancels is dropped and the others carry on. With none left the
    output is read and discarded, so the process never blocks on it.
    """

    T = "process.attach"
    pid: int = 0


@dataclass(slots=True)
class ProcessStdin(Message):
    """Write the payload to a running process's stdin, or close it with ``eof``."""

    T = "process.stdin"
    pid: int = 0
    eof: bool = False


@dataclass(slots=True)
class ProcessResize(Message):
    """Resize the terminal of a process started with ``pty``; its foreground job gets
    SIGWINCH."""

    T = "process.resize"
    pid: int = 0
    cols: int = 80
    rows: int = 24


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
