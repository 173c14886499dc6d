"""E2B's template API (``Template.build`` and the calls around it: the ``templates`` and
``tags`` of E2B's spec/openapi.yml), served with the control API under ``/e2b``: a translation
onto the daemon's one template service (server/templates), as firebox's own
templates/routes.py is. No second copy of a build.

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
from dataclasses import dataclass, field, replace
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
from firebox.server.templates.catalog import DEFAULT_TAG, TemplateRecord, builtin, split
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


class AssignTags(_Body):
    target: str
    tags: list[str] = Field(min_length=1, max_length=16)


class DeleteTags(_Body):
    name: str
    tags: list[str] = Field(min_length=1)


class Update(_Body):
    public: bool | None = None


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


def _service(request: Request) -> TemplateService:
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


def _limits(request: Request) -> dict[str, Any]:
    """What a sandbox of a template gets by default: firebox's templates carry no size."""
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
        **_limits(request),
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
    service, edge = _service(request), _edge(request)
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
    present = _service(request).upload_path(caller.id, files_hash).is_file()
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
    await _service(request).store_upload(key, files_hash, request.stream())
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
    build = _service(request).get(caller.id, fid)
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
    entries = _entries(_service(request).get(caller.id, firebox_build_id(build_id)), level)
    if direction == "backward":
        entries = entries[::-1]
    if cursor is not None:
        sign = 1 if direction == "forward" else -1  # forward: from the cursor on; back: to it
        entries = [e for e in entries if sign * (_ms(e) - cursor) >= 0]
    return {"logs": [_entry(e) for e in entries[:limit]]}


# -- names, tags, templates ----------------------------------------------------------------------


def _records(request: Request, owner: str, template_id: str) -> list[TemplateRecord]:
    """The builds of template ``template_id`` ``owner`` may use, newest first: its own, else a
    public one of that name."""
    name, _ = split(template_id)
    found = [r for r in _service(request).catalog.visible(owner) if r.name == name]
    return [r for r in found if r.owner == owner] or found


def _template(request: Request, name: str, records: list[TemplateRecord]) -> dict[str, Any]:
    """E2B's ``Template``: its build is the one tagged ``latest``, else the newest."""
    current = next((r for r in records if DEFAULT_TAG in r.tags), records[0])
    return {
        "templateID": name,
        "buildID": e2b_build_id(current.build_id),
        **_limits(request),
        "public": current.public,
        "aliases": [name],
        "names": [name],
        "createdAt": iso(min(r.built_at for r in records)),
        "updatedAt": iso(max(r.built_at for r in records)),
        "createdBy": None,
        "lastSpawnedAt": None,
        "spawnCount": 0,
        "buildCount": len(records),
        "envdVersion": ENVD_VERSION,
        "buildStatus": "ready",
    }


@router.get("/templates/aliases/{alias}")
async def alias_exists(alias: str, caller: Caller, request: Request) -> dict[str, Any]:
    """``Template.exists``: firebox's own templates, and those this key may use."""
    if builtin(alias) is not None:
        return {"templateID": alias, "public": True}
    try:
        record = _service(request).catalog.find(caller.id, alias)
    except ApiError:
        record = None  # not a name at all: no template has it
    if record is None:
        raise ApiError("not_found", f"no template {alias!r} for this key")
    return {"templateID": record.name, "public": record.public}


@router.post("/templates/tags", status_code=201)
async def assign_tags(body: AssignTags, caller: Caller, request: Request) -> dict[str, Any]:
    """Point ``tags`` at the build ``target`` (``name:tag``) names; a tag moves from another."""
    catalog = _service(request).catalog
    record = catalog.find(caller.id, body.target)
    if record is None or record.owner != caller.id:
        raise ApiError("not_found", f"no template {body.target!r} of this key; build it first")
    tags = list(dict.fromkeys(body.tags))
    for tag in tags:
        split(f"{record.name}:{tag}")
    catalog.add(replace(record, tags=tuple(tags)))
    if record.public:
        catalog.set_public(caller.id, record.name, True)  # new tags of a public one are too
    return {"tags": tags, "buildID": e2b_build_id(record.build_id)}


