"""Reading the daemon's answers into the SDK's models, and the NDJSON events of a command.

Readers ignore fields and event types they do not know, so a newer daemon can add them. A
missing or mistyped field that the SDK needs is a ``SandboxException`` naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from firebox._core.errors import ERROR_CODES
from firebox._core.models import (
    CommandEnd,
    CommandEvent,
    CommandOutput,
    CommandPty,
    CommandResult,
    CommandStart,
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
    SnapshotInfo,
)
from firebox.exceptions import (
    CommandExitException,
    DiskFullError,
    FireboxException,
    MemoryLimitExceeded,
    SandboxException,
    TimeoutException,
)


class _Reader:
    """Typed access to one JSON object of an answer, with errors that name the field."""

    def __init__(self, obj: Any, what: str) -> None:
        if not isinstance(obj, dict):
            raise _unexpected(f"{what} is not a JSON object: {obj!r:.200}")
        self.obj, self.what = obj, what

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        value = self.obj.get(name, default)
        if value is ...:
            raise _unexpected(f"{self.what} lacks {name!r}")
        if value is not default and not isinstance(value, kind):
            raise _unexpected(f"{self.what} has {name}={value!r:.100}, of the wrong type")
        return value

    def time(self, name: str) -> datetime:
        text = self.get(name, str)
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise _unexpected(f"{self.what} has {name}={text!r}, not an ISO 8601 time") from None


def _unexpected(detail: str) -> SandboxException:
    return SandboxException(
        f"unexpected answer from the firebox daemon: {detail}; "
        "the daemon and the SDK may be different versions, upgrade the older one"
    )


def parse_sandbox_info(obj: Any) -> SandboxInfo:
    r = _Reader(obj, "SandboxInfo")
    return SandboxInfo(
        sandbox_id=r.get("sandbox_id", str),
        template=r.get("template", str),
        metadata=dict(r.get("metadata", dict, {}) or {}),
        started_at=r.time("started_at"),
        end_at=r.time("end_at"),
        state=r.get("state", str),
        backend=r.get("backend", str, ""),
        cpu_count=r.get("cpu_count", (int, float), None),
        memory_mb=r.get("memory_mb", int, None),
        disk_mb=r.get("disk_mb", int, None),
        processes=r.get("processes", int, None),
        open_files=r.get("open_files", int, None),
        output_mb=r.get("output_mb", int, None),
        allow_internet_access=r.get("allow_internet_access", bool, False),
        network=dict(r.get("network", dict, {}) or {}),
        paused_at=r.time("paused_at") if r.get("paused_at", str, None) else None,
        pause_keeps=r.get("pause_keeps", str, None),
        lifecycle=dict(r.get("lifecycle", dict, {}) or {}),
        domain=r.get("domain", str, ""),
        traffic_access_token=r.get("traffic_access_token", str, ""),
    )


def parse_preview_url(obj: Any) -> str:
    return str(_Reader(obj, "PreviewLink").get("url", str))


def parse_snapshot_info(obj: Any) -> SnapshotInfo:
    r = _Reader(obj, "SnapshotInfo")
    return SnapshotInfo(
        snapshot_id=r.get("snapshot_id", str),
        name=r.get("name", str, None),
        sandbox_id=r.get("sandbox_id", str),
        template=r.get("template", str),
        backend=r.get("backend", str),
        keeps=r.get("keeps", str),
        created_at=r.time("created_at"),
        size_bytes=r.get("size_bytes", int),
    )


def parse_metrics(obj: Any) -> list[SandboxMetrics]:
    out = []
    for item in parse_list(obj, "sandbox metrics"):
        r = _Reader(item, "SandboxMetric")
        out.append(
            SandboxMetrics(
                timestamp=r.time("timestamp"),
                cpu_count=r.get("cpu_count", (int, float)),
                cpu_used_pct=r.get("cpu_used_pct", (int, float), None),  # None: unmeasured
                mem_used=r.get("mem_used", int),
                mem_total=r.get("mem_total", int, None),
                mem_cache=r.get("mem_cache", int, 0),
                disk_used=r.get("disk_used", int, None),
                disk_total=r.get("disk_total", int, None),
            )
        )
    return out


def parse_entry_info(obj: Any) -> EntryInfo:
    r = _Reader(obj, "EntryInfo")
    try:
        file_type = FileType(r.get("type", str))
    except ValueError:
        file_type = FileType.OTHER
    return EntryInfo(
        name=r.get("name", str),
        type=file_type,
        path=r.get("path", str),
        size=r.get("size", int, 0),
        mode=r.get("mode", int, 0),
        permissions=r.get("permissions", str, ""),
        owner=r.get("owner", str, ""),
        group=r.get("group", str, ""),
        modified_time=r.time("modified_time"),
        symlink_target=r.get("symlink_target", str, None),
        metadata=dict(r.get("metadata", dict, None) or {}) or None,
    )


def parse_process_info(obj: Any) -> ProcessInfo:
    r = _Reader(obj, "process")
    return ProcessInfo(
        pid=r.get("pid", int),
        tag=r.get("tag", str, None),
        cmd=r.get("cmd", str, None),
        args=list(r.get("argv", list, None) or []),
        envs=dict(r.get("envs", dict, None) or {}),
        cwd=r.get("cwd", str, None),
        user=r.get("user", str, None),
    )


def parse_list(obj: Any, what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise _unexpected(f"expected a JSON list of {what}, got {obj!r:.200}")
    return obj


def parse_fs_events(obj: Any) -> list[FilesystemEvent]:
    events = []
    for item in parse_list(obj, "watch events"):
        r = _Reader(item, "watch event")
        try:
            kind = FilesystemEventType(r.get("type", str))
        except ValueError:
            continue  # an event type this SDK does not know yet
        events.append(FilesystemEvent(name=r.get("name", str), type=kind))
    return events


def ndjson_value(line: str, what: str) -> Any:
    """The JSON value of one line of a streamed answer; None for a blank line."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except ValueError:
        raise _unexpected(f"a {what} line is not JSON: {line!r:.200}") from None


