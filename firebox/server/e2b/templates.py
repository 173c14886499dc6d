"""E2B's template builds (``Template.build``: the build calls of E2B's spec/openapi.yml),
served with the control API under ``/e2b``: a translation onto the daemon's one template
service (server/templates), as firebox's own templates/routes.py is. No second copy of a
build. Names, tags and listings are template_names.py's.

How E2B's names map (docs/E2B.md):

- E2B's template name (``alias`` in older SDKs) is firebox's template name, and E2B's
  ``templateID`` is that name too, so ``Sandbox.create(template=<name>)`` starts it through
  either edge. Tags are firebox's: a name alone means ``name:latest`` (E2B's ``default``).
- E2B asks for a build (``POST /v3/templates``) before it sends the template (``POST
  /v2/templates/{id}/builds/{buildID}``): the request waits here, an hour at most, and the
  build then starts under the id handed out.
- Build ids go out as UUIDs, the form E2B's SDKs parse in tags and build lists: firebox's
  ``bld_<16 hex>`` is the UUID holding those 64 bits (``00000000-0000-0000-xxxx-xxxxxxxxxxxx``).
  Either form is accepted.
- A COPY's files: ``GET .../files/{hash}`` answers with a URL of this edge, signed for the key
  and the hash for an hour, to which E2B's SDKs PUT the tar without their key (as they do to
  E2B's storage). It is kept as firebox's own uploads are (``TemplateService.store_upload``),
  under the hash the client names; the build unpacks it in the build sandbox.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firebox.server.deps import Caller
from firebox.server.e2b.control import ENVD_VERSION
from firebox.server.errors import ApiError
from firebox.server.models import iso
from firebox.server.templates import builds
from firebox.server.templates.catalog import DEFAULT_TAG, split
from firebox.server.templates.routes import BuildBody, build_request
from firebox.server.templates.service import TemplateService
from firebox.settings import Limits

REQUEST_TTL = 3600.0  # seconds a requested build waits for its template
MAX_REQUESTED = 32  # requested builds per key not started yet
UPLOAD_TTL = 3600  # seconds an upload URL stays valid
LOGS_MAX = 100  # log entries per answer, as E2B's API
LEVELS = ("debug", "info", "warn", "error")
# firebox's build states; "cancelled" has no E2B twin (its reason says why)
STATUS = {"waiting": "waiting", "building": "building", "ready": "ready"}
_FIREBOX_ID = re.compile(r"^bld_([0-9a-f]{16})$")

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class BuildRequested(_Body):
    """E2B's ``TemplateBuildRequestV3`` (and V2's, which names it ``alias``)."""

    name: str | None = Field(default=None, max_length=128)
    alias: str | None = Field(default=None, max_length=128)
    tags: list[str] = Field(default_factory=list)
    cpu_count: int | None = Field(default=None, alias="cpuCount")
    memory_mb: int | None = Field(default=None, alias="memoryMB")


@dataclass
class _Requested:
    owner: str
    body: BuildBody  # all but the template, which comes with the start
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Edge:
    """What this edge keeps between calls: for as long as the daemon runs, as builds are."""

    requested: dict[str, _Requested] = field(default_factory=dict)  # by firebox build id
    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


def _edge(request: Request) -> _Edge:
    state = request.app.state
    edge = getattr(state, "e2b_templates", None)
    if edge is None:
        edge = state.e2b_templates = _Edge()
    assert isinstance(edge, _Edge)
    return edge


def template_service(request: Request) -> TemplateService:
    """The daemon's template service (its app state, which the control app shares)."""
    service: TemplateService = request.app.state.templates
    return service


def e2b_build_id(build_id: str) -> str:
    m = _FIREBOX_ID.match(build_id)
    return str(uuid.UUID(int=int(m.group(1), 16))) if m else build_id


def firebox_build_id(build_id: str) -> str:
    try:
        value = uuid.UUID(build_id).int
    except ValueError:
        return build_id
    return f"bld_{value:016x}" if value < 1 << 64 else build_id


