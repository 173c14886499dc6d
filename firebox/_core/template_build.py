"""Template builds over the daemon's REST API, without I/O: the paths, request bodies, the
models of its answers (named and shaped as E2B's Template SDK names them) and their parsing.

The calls (docs/API.md, "Templates")::

    GET    /templates/files/{hash}                    {"present": bool}
    PUT    /templates/files/{hash}                    the upload (application/gzip) -> 204
    POST   /templates/builds                          {name, tags, cpu_count, memory_mb,
                                                       skip_cache, template} -> 201 build
    GET    /templates/builds/{id}/logs?offset=&follow=true   NDJSON: log lines, then status
    GET    /templates/builds/{id}?logs_offset=        the build, its log entries from there
    POST   /templates/builds/{id}/cancel
    GET    /templates                                 {"templates": [...]}
    GET    /templates/{name}                          one template ("name" or "name:tag")
    DELETE /templates/{name}                          -> 204
    POST   /templates/prune                           admin: drop unused build cache
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from firebox._core.responses import _Reader, _unexpected, ndjson_value, parse_list
from firebox.exceptions import InvalidArgumentException, TemplateBuildError
from firebox.recipes import RecipeError, split_name

TEMPLATES = "/templates"
BUILDS = "/templates/builds"
PRUNE = "/templates/prune"
UPLOAD_TIMEOUT = 3600.0  # s: sending a large build context takes longer than a request
OUTPUT_TAIL = 2000  # characters of a failed step's output quoted in the error's message
_ANSI = re.compile(r"\x1b\[[0-9;:?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def files_path(files_hash: str) -> str:
    return f"{TEMPLATES}/files/{quote(files_hash, safe='')}"


def build_path(build_id: str, *parts: str) -> str:
    return "/".join([BUILDS, quote(build_id, safe=""), *parts])


def template_path(name: str) -> str:
    return f"{TEMPLATES}/{quote(name, safe='')}"


class TemplateBuildStatus(StrEnum):
    """Where a build is, as E2B's enum (firebox adds ``CANCELLED``)."""

    WAITING = "waiting"
    BUILDING = "building"
    READY = "ready"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass
class LogEntry:
    """One line of a build's log, as E2B's; ``step`` is the number of the step it is about,
    counted from 1 as E2B counts them (the template's ``steps[step - 1]``)."""

    timestamp: datetime
    level: str  # "debug", "info", "warn" or "error"
    message: str
    step: int | None = None

    def __post_init__(self) -> None:
        self.message = _ANSI.sub("", self.message)  # colour codes from apt, pip, npm

    def __str__(self) -> str:
        return f"[{self.timestamp.isoformat()}] [{self.level}] {self.message}"


@dataclass
class BuildInfo:
    """A build the daemon accepted; ``alias`` is E2B's older name for ``name``."""

    template_id: str
    build_id: str
    name: str
    alias: str
    tags: list[str] = field(default_factory=list)


@dataclass
class BuildStatusReason:
    """Why a build failed: the daemon's message, the step (its number, from 1) and what it
    ran."""

    message: str
    step: int | None = None
    command: str | None = None
    exit_code: int | None = None
    output: str = ""  # the last lines the failing step printed


@dataclass
class TemplateBuildStatusResponse:
    """A build's state and its log entries from the offset asked (``get_build_status``)."""

    build_id: str
    template_id: str
    status: TemplateBuildStatus
    log_entries: list[LogEntry]
    reason: BuildStatusReason | None = None
    name: str = ""
    tags: list[str] = field(default_factory=list)

    @property
    def logs(self) -> list[str]:
        """The entries as text lines (E2B's older field)."""
        return [str(e) for e in self.log_entries]


@dataclass
class TemplateInfo:
    """A built template (``Template.list()`` / ``Template.get(name)``)."""

    template_id: str
    name: str
    tags: list[str]
    public: bool = False
    size_bytes: int | None = None
    build_seconds: float | None = None
    steps: int = 0
    start_cmd: str | None = None
    ready_cmd: str | None = None
    built_at: datetime | None = None


@dataclass(frozen=True)
class BuildLog:
    """A log line of the stream, with its offset for resuming it."""

    offset: int | None
    entry: LogEntry


@dataclass(frozen=True)
class BuildEnd:
    """The stream's last line: how the build ended."""

    status: str
    reason: BuildStatusReason | None


def build_name(
    name: str | None, alias: str | None, tags: list[str] | None
) -> tuple[str, list[str]]:
    """The name and tags a build is asked for: ``name`` (E2B's older ``alias``) may carry a
    tag, ``"my-app:v2"``, which joins ``tags``."""
    ref = name or alias
    if not ref:
        raise InvalidArgumentException(
            "give the template a name: Template.build(template, 'my-app') (or 'my-app:tag')"
        )
    try:
        base, tag = split_name(ref)
        for t in tags or []:
            split_name(f"{base}:{t}", "tag")
    except RecipeError as e:
        raise InvalidArgumentException(e.message) from None
    all_tags = ([tag] if tag else []) + [t for t in tags or [] if t != tag]
    return base, all_tags


def build_body(
    name: str,
    tags: list[str],
    cpu_count: int,
    memory_mb: int,
    skip_cache: bool,
    template: dict[str, Any],
    options: BuildOptions | None = None,
) -> dict[str, Any]:
    body = {
        "name": name,
        "tags": tags,
        "cpu_count": cpu_count,
        "memory_mb": memory_mb,
        "skip_cache": skip_cache,
        "template": template,
    }
    if options is not None:
        if options.pool_size is not None:
            body["pool_size"] = options.pool_size
        if options.allow_out:
            body["allow_out"] = list(options.allow_out)
    return body


