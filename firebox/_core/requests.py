"""Building requests: paths, bodies, query parameters and timeouts, exactly as docs/API.md has them.

No I/O here; the sync and async clients only send what these functions build.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from firebox._core.models import SandboxQuery
from firebox.exceptions import InvalidArgumentException

# Extra read time for a command stream beyond the command's own timeout: the daemon kills the
# command when it expires and then still has to send the ``end`` event.
STREAM_SLACK = 10.0


def sandbox_path(sandbox_id: str, *parts: str) -> str:
    """``/sandboxes/{id}/...`` with the id escaped, so no id can address another route."""
    return "/".join(["/sandboxes", quote(sandbox_id, safe=""), *parts])


def create_body(
    template: str,
    timeout: int,
    metadata: Mapping[str, str] | None,
    envs: Mapping[str, str] | None,
    limits: Mapping[str, float] | None = None,
    allow_internet_access: bool = False,
    network: Mapping[str, Any] | None = None,
    lifecycle: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "template": template,
        "timeout": timeout,
        "metadata": dict(metadata or {}),
        "envs": dict(envs or {}),
        "allow_internet_access": allow_internet_access,
    }
    if limits:
        body["limits"] = dict(limits)
    if network:
        body["network"] = {k: v if isinstance(v, bool) else list(v) for k, v in network.items()}
    if lifecycle:
        body["lifecycle"] = dict(lifecycle)
    return body


def list_query(
    metadata: Mapping[str, str] | None, query: SandboxQuery | None, order: str | None
) -> dict[str, str]:
    """``GET /sandboxes`` parameters: ``metadata`` and ``query.metadata`` together, and the
    rest of the query as the daemon takes it."""
    params = metadata_query({**(metadata or {}), **((query and query.metadata) or {})})
    if query is not None and query.state:
        params["state"] = ",".join(str(getattr(s, "value", s)) for s in query.state)
    if query is not None and query.started_after is not None:
        params["started_after"] = query.started_after.astimezone().isoformat()
    if query is not None and query.template:
        params["template"] = query.template
    if order:
        params["order"] = order
    return params


def metadata_query(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """``GET /sandboxes`` filter: one parameter holding the pairs, themselves URL-encoded.

    ``{"user": "a b", "env": "x&y"}`` becomes ``metadata=user=a+b&env=x%26y`` before httpx
    encodes it once more as a query value, so keys and values may contain ``=`` and ``&``.
    """
    if not metadata:
        return {}
    return {"metadata": urlencode(sorted(metadata.items()))}


def run_body(
    cmd: str,
    envs: Mapping[str, str] | None,
    user: str,
    cwd: str | None,
    timeout: float | None,
    stdin: bool | str | bytes | None,
    tag: str | None,
) -> dict[str, Any]:
    """``POST /sandboxes/{id}/commands``. ``stdin``: True keeps it open; text is written first."""
    keep_open = stdin is True
    data = None if isinstance(stdin, bool) or stdin is None else as_text(stdin, "stdin")
    return {
        "cmd": cmd,
        "envs": dict(envs or {}),
        "cwd": cwd,
        "user": user,
        "timeout": timeout or 0,
        "stdin": keep_open,
        "stdin_data": data,
        "tag": tag,
    }


def stdin_body(data: str | bytes, eof: bool = False) -> dict[str, Any]:
    return {"data": as_text(data, "stdin"), "eof": eof}


def keys_body(data: bytes) -> dict[str, Any]:
    """A terminal's input: bytes as they are (keys need not be UTF-8)."""
    return {"data_base64": base64.b64encode(bytes(data)).decode()}


def as_text(data: str | bytes, what: str) -> str:
    """The API carries stdin as JSON text, so bytes must be UTF-8."""
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgumentException(
            f"{what} must be UTF-8 text ({e}); the firebox API carries stdin as text, so write "
            "binary input to a file with files.write() and redirect it instead"
        ) from None


def command_timeout(timeout: float | None, request_timeout: float) -> httpx.Timeout:
    """Timeouts for a command's NDJSON stream.

    Reads may pause for as long as the command is silent, which is at most its own timeout
    (then the daemon kills it and says so); a command without a timeout may be silent forever.
    Connecting and sending still take ``request_timeout`` at most.
    """
    read = timeout + STREAM_SLACK if timeout else None
    return httpx.Timeout(request_timeout, read=read)


# The daemon answers a context's creation or restart once its interpreter has started, and
# gives it up to 70 s (90 s for a restart, which first lets a running cell end; see
# firebox.server.code): under emulation a python with the template's imports can take that
# long. So a context call waits this long for the answer unless told otherwise, rather than
# give up first and leave the interpreter starting for nobody (tests/unit/test_sdk_core.py
# checks that the two agree).
CONTEXT_START_ANSWER = 95.0


def context_start_timeout(
    request_timeout: float | None, configured: float
) -> float | httpx.Timeout:
    """The timeout of a call that starts an interpreter: the caller's, else the configured
    one to connect and send and at least the daemon's start allowance to read."""
    if request_timeout is not None:
        return request_timeout
    return httpx.Timeout(configured, read=max(configured, CONTEXT_START_ANSWER))


def metadata_headers(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A file's metadata as an upload carries it: ``X-Metadata-<key>`` headers (E2B's)."""
    out = {}
    for key, value in (metadata or {}).items():
        if not key or not key.isascii() or not all(c.isalnum() or c in "-_" for c in key):
            raise InvalidArgumentException(
                f"metadata key {key!r}: use letters, digits, '-' and '_' (it travels as a header)"
            )
        out[f"X-Metadata-{key}"] = value
    return out


def file_params(path: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"path": path, "user": user, **extra}


def upload_length(data: object) -> int | None:
    """The byte length of an upload when it is known without reading it, else None (chunked).

    Known for bytes and for a binary file object on a regular file, from its current position.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return memoryview(data).nbytes
    fileno, tell = getattr(data, "fileno", None), getattr(data, "tell", None)
    if fileno is None or tell is None or hasattr(data, "encoding"):
        return None  # not a file, or a text file whose byte length differs from its char count
    try:
        st = os.fstat(fileno())
        position = tell()
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a pipe, socket or device: its size means nothing
    return max(st.st_size - position, 0)