def parse_command_event(line: str) -> CommandEvent | None:
    """One NDJSON line of a command stream; None for blank lines and unknown event types."""
    obj = ndjson_value(line, "command stream")
    if obj is None:
        return None
    r = _Reader(obj, "command event")
    kind = r.get("type", str)
    if kind == "start":
        return CommandStart(pid=r.get("pid", int))
    if kind in ("stdout", "stderr"):
        return CommandOutput(stream=kind, data=r.get("text", str))
    if kind == "pty":
        try:
            return CommandPty(data=base64.b64decode(r.get("data", str), validate=True))
        except binascii.Error:
            raise _unexpected("a pty line's data is not base64") from None
    if kind == "end":
        return CommandEnd(
            exit_code=r.get("exit_code", int),
            error=r.get("error", str, None),
            message=r.get("message", str, None),
        )
    return None


def end_failure(end: CommandEnd, timeout: float | None) -> FireboxException | None:
    """What a command's stream ended in when it did not end with the command's own exit: its
    timeout, the end of listening to it (exit_code -1: it runs on), or the agent failing."""
    if end.error == "timeout":
        if end.exit_code == -1:  # no exit of its own: listening stopped (connect's timeout)
            return TimeoutException(end.message or "the command's stream timed out", code="timeout")
        limit = f" of {timeout:g} s" if timeout else ""
        return TimeoutException(
            f"the command was killed when its timeout{limit} expired; pass a larger timeout= "
            "to commands.run (0 means no limit), or run it with background=True",
            code="timeout",
        )
    failure = ERROR_CODES.get(end.error or "")
    if failure is not None:  # the agent failed: the command has no exit code of its own
        return failure(end.message or f"the command failed: {end.error}", code=end.error)
    return None


def command_result(
    stdout: str, stderr: str, end: CommandEnd, timeout: float | None
) -> CommandResult:
    """The result of a finished command, or the exception it ends in, as E2B raises them."""
    failure = end_failure(end, timeout)
    if failure is not None:
        raise failure
    if end.exit_code != 0:
        kind = _EXIT_ERRORS.get(end.error or "", CommandExitException)
        raise kind(stdout, stderr, end.exit_code, end.error, end.message)
    return CommandResult(stdout=stdout, stderr=stderr, exit_code=end.exit_code, error=end.error)


# a limit a failed command hit, by the daemon's ``error``, to the exception it raises
_EXIT_ERRORS: dict[str, type[CommandExitException]] = {
    "memory_limit": MemoryLimitExceeded,
    "disk_full": DiskFullError,
}


def parse_field(obj: Any, what: str, name: str, kind: type) -> Any:
    """One field of a small answer, such as ``created`` of mkdir or ``watcher_id``."""
    return _Reader(obj, what).get(name, kind)
