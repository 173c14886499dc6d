"""Templates over REST: upload a COPY's files, start a build and follow its log, cancel it,
list, show, warm, delete and prune templates. docs/TEMPLATES.md describes each call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from firebox import recipes
from firebox.server.agent_calls import NDJSON, NDJSON_TYPE, ndjson_line
from firebox.server.deps import Caller
from firebox.server.errors import ApiError
from firebox.server.templates.catalog import split
from firebox.server.templates.distribute import warm
from firebox.server.templates.service import BuildRequest, TemplateService

router = APIRouter(tags=["templates"])
FOLLOW_WAIT = 30.0  # seconds a log stream waits for news before it ends (the client asks again)


class BuildBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the template's name; sandboxes are created with name[:tag]")
    tags: list[str] = Field(default_factory=lambda: ["latest"], max_length=16)
    template: dict[str, Any] | None = Field(
        default=None, description="E2B's template shape: fromImage/fromTemplate, steps, …"
    )
    dockerfile: str | None = Field(
        default=None, max_length=1 << 20, description="a Dockerfile instead of ``template``"
    )
    cpu_count: float = Field(default=2, ge=0.1, le=64)
    memory_mb: int = Field(default=2048, ge=128, le=65536)
    skip_cache: bool = False
    pool_size: int | None = Field(
        default=None, ge=0, le=64, description="sandboxes kept warm (default: --pool-size)"
    )
    allow_out: list[str] = Field(
        default_factory=list, description="hosts the build may reach besides package sources"
    )


class Public(BaseModel):
    public: bool


def _service(request: Request) -> TemplateService:
    service: TemplateService = request.app.state.templates
    return service


def _spec(body: BuildBody) -> dict[str, Any]:
    if (body.template is None) == (body.dockerfile is None):
        raise ApiError("invalid_argument", "send exactly one of template or dockerfile")
    try:
        if body.dockerfile is not None:
            parsed = recipes.parse_dockerfile(body.dockerfile)
            if any(s["type"] == "COPY" for s in parsed["steps"]):
                raise ApiError(
                    "invalid_argument",
                    "a Dockerfile sent as text cannot COPY: its files are not here; build it "
                    "with `firebox template build` or the SDK's Template.from_dockerfile, "
                    "which upload them",
                )
            return recipes.validate(parsed)
        return recipes.validate(body.template)
    except recipes.RecipeError as e:
        raise ApiError("invalid_argument", str(e)) from None


@router.get("/templates/files/{files_hash}")
async def files_present(files_hash: str, caller: Caller, request: Request) -> dict[str, bool]:
    return {"present": _service(request).upload_path(caller.id, files_hash).is_file()}


@router.put("/templates/files/{files_hash}", status_code=204)
async def upload_files(files_hash: str, caller: Caller, request: Request) -> Response:
    await _service(request).store_upload(caller.id, files_hash, request.stream())
    return Response(status_code=204)


def build_request(body: BuildBody) -> BuildRequest:
    """``body`` checked and made the service's request (E2B's edge makes its builds' here too)."""
    name, _ = split(body.name)
    for tag in body.tags:
        split(f"{name}:{tag}")
    return BuildRequest(
        name=name,
        tags=tuple(dict.fromkeys(body.tags or ["latest"])),
        template=_spec(body),
        cpu_count=body.cpu_count,
        memory_mb=body.memory_mb,
        skip_cache=body.skip_cache,
        pool_size=body.pool_size,
        allow_out=tuple(body.allow_out),
    )


@router.post("/templates/builds", status_code=201)
async def start_build(body: BuildBody, caller: Caller, request: Request) -> dict[str, Any]:
    return _service(request).start_build(caller.id, build_request(body)).as_json()


@router.get("/templates/builds/{build_id}")
async def build_status(
    build_id: str, caller: Caller, request: Request, logs_offset: int = Query(default=0, ge=0)
) -> dict[str, Any]:
    return _service(request).get(caller.id, build_id).as_json(logs_from=logs_offset)


@router.get("/templates/builds/{build_id}/logs", responses=NDJSON)
async def build_logs(
    build_id: str,
    caller: Caller,
    request: Request,
    offset: int = Query(default=0, ge=0),
    follow: bool = True,
) -> StreamingResponse:
    build = _service(request).get(caller.id, build_id)

    async def lines() -> AsyncIterator[bytes]:
        async for item in build.follow(offset, FOLLOW_WAIT if follow else 0.0):
            yield ndjson_line(item)

    return StreamingResponse(lines(), media_type=NDJSON_TYPE)


@router.post("/templates/builds/{build_id}/cancel")
async def cancel_build(build_id: str, caller: Caller, request: Request) -> dict[str, Any]:
    return (await _service(request).cancel(caller.id, build_id)).as_json()


@router.get("/templates")
async def list_templates(caller: Caller, request: Request) -> dict[str, Any]:
    records = _service(request).catalog.visible(caller.id, caller.admin)
    # the admin sees whose each is (the key id that POST /templates/{name}/public takes)
    return {
        "templates": [r.as_json() | ({"owner": r.owner} if caller.admin else {}) for r in records]
    }


@router.post("/templates/prune")
async def prune(caller: Caller, request: Request) -> dict[str, Any]:
    if not caller.admin:
        raise ApiError("forbidden", "pruning templates' files is for the admin key")
    return await _service(request).prune()


@router.get("/templates/{name}")
async def show_template(name: str, caller: Caller, request: Request) -> dict[str, Any]:
    record = _service(request).catalog.find(caller.id, name)
    if record is None:
        raise ApiError("not_found", f"no template {name!r} for this key")
    return record.as_json()


@router.post("/templates/{name}/warm")
async def warm_template(
    name: str,
    caller: Caller,
    request: Request,
    owner: str | None = Query(
        default=None, description="admin only: the owning key's id, where several keys have one"
    ),
) -> dict[str, Any]:
    """Have the template on this node before its first create: pulled from the template
    registry if another node built it. ``pulled`` says whether it had to be."""
    return await warm(_service(request).catalog, caller.id, name, caller.admin, owner)


@router.delete("/templates/{name}", status_code=204)
async def delete_template(name: str, caller: Caller, request: Request) -> Response:
    await _service(request).delete(caller.id, name)
    return Response(status_code=204)


@router.post("/templates/{name}/public")
async def set_public(
    name: str,
    body: Public,
    caller: Caller,
    request: Request,
    owner: str | None = Query(default=None, description="the owning key's id (default: yours)"),
) -> dict[str, Any]:
    """Admin only: make every tag of ``name`` usable by every key, or private again."""
    if not caller.admin:
        raise ApiError("forbidden", "only the admin key makes a template public")
    if not _service(request).catalog.set_public(owner or caller.id, name, body.public):
        raise ApiError("not_found", f"no template {name!r} of that key")
    return {"name": name, "public": body.public}
