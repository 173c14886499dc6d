"""E2B's template names, tags and listings (``Template.exists``, ``assign_tags``,
``remove_tags``, ``get_tags``; E2B's CLI's list, get, delete and publish), served with the
control API under ``/e2b``: a translation onto firebox's template catalog and service.

E2B's ``templateID`` is firebox's template name; a build id goes out as templates.py writes it
(a UUID). What E2B keeps of a template's use (``spawnCount``, ``lastSpawnedAt``) firebox does
not: 0 and null.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from firebox.server.deps import Caller
from firebox.server.e2b.control import ENVD_VERSION
from firebox.server.e2b.snapshots import delete_if_snapshot
from firebox.server.e2b.templates import e2b_build_id, sandbox_sizes, template_service
from firebox.server.errors import ApiError
from firebox.server.models import iso
from firebox.server.templates.catalog import DEFAULT_TAG, TemplateRecord, builtin, split

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AssignTags(_Body):
    target: str
    tags: list[str] = Field(min_length=1, max_length=16)


class DeleteTags(_Body):
    name: str
    tags: list[str] = Field(min_length=1)


class Update(_Body):
    public: bool | None = None


def _records(request: Request, owner: str, template_id: str) -> list[TemplateRecord]:
    """The builds of template ``template_id`` ``owner`` may use, newest first: its own, else a
    public one of that name."""
    name, _ = split(template_id)
    found = [r for r in template_service(request).catalog.visible(owner) if r.name == name]
    return [r for r in found if r.owner == owner] or found


def _template(request: Request, name: str, records: list[TemplateRecord]) -> dict[str, Any]:
    """E2B's ``Template``: its build is the one tagged ``latest``, else the newest."""
    current = next((r for r in records if DEFAULT_TAG in r.tags), records[0])
    return {
        "templateID": name,
        "buildID": e2b_build_id(current.build_id),
        **sandbox_sizes(request),
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
        record = template_service(request).catalog.find(caller.id, alias)
    except ApiError:
        record = None  # not a name at all: no template has it
    if record is None:
        raise ApiError("not_found", f"no template {alias!r} for this key")
    return {"templateID": record.name, "public": record.public}


@router.post("/templates/tags", status_code=201)
async def assign_tags(body: AssignTags, caller: Caller, request: Request) -> dict[str, Any]:
    """Point ``tags`` at the build ``target`` (``name:tag``) names; a tag moves from another."""
    catalog = template_service(request).catalog
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
    service = template_service(request)
    name, _ = split(body.name)
    refs = [f"{name}:{tag}" for tag in dict.fromkeys(body.tags)]
    for ref in refs:  # all there, before any goes
        if not service.catalog.owned(caller.id, ref):
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
    names = dict.fromkeys(r.name for r in template_service(request).catalog.visible(caller.id))
    return [_template(request, n, _records(request, caller.id, n)) for n in names]


@router.get("/templates/{template_id}")
async def get_template(template_id: str, caller: Caller, request: Request) -> dict[str, Any]:
    """E2B's ``TemplateWithBuilds``: the builds a tag holds (finished ones: a build under way
    is seen through its status)."""
    records = _records(request, caller.id, template_id)
    if not records:
        raise ApiError("not_found", f"no template {template_id!r} for this key")
    listed = _template(request, records[0].name, records)
    sizes = sandbox_sizes(request)
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
    if not await delete_if_snapshot(request, caller.id, template_id):  # E2B's way to
        await template_service(request).delete(caller.id, template_id)  # delete one too
    return Response(status_code=204)


def _publish(request: Request, owner: str, admin: bool, template_id: str, body: Update) -> str:
    name, _ = split(template_id)
    if body.public is None:
        return name
    if not admin:
        raise ApiError("forbidden", "only firebox's admin key makes a template public or private")
    if not template_service(request).catalog.set_public(owner, name, body.public):
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
