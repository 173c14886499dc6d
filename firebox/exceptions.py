"""Every error the firebox SDK raises.

One root, so ``except FireboxException`` catches anything the SDK raises on purpose. Under it
the tree follows E2B's Python SDK, so code written against E2B keeps catching the same names:
most errors about a sandbox are a ``SandboxException``, as they are in E2B::

    FireboxException                   root: anything firebox raises
    ├── AuthenticationException        no API key configured, or the daemon rejects it (401)
    ├── UnavailableException           daemon unreachable, or it cannot run sandboxes here (503)
    ├── TemplateBuildError             a template build failed or was cancelled
    └── SandboxException               the sandbox's agent failed or died (502), a daemon
        │                              error (500); and the parent of:
        ├── TimeoutException           an operation or a command ran out of time (504)
        ├── NotFoundException          no such sandbox (for this key), process or path (404)
        │   └── SandboxNotFoundException   the sandbox itself is gone (ended, timed out, or
        │       │                          another key's)
        │       └── SandboxLostException   its cluster node stopped answering (410)
        ├── PermissionDeniedException  the key, or the sandbox user, may not do this (403)
        ├── InvalidArgumentException   a malformed request or a value out of range (400)
        │   └── TooLargeException      a request body exceeds a limit (413)
        ├── ConflictException          the path exists / is a directory / is not one (409)
        ├── RateLimitException         host limits reached; retry later (429)
        ├── NotEnoughSpaceException    the sandbox's disk is full (507)
        └── CommandExitException       a command exited non-zero; also a CommandResult
            ├── MemoryLimitExceeded    … killed at the sandbox's memory limit
            └── DiskFullError          … failed with the sandbox's disk full (also a
                                       NotEnoughSpaceException)

Exceptions built from a daemon answer carry its error ``code`` and HTTP ``status``; the message
is the daemon's own, which says what to do. The one table from codes to classes is
``firebox._core.errors.ERROR_CODES``.
"""

from __future__ import annotations

from typing import Any

from firebox._core.models import CommandResult

__all__ = [
    "AuthenticationException",
    "CommandExitException",
    "ConflictException",
    "DiskFullError",
    "FireboxException",
    "InvalidArgumentException",
    "MemoryLimitExceeded",
    "NotEnoughSpaceException",
    "NotFoundException",
    "SandboxLostException",
    "SandboxNotFoundException",
    "PermissionDeniedException",
    "RateLimitException",
    "SandboxException",
    "TemplateBuildError",
    "TimeoutException",
    "TooLargeException",
    "UnavailableException",
]


class FireboxException(Exception):
    """Root of every firebox error.

    ``code`` is the daemon's error code (``"not_found"``, ...) and ``status`` the HTTP status,
    when the error came from a daemon answer; both are ``None`` otherwise.
    """

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class AuthenticationException(FireboxException):
    """No API key is configured, or the daemon does not know it."""


class UnavailableException(FireboxException):
    """The daemon cannot be reached, or it cannot run sandboxes on this host."""


class TemplateBuildError(FireboxException):
    """A template build failed (``build_status`` "error") or was cancelled ("cancelled").

    ``step`` is the number of the failing step, counted from 1 as E2B does (None when the
    failure was not in a step, such as pulling the base image or the start command), ``command``
    what that step ran, ``exit_code`` its exit code and ``output`` the last lines it printed;
    ``build_id`` names the build for ``get_build_status``.
    """

    def __init__(
        self,
        message: str,
        build_id: str | None = None,
        step: int | None = None,
        command: str | None = None,
        exit_code: int | None = None,
        output: str = "",
        build_status: str = "error",
    ):
        super().__init__(message)
        self.build_id = build_id
        self.step = step
        self.command = command
        self.exit_code = exit_code
        self.output = output
        self.build_status = build_status

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.build_id, self.step, self.command, self.exit_code, self.output)
        return (type(self), (self.message, *fields, self.build_status))


class SandboxException(FireboxException):
    """Something went wrong in or about a sandbox; the parent of most errors, as in E2B."""


class TimeoutException(SandboxException):
    """An operation, a request or a command did not finish in time."""


class NotFoundException(SandboxException):
    """No such sandbox (for this API key), process or path."""


class SandboxNotFoundException(NotFoundException):
    """The sandbox itself is not running (it ended, timed out, or belongs to another key), as
    opposed to a missing path or process inside a running one."""


class SandboxLostException(SandboxNotFoundException):
    """In a cluster: the sandbox's node stopped answering (it died, or is cut off). The
    sandbox answers again if its node comes back with it running; otherwise create another."""


class PermissionDeniedException(SandboxException):
    """Not allowed: the key may not do this (e.g. create keys without admin), or the sandbox
    user may not touch this path (use ``user="root"`` if that is intended)."""


class InvalidArgumentException(SandboxException):
    """The request is malformed or a value is out of range."""


class TooLargeException(InvalidArgumentException):
    """A request body exceeds one of the daemon's limits."""


class ConflictException(SandboxException):
    """The path already exists, is a directory, or is not a directory."""


class RateLimitException(SandboxException):
    """The host's limits are reached; retry later."""


class NotEnoughSpaceException(SandboxException):
    """The sandbox's disk is full."""


# How much of stderr the message of a CommandExitException quotes; the whole is an attribute.
_STDERR_TAIL = 2000


class CommandExitException(SandboxException, CommandResult):
    """A command exited with a non-zero code.

    It is also a ``CommandResult`` (``stdout``, ``stderr``, ``exit_code``, ``error``), as in E2B,
    so the output of the failed command is at hand where the error is caught. ``reason`` is the
    daemon's explanation when it has one (such as the sandbox's memory limit being reached).
    """

    # The dataclass base makes instances compare by value and unhashable; exceptions compare
    # by identity and must stay hashable (logging and tracebacks put them in sets).
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(
        self,
        stdout: str,
        stderr: str,
        exit_code: int,
        error: str | None = None,
        reason: str | None = None,
    ):
        CommandResult.__init__(self, stdout, stderr, exit_code, error)
        self.reason = reason
        detail = reason or error or stderr[-_STDERR_TAIL:].strip()
        message = f"the command exited with code {exit_code}"
        SandboxException.__init__(self, f"{message}: {detail}" if detail else message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"CommandExitException(exit_code={self.exit_code!r}, error={self.error!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (e.g. across multiprocessing) by the constructor's arguments, not ``args``.
        return (type(self), (self.stdout, self.stderr, self.exit_code, self.error, self.reason))


class MemoryLimitExceeded(CommandExitException):
    """A command was killed because its sandbox reached its memory limit (``error`` is
    "memory_limit"); a ``CommandExitException``, so code catching that still catches it."""


class DiskFullError(CommandExitException, NotEnoughSpaceException):
    """A command failed while its sandbox's disk (home, /tmp and /root, ``limits={"disk_mb": …}``)
    had no space or no inodes left (``error`` is "disk_full"); both a
    ``CommandExitException`` and a ``NotEnoughSpaceException``."""