def _checked(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problem = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ApiError("invalid_argument", f"invalid build request: {problem}") from None


# -- requesting and starting a build -------------------------------------------------------------


def _request_build(request: Request, owner: str, body: BuildRequested) -> tuple[str, BuildBody]:
    """Check a build request as firebox's own are checked, and hold it for its start."""
    ref = body.name or body.alias
    if not ref:
        raise ApiError("invalid_argument", "a build needs a name: Template.build(t, name=...)")
    name, tag = split(ref)
    tags = list(dict.fromkeys(([tag] if ":" in ref else []) + body.tags)) or [DEFAULT_TAG]
    fields: dict[str, Any] = {"name": name, "tags": tags}
    if body.cpu_count is not None:
        fields["cpu_count"] = body.cpu_count
    if body.memory_mb is not None:
        fields["memory_mb"] = body.memory_mb
    checked: BuildBody = _checked(BuildBody, fields)
    for t in checked.tags:
        split(f"{name}:{t}")
    edge = _edge(request)
    now = time.monotonic()
    for stale in [k for k, r in edge.requested.items() if now - r.at > REQUEST_TTL]:
        del edge.requested[stale]
    if sum(r.owner == owner for r in edge.requested.values()) >= MAX_REQUESTED:
        raise ApiError(
            "rate_limited",
            f"this key has {MAX_REQUESTED} builds requested and not started; start them "
            f"(Template.build does) or wait {REQUEST_TTL / 60:.0f} min for them to lapse",
        )
    build_id = builds.new_build_id()
    edge.requested[build_id] = _Requested(owner, checked)
    return build_id, checked


def sandbox_sizes(request: Request) -> dict[str, Any]:
    """What a sandbox of a template gets by default (E2B's templates carry a size, firebox's
    do not)."""
    limits: Limits = request.app.state.manager.default_limits
    return {
        "cpuCount": max(1, round(limits.cpu_count)),
        "memoryMB": limits.memory_mb,
        "diskSizeMB": limits.disk_mb,
    }


@router.post("/v3/templates", status_code=202)
async def request_build(body: BuildRequested, caller: Caller, request: Request) -> dict[str, Any]:
    build_id, checked = _request_build(request, caller.id, body)
    name = checked.name
    return {
        "templateID": name,
        "buildID": e2b_build_id(build_id),
        "public": False,
        "names": [name],
        "aliases": [name],
        "tags": checked.tags,
    }


@router.post("/v2/templates", status_code=202)
async def request_build_v2(
    body: BuildRequested, caller: Caller, request: Request
) -> dict[str, Any]:
    """E2B's older request (``TemplateLegacy``), before names and tags."""
    build_id, checked = _request_build(request, caller.id, body)
    now = iso(time.time())
    return {
        "templateID": checked.name,
        "buildID": e2b_build_id(build_id),
        **sandbox_sizes(request),
        "public": False,
        "aliases": [checked.name],
        "createdAt": now,
        "updatedAt": now,
        "createdBy": None,
        "lastSpawnedAt": None,
        "spawnCount": 0,
        "buildCount": 0,
        "envdVersion": ENVD_VERSION,
    }


@router.post("/v2/templates/{template_id}/builds/{build_id}", status_code=202)
async def start_build(
    template_id: str, build_id: str, body: dict[str, Any], caller: Caller, request: Request
) -> Response:
    """Start a requested build with E2B's ``TemplateBuildStartV2`` (firebox's template shape:
    firebox/recipes), through firebox's own checks."""
    service, edge = template_service(request), _edge(request)
    fid = firebox_build_id(build_id)
    requested = edge.requested.get(fid)
    if requested is None or requested.owner != caller.id:
        service.get(caller.id, fid)  # not found, unless it started already
        raise ApiError("conflict", f"build {build_id} has started already; request another")
    if requested.body.name != template_id:
        raise ApiError("not_found", f"build {build_id} is not of template {template_id!r}")
    service.start_build(
        caller.id, build_request(requested.body.model_copy(update={"template": body})), fid
    )
    del edge.requested[fid]
    return Response(status_code=202)


# -- a COPY's files ------------------------------------------------------------------------------


def _signature(key: bytes, owner: str, files_hash: str, expires: int) -> str:
    message = f"{owner}\0{files_hash}\0{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@router.get("/templates/{template_id}/files/{files_hash}", status_code=201)
async def upload_link(
    template_id: str, files_hash: str, caller: Caller, request: Request
) -> dict[str, Any]:
    """Whether the files are here, and where to PUT them: this same path, signed (always
    given, for the SDKs' ``force_upload``)."""
    present = template_service(request).upload_path(caller.id, files_hash).is_file()
    expires = int(time.time()) + UPLOAD_TTL
    signature = _signature(_edge(request).signing_key, caller.id, files_hash, expires)
    query = urlencode({"key": caller.id, "expires": expires, "signature": signature})
    return {"present": present, "url": str(request.url.replace(query=query))}


@router.put("/templates/{template_id}/files/{files_hash}")
async def upload(
    template_id: str,
    files_hash: str,
    request: Request,
    key: str = Query(),
    expires: int = Query(),
    signature: str = Query(),
) -> Response:
    """The signed upload (exempt from the body cap: body_limit.py), checked before a byte
    of its body is read."""
    good = _signature(_edge(request).signing_key, key, files_hash, expires)
    if expires < time.time() or not hmac.compare_digest(signature, good):
        raise ApiError(
            "forbidden",
            "this upload URL is not valid or has expired; ask for another "
            "(GET /templates/{id}/files/{hash}: Template.build does)",
        )
    await template_service(request).store_upload(key, files_hash, request.stream())
    return Response(status_code=200)


# -- status and logs -----------------------------------------------------------------------------


def _level(level: str) -> str:
    return level if level in LEVELS else "info"


def _entry(e: builds.LogEntry) -> dict[str, Any]:
    """E2B's ``BuildLogEntry``; E2B's steps are strings, numbered from 1 as firebox's."""
    out = {"timestamp": e.timestamp, "level": _level(e.level), "message": e.message}
    if e.step is not None:
        out["step"] = str(e.step)
    return out


def _ms(e: builds.LogEntry) -> int:
    return int(datetime.fromisoformat(e.timestamp).timestamp() * 1000)


def _entries(build: builds.Build, level: str | None) -> list[builds.LogEntry]:
    if level is None:
        return build.entries
    least = LEVELS.index(_level(level))
    return [e for e in build.entries if LEVELS.index(_level(e.level)) >= least]


def _reason(build: builds.Build) -> dict[str, Any] | None:
    if build.reason is None:
        return None
    step = build.reason.get("step")
    out: dict[str, Any] = {"message": build.reason["message"], "logEntries": []}
    if step is not None:
        out["step"] = str(step)  # E2B's SDKs point at the line of the step that failed
        out["logEntries"] = [_entry(e) for e in build.entries if e.step == step][-20:]
    return out


@router.get("/templates/{template_id}/builds/{build_id}/status")
async def build_status(
    template_id: str,
    build_id: str,
    caller: Caller,
    request: Request,
    logs_offset: int = Query(default=0, ge=0, alias="logsOffset"),
    limit: int = Query(default=LOGS_MAX, ge=0, le=LOGS_MAX),
    level: Literal["debug", "info", "warn", "error"] | None = None,
) -> dict[str, Any]:
    """E2B's ``TemplateBuildInfo``: the status, and the log from ``logsOffset`` on."""
    fid = firebox_build_id(build_id)
    requested = _edge(request).requested.get(fid)
    if requested is not None and requested.owner == caller.id:
        return {
            "templateID": requested.body.name,
            "buildID": e2b_build_id(fid),
            "status": "waiting",
            "logs": [],
            "logEntries": [],
        }
    build = template_service(request).get(caller.id, fid)
    page = _entries(build, level)[logs_offset : logs_offset + limit]
    out: dict[str, Any] = {
        "templateID": build.name,
        "buildID": e2b_build_id(build.id),
        "status": STATUS.get(build.status, "error"),
        "logs": [e.message for e in page],
        "logEntries": [_entry(e) for e in page],
    }
    if (reason := _reason(build)) is not None:
        out["reason"] = reason
    return out


@router.get("/templates/{template_id}/builds/{build_id}/logs")
async def build_logs(
    template_id: str,
    build_id: str,
    caller: Caller,
    request: Request,
    cursor: int | None = Query(default=None, ge=0),
    limit: int = Query(default=LOGS_MAX, ge=0, le=LOGS_MAX),
    direction: Literal["forward", "backward"] = "forward",
    level: Literal["debug", "info", "warn", "error"] | None = None,
) -> dict[str, Any]:
    """E2B's ``TemplateBuildLogsResponse``: entries from ``cursor`` (ms since the epoch) on,
    or back from it."""
    entries = _entries(template_service(request).get(caller.id, firebox_build_id(build_id)), level)
    if direction == "backward":
        entries = entries[::-1]
    if cursor is not None:
        sign = 1 if direction == "forward" else -1  # forward: from the cursor on; back: to it
        entries = [e for e in entries if sign * (_ms(e) - cursor) >= 0]
    return {"logs": [_entry(e) for e in entries[:limit]]}


@router.post("/templates")
@router.post("/templates/{template_id}")
@router.post("/templates/{template_id}/builds/{build_id}")
async def legacy_build(caller: Caller) -> Response:
    raise ApiError(
        "invalid_argument",
        "E2B's first template builds (a Docker image pushed to E2B's registry by its CLI) are "
        "not available in firebox; build with Template.build (E2B's SDK 2.x) or "
        "`firebox template build`",
    )