@dataclass(frozen=True)
class BuildOptions:
    """firebox's own build options, beyond E2B's: sandboxes kept warm of the template, and
    hosts its steps may reach besides the daemon's package sources."""

    pool_size: int | None = None
    allow_out: tuple[str, ...] = ()


def parse_build_info(obj: Any) -> BuildInfo:
    r = _Reader(obj, "template build")
    name = r.get("name", str)
    return BuildInfo(
        template_id=r.get("template_id", str),
        build_id=r.get("build_id", str),
        name=name,
        alias=name,
        tags=list(r.get("tags", list, None) or []),
    )


def parse_log_entry(obj: Any) -> BuildLog:
    r = _Reader(obj, "build log entry")
    entry = LogEntry(
        timestamp=r.time("timestamp"),
        level=r.get("level", str, "info"),
        message=r.get("message", str, ""),
        step=_step(r.get("step", (int, str), None)),
    )
    return BuildLog(r.get("offset", int, None), entry)


def parse_build_event(line: str) -> BuildLog | BuildEnd | None:
    """One NDJSON line of a build's log stream; None for blank lines and unknown types."""
    obj = ndjson_value(line, "build log")
    if obj is None:
        return None
    kind = _Reader(obj, "build log event").get("type", str)
    if kind == "log":
        return parse_log_entry(obj)
    if kind == "status":
        r = _Reader(obj, "build status event")
        return BuildEnd(r.get("status", str), parse_reason(r.get("reason", dict, None)))
    return None


def parse_reason(obj: Any) -> BuildStatusReason | None:
    if obj is None:
        return None
    r = _Reader(obj, "build failure reason")
    return BuildStatusReason(
        message=r.get("message", str, "") or "the build failed",
        step=_step(r.get("step", (int, str), None)),
        command=r.get("command", str, None),
        exit_code=r.get("exit_code", int, None),
        output=r.get("output", str, None) or "",
    )


def parse_build_status(obj: Any, logs_offset: int) -> TemplateBuildStatusResponse:
    r = _Reader(obj, "template build")
    try:
        status = TemplateBuildStatus(r.get("status", str))
    except ValueError:
        raise _unexpected(f"a build status of {obj.get('status')!r}") from None
    logs = [parse_log_entry(e) for e in parse_list(r.get("log_entries", list, []), "log entries")]
    # An older daemon may send every entry: keep those from the offset asked for.
    entries = [log.entry for log in logs if log.offset is None or log.offset >= logs_offset]
    return TemplateBuildStatusResponse(
        build_id=r.get("build_id", str),
        template_id=r.get("template_id", str, ""),
        status=status,
        log_entries=entries,
        reason=parse_reason(r.get("reason", dict, None)),
        name=r.get("name", str, ""),
        tags=list(r.get("tags", list, None) or []),
    )


def parse_template_info(obj: Any) -> TemplateInfo:
    r = _Reader(obj, "template")
    steps = r.get("steps", (int, list), 0)
    built_at = r.get("built_at", (str, int, float), None)
    return TemplateInfo(
        template_id=r.get("template_id", str),
        name=r.get("name", str),
        tags=list(r.get("tags", list, None) or []),
        public=r.get("public", bool, False),
        size_bytes=r.get("size_bytes", int, None),
        build_seconds=r.get("build_seconds", (int, float), None),
        steps=len(steps) if isinstance(steps, list) else steps,
        start_cmd=r.get("start_cmd", str, None),
        ready_cmd=r.get("ready_cmd", str, None),
        built_at=_time(r, "built_at", built_at),
    )


def parse_templates(obj: Any) -> list[TemplateInfo]:
    items = _Reader(obj, "template list").get("templates", list)
    return [parse_template_info(t) for t in items]


def _time(r: _Reader, name: str, value: str | float | None) -> datetime | None:
    """A time given as ISO 8601 text or as seconds since the epoch."""
    if value is None or isinstance(value, str):
        return r.time(name) if value else None
    return datetime.fromtimestamp(value, UTC)


def _step(value: int | str | None) -> int | None:
    if isinstance(value, str):  # E2B names steps "1", "base", "finalize"
        return int(value) if value.isdigit() else None
    return value


def build_failure(
    info: BuildInfo, status: str, reason: BuildStatusReason | None, origins: list[str | None]
) -> TemplateBuildError:
    """The error a failed or cancelled build raises: the daemon's reason, with where in the
    template (a line of the caller's code, or of the Dockerfile) the failing step came from."""
    if status == "cancelled":
        message = f"the build {info.build_id} of template {info.name!r} was cancelled"
    else:
        message = f"the build {info.build_id} of template {info.name!r} failed"
    r = reason or BuildStatusReason("no reason given; see the build's log")
    if r.step is not None:
        origin = origins[r.step - 1] if 1 <= r.step <= len(origins) else None
        message += f" at step {r.step}" + (f" (defined at {origin})" if origin else "")
    message += f": {r.message}"
    if r.command is not None:
        code = f" exited with code {r.exit_code}" if r.exit_code is not None else ""
        message += f"\ncommand: {r.command}{code}"
    if r.output:
        message += f"\nlast output:\n{r.output[-OUTPUT_TAIL:]}"
    return TemplateBuildError(
        message, info.build_id, r.step, r.command, r.exit_code, r.output, status
    )
