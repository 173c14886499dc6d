"""Failures a request handler reports, and the agent's one log line format.

A handler raises ``Fail`` for a failure it understands (it becomes an ``Error`` frame with that
code) and lets an ``OSError`` escape when the filesystem or the kernel said no: ``from_os``
turns it into the matching protocol code with a message that names the path.
"""

from __future__ import annotations

import errno
import os
import sys


class Fail(Exception):
    """A request failed in a way the caller can act on; ``code`` is in protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_CODES = {
    errno.ENOENT: "not_found",
    errno.EEXIST: "exists",
    errno.ENOTEMPTY: "exists",
    errno.ENOTDIR: "not_a_directory",
    errno.EISDIR: "is_a_directory",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "no_space",
    errno.ENAMETOOLONG: "invalid",
    errno.ELOOP: "invalid",
    errno.EINVAL: "invalid",
    errno.EBUSY: "busy",
    errno.ENOEXEC: "invalid",
    errno.E2BIG: "invalid",
}

_WHAT = {
    "not_found": "no such file or directory",
    "exists": "already exists",
    "not_a_directory": "not a directory",
    "is_a_directory": "is a directory",
    "permission_denied": "permission denied",
    "no_space": "no space left (the sandbox's disk or quota is full)",
}


def from_os(e: OSError, path: str | None = None, user: str | None = None) -> Fail:
    """The ``Fail`` for an OSError, naming ``path`` (or the error's own file name)."""
    code = _CODES.get(e.errno or 0, "internal")
    where = e.filename if isinstance(e.filename, str) and path is None else path
    what = _WHAT.get(code) or (e.strerror or str(e)).lower()
    if code == "permission_denied" and user is not None:
        what += f" for user {user!r}"
    if e.errno in (errno.EROFS, errno.ENOTEMPTY):
        what = os.strerror(e.errno).lower()
    message = f"{where}: {what}" if where else what
    return Fail(code, message)


def log(message: str) -> None:
    """One line on stderr, which the backend keeps for diagnostics; never raises."""
    try:
        sys.stderr.write(f"firebox-agent: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