@router.delete("/templates/tags", status_code=204)
async def remove_tags(body: DeleteTags, caller: Caller, request: Request) -> Response:
    """Remove tags, each as ``firebox template delete name:tag`` does: a build no tag holds
    any more goes, once no sandbox runs on it."""
    service = _service(request)
    name, _ = split(body.name)
    refs = [f"{name}:{tag}" for tag in dict.fromkeys(body.tags)]
    for ref in refs:  # all there, before any goes
        record = service.catalog.find(caller.id, ref)
        if record is None or record.owner != caller.id:
            raise ApiError("not_found", f"no template {ref!r} of this key")
    for ref in refs:
        await service.delete(caller.id, ref)
    return Response(status_code=204)


@router.get("/templates/{template_id}/tags")
async def list_tags(template_id: str, caller: Caller, request: Request) -> list[dict[str, Any]]:
    records = _records(request, caller.id, template_id)
    if not records:
        raise ApiError("not_found", f"no template {template_id!r} for this key")
    return [
        {"tag": tag, "buildID": e2b_build_id(r.build_id), "createdAt": iso(r.built_at)}
        for r in records
        for tag in r.tags
    ]


@router.get("/templates")
@router.get("/v2/templates")
async def list_templates(caller: Caller, request: Request) -> list[dict[str, Any]]:
    """The key's templates and the public ones (firebox's own are not listed: E2B's public
    ones are not either)."""
    names = dict.fromkeys(r.name for r in _service(request).catalog.visible(caller.id))
    return [_template(request, n, _records(request, caller.id, n)) for n in names]


@router.get("/templates/{template_id}")
async def get_template(template_id: str, caller: Caller, request: Request) -> dict[str, Any]:
    """E2B's ``TemplateWithBuilds``: the builds a tag holds (finished ones: a build under way
    is seen through its status)."""
    records = _records(request, caller.id, template_id)
    if not records:
        raise ApiError("not_found", f"no template {template_id!r} for this key")
    listed = _template(request, records[0].name, records)
    sizes = _limits(request)
    return {
        **{k: listed[k] for k in ("templateID", "public", "aliases", "names")},
        **{k: listed[k] for k in ("createdAt", "updatedAt", "lastSpawnedAt", "spawnCount")},
        "builds": [
            {
                "buildID": e2b_build_id(r.build_id),
                "status": "ready",
                "createdAt": iso(r.built_at - r.build_seconds),
                "updatedAt": iso(r.built_at),
                "finishedAt": iso(r.built_at),
                **sizes,
                "envdVersion": ENVD_VERSION,
            }
            for r in records
        ],
    }


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(template_id: str, caller: Caller, request: Request) -> Response:
    await _service(request).delete(caller.id, template_id)
    return Response(status_code=204)


def _publish(request: Request, owner: str, admin: bool, template_id: str, body: Update) -> str:
    name, _ = split(template_id)
    if body.public is None:
        return name
    if not admin:
        raise ApiError("forbidden", "only firebox's admin key makes a template public or private")
    if not _service(request).catalog.set_public(owner, name, body.public):
        raise ApiError("not_found", f"no template {template_id!r} of this key")
    return name


@router.patch("/templates/{template_id}")
async def update(template_id: str, body: Update, caller: Caller, request: Request) -> Response:
    _publish(request, caller.id, caller.admin, template_id, body)
    return Response(status_code=200)


@router.patch("/v2/templates/{template_id}")
async def update_v2(
    template_id: str, body: Update, caller: Caller, request: Request
) -> dict[str, Any]:
    return {"names": [_publish(request, caller.id, caller.admin, template_id, body)]}


# last: its paths would take POST /templates/tags
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
