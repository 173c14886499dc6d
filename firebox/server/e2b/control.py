"""E2B's control API (spec/openapi.yml in e2b-dev/E2B), served under ``/e2b`` of the daemon's
own listener: ``E2B_API_URL=http://<daemon>/e2b``. A translation onto the manager, as
firebox's own sandboxes.py is: no second copy of a behaviour.

What differs from E2B, on purpose (docs/E2B.md): every sandbox gets an access token, secure
or not (access.py); no internet unless the create asks for it; E2B's template names for its
default images (``base``, ``code-interpreter-v1``) start firebox's default template.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from firebox.server import listing
from firebox.server.deps import Caller, Manager
from firebox.server.e2b import metrics
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox, SandboxManager
from firebox.server.models import iso
from firebox.settings import (
    DEFAULT_TEMPLATE,
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    Lifecycle,
    Network,
    SandboxSettings,
)

# What E2B's SDKs gate features on (e2b/envd/versions.py): firebox's in-sandbox protocol has
# every feature up to this envd version.
ENVD_VERSION = "0.6.4"
# E2B's names for its own default images; firebox's default template stands in for them.
TEMPLATE_ALIASES = {"base": DEFAULT_TEMPLATE, "code-interpreter-v1": DEFAULT_TEMPLATE}
NOT_YET: dict[str, str] = {}
PAGE_MAX = 100


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class NetworkConfig(_Body):
    allow_public_traffic: bool | None = Field(default=None, alias="allowPublicTraffic")
    allow_out: list[str] = Field(default_factory=list, alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, alias="denyOut")
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    mask_request_host: str | None = Field(default=None, alias="maskRequestHost")
    rules: dict[str, Any] | None = None


class AutoResume(_Body):
    enabled: bool = False


class NewSandbox(_Body):
    template_id: str = Field(alias="templateID")
    timeout: int = Field(default=15, ge=0)
    auto_pause: bool = Field(default=False, alias="autoPause")
    auto_pause_memory: bool | None = Field(default=None, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(default=None, alias="autoResume")
    secure: bool | None = None
    allow_internet_access: bool | None = None
    network: NetworkConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    mcp: dict[str, Any] | None = None
    volume_mounts: list[Any] | None = Field(default=None, alias="volumeMounts")


class NetworkUpdate(_Body):
    allow_out: list[str] | None = Field(default=None, alias="allowOut")
    deny_out: list[str] | None = Field(default=None, alias="denyOut")
    allow_internet_access: bool | None = None
    dns_servers: list[str] | None = Field(default=None, alias="dnsServers")
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    rules: dict[str, Any] | None = None


class Timeout(_Body):
    timeout: int = Field(ge=0)


class Connect(_Body):
    # E2B's SDKs leave it out when their caller did: then the daemon's default lifetime
    timeout: int = Field(default=DEFAULT_TIMEOUT, ge=0)
    memory: bool | None = None  # v2: resume with memory (firebox always keeps it)


class Resumed(_Body):
    timeout: int | None = Field(default=None, ge=0)
    auto_pause: bool | None = Field(default=None, alias="autoPause")  # deprecated in E2B


class PauseRequest(_Body):
    # false: keep the disk only (a cold boot on resume); firebox always keeps the memory
    memory: bool = True


class Refresh(_Body):
    duration: int = Field(default=0, ge=0, le=3600)


def _refuse_missing_features(body: NewSandbox) -> None:
    """Fields of features firebox lacks: refused by name, never silently dropped."""
    if body.auto_pause_memory is False:
        raise ApiError(
            "invalid_argument",
            "autoPauseMemory=false (a pause that keeps the disk only) is not available in "
            "firebox: a pause keeps memory and disk; leave it out",
        )
    if body.mcp:
        raise ApiError("invalid_argument", "MCP gateways in a sandbox are not available")
    if body.volume_mounts:
        raise ApiError("invalid_argument", "volume mounts are not available in firebox")
    net = body.network
    if net is not None and (net.egress_proxy or net.mask_request_host or net.rules):
        raise ApiError(
            "invalid_argument",
            "network.egressProxy, maskRequestHost and rules are not available in firebox; "
            "use allowOut / denyOut",
        )


def settings_of(body: NewSandbox) -> SandboxSettings:
    _refuse_missing_features(body)
    network = None
    net = body.network
    # E2B's ports are public unless asked otherwise; firebox's answer only the traffic token
    # unless allowPublicTraffic is true (docs/PORTS.md)
    if net is not None and (net.allow_out or net.deny_out or net.allow_public_traffic):
        network = Network(
            allow_out=net.allow_out,
            deny_out=net.deny_out,
            allow_public_traffic=bool(net.allow_public_traffic),
        )
    try:
        return SandboxSettings(
            template=TEMPLATE_ALIASES.get(body.template_id, body.template_id),
            timeout=max(1, min(body.timeout, MAX_TIMEOUT)),
            metadata=body.metadata,
            envs=body.env_vars,
            allow_internet_access=bool(body.allow_internet_access),
            network=network,
            lifecycle=Lifecycle(
                on_timeout="pause" if body.auto_pause else "kill",
                auto_resume=body.auto_resume is not None and body.auto_resume.enabled,
            ),
        )
    except ValidationError as e:
        problem = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ApiError("invalid_argument", f"invalid sandbox settings: {problem}") from None


# -- answers -------------------------------------------------------------------------------------


def sandbox_created(live: LiveSandbox, domain: str) -> dict[str, Any]:
    """E2B's ``Sandbox``: what create and connect answer. ``domain``, the daemon's preview
    domain, is what E2B's ``get_host`` builds a port's host name from (server/ports)."""
    return {
        "templateID": live.spec.template,
        "sandboxID": live.id,
        "clientID": "firebox",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": live.access_token,
        "trafficAccessToken": live.traffic_token,
        "domain": domain,
    }


def sandbox_listed(live: LiveSandbox) -> dict[str, Any]:
    """E2B's ``ListedSandbox``."""
    limits = live.spec.limits
    return {
        "templateID": live.spec.template,
        "alias": live.settings.template,
        "sandboxID": live.id,
        "clientID": "firebox",
        "startedAt": iso(live.started_at),
        "endAt": iso(live.end_at),
        "cpuCount": max(1, round(limits.cpu_count)),
        "memoryMB": limits.memory_mb,
        "diskSizeMB": limits.disk_mb,
        "metadata": dict(live.settings.metadata),
        "state": live.state,
        "envdVersion": ENVD_VERSION,
    }


def sandbox_detail(live: LiveSandbox, domain: str) -> dict[str, Any]:
    """E2B's ``SandboxDetail``."""
    return {
        **sandbox_listed(live),
        "envdAccessToken": live.access_token,
        "allowInternetAccess": live.policy.allow_internet_access,
        "domain": domain,
        "network": {
            "allowPublicTraffic": live.public_traffic,
            "allowOut": [r.text for r in live.policy.allow_out],
            "denyOut": [r.text for r in live.policy.deny_out],
        },
        "lifecycle": {
            "autoResume": live.settings.lifecycle.auto_resume,
            "onTimeout": live.settings.lifecycle.on_timeout,
        },
    }


def _extend(mgr: SandboxManager, live: LiveSandbox, seconds: int) -> None:
    """Keep a sandbox for at least ``seconds`` more: never shortens its life."""
    if time.time() + seconds > live.end_at:
        mgr.set_timeout(live.owner, live.id, max(1, min(seconds, MAX_TIMEOUT)))


# -- routes --------------------------------------------------------------------------------------

router = APIRouter()


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)  # v2: no `secure` (always secure, as here)
async def create(
    body: NewSandbox, caller: Caller, mgr: Manager, request: Request
) -> dict[str, Any]:
    snapshots = request.app.state.snapshots
    if snapshots.by_id(caller.id, body.template_id) is not None:  # E2B: a snapshot's id
        settings = settings_of(body.model_copy(update={"template_id": DEFAULT_TEMPLATE}))
        live = await snapshots.create(caller.id, body.template_id, settings)
    else:
        live = await mgr.create(caller.id, settings_of(body))
    return sandbox_created(live, mgr.config.preview_domain)


@router.get("/sandboxes")
async def list_v1(caller: Caller, mgr: Manager, metadata: str | None = None) -> list[Any]:
    q = listing.Query(metadata=listing.parse_metadata(metadata), newest_first=True)
    return [sandbox_listed(s) for s in listing.select(mgr, caller.id, q).sandboxes]


@router.get("/v2/sandboxes")
async def list_v2(
    caller: Caller,
    mgr: Manager,
    response: Response,
    metadata: str | None = None,
    state: str | None = None,
    order: str | None = None,
    started_after: datetime | None = Query(default=None, alias="startedAfter"),
    template: str | None = None,
    limit: int = Query(default=PAGE_MAX, ge=1, le=PAGE_MAX),
    next_token: str | None = Query(default=None, alias="nextToken"),
) -> list[Any]:
    templates = None
    if template is not None:
        templates = frozenset({template, TEMPLATE_ALIASES.get(template, template)})
    q = listing.Query(
        metadata=listing.parse_metadata(metadata),
        states=listing.parse_states(state),
        started_after=started_after,
        templates=templates,
        newest_first=listing.parse_order(order, "desc"),  # E2B's default: newest first
        limit=limit,
        next_token=next_token,
    )
    page = listing.select(mgr, caller.id, q)
    response.headers["X-Total-Running"] = str(page.matching)
    if page.next_token:
        response.headers["X-Next-Token"] = page.next_token
    return [sandbox_listed(s) for s in page.sandboxes]


@router.get("/sandboxes/{sandbox_id}")
async def get(sandbox_id: str, caller: Caller, mgr: Manager) -> dict[str, Any]:
    return sandbox_detail(mgr.get(caller.id, sandbox_id), mgr.config.preview_domain)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, caller: Caller, mgr: Manager) -> Response:
    await mgr.kill(caller.id, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: Timeout, caller: Caller, mgr: Manager) -> Response:
    live = mgr.get(caller.id, sandbox_id)
    mgr.set_timeout(live.owner, live.id, max(1, min(body.timeout, MAX_TIMEOUT)))
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204)
async def refresh(sandbox_id: str, body: Refresh, caller: Caller, mgr: Manager) -> Response:
    _extend(mgr, mgr.get(caller.id, sandbox_id), body.duration)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/connect")
@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect(sandbox_id: str, body: Connect, caller: Caller, mgr: Manager) -> JSONResponse:
    """As E2B's: a paused sandbox is resumed (201), a running one's timeout only extended."""
    live = mgr.get(caller.id, sandbox_id)
    resumed = await mgr.resume(caller.id, sandbox_id, _seconds(body.timeout))
    answer = sandbox_created(live, mgr.config.preview_domain)
    return JSONResponse(answer, status_code=201 if resumed else 200)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(
    sandbox_id: str, caller: Caller, mgr: Manager, body: PauseRequest | None = None
) -> Response:
    if body is not None and not body.memory:
        raise ApiError(
            "invalid_argument",
            "memory=false (a pause that keeps the disk only) is not available in firebox: a "
            "pause keeps memory and disk; leave it out",
        )
    live = mgr.get(caller.id, sandbox_id)
    if live.state == "paused":  # E2B answers so for a second pause
        raise ApiError("conflict", f"sandbox {sandbox_id} is already paused")
    await mgr.pause(caller.id, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201)
async def resume(
    sandbox_id: str, caller: Caller, mgr: Manager, body: Resumed | None = None
) -> dict[str, Any]:
    """E2B's older resume: only a paused sandbox (409 for a running one)."""
    live = mgr.get(caller.id, sandbox_id)
    if live.state != "paused":
        raise ApiError("conflict", f"sandbox {sandbox_id} is not paused; connect to it instead")
    timeout = body.timeout if body is not None else None
    await mgr.resume(caller.id, sandbox_id, _seconds(timeout) if timeout else None)
    return sandbox_created(live, mgr.config.preview_domain)


def _seconds(timeout: int) -> int:
    return max(1, min(timeout, MAX_TIMEOUT))


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(
    sandbox_id: str, body: NetworkUpdate, caller: Caller, mgr: Manager
) -> Response:
    """As E2B's: the rules are replaced as a whole (what the body leaves out is cleared);
    internet access stays as created unless the body says. The floor (private, loopback,
    link-local, the host's own addresses) stays closed whatever it says."""
    live = mgr.get(caller.id, sandbox_id)
    if body.dns_servers or body.egress_proxy or body.rules:
        raise ApiError(
            "invalid_argument",
            "dnsServers, egressProxy and rules are not available in firebox; use allowOut / "
            "denyOut / allow_internet_access",
        )
    now = live.policy
    network = Network(allow_out=body.allow_out or [], deny_out=body.deny_out or [])
    internet = now.allow_internet_access
    if body.allow_internet_access is not None:
        internet = body.allow_internet_access
    settings = live.settings.model_copy(
        update={"network": network, "allow_internet_access": internet}
    )
    await mgr.set_network(caller.id, live.id, settings)
    return Response(status_code=204)


@router.api_route("/sandboxes/{sandbox_id}/{feature}", methods=["GET", "POST"])
async def not_yet(sandbox_id: str, feature: str, caller: Caller, mgr: Manager) -> Response:
    mgr.get(caller.id, sandbox_id)  # another key's sandbox stays a 404, whatever the route
    what = NOT_YET.get(feature)
    if what is None:
        raise ApiError("not_found", f"no route /sandboxes/{{id}}/{feature} in E2B's API")
    raise ApiError(
        "invalid_argument", f"{what} is not available in firebox yet (docs/E2B.md lists what is)"
    )


# -- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    """E2B's error shape: ``{"code": <HTTP status>, "message": ...}``."""
    return JSONResponse({"code": status, "message": message}, status_code=status)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    answer = _error(exc.status, exc.message)
    answer.headers.update(exc.headers)
    return answer


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problem = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors()
    )
    return _error(400, f"invalid request: {problem}")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _error(exc.status_code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug: E2B's shape still (E2B's SDKs parse a 500's body as JSON). The exception goes on
    # up to the daemon's app, whose handler logs it.
    return _error(500, f"internal error ({type(exc).__name__}); see the daemon's log")


def control_app() -> FastAPI:
    """The control API as its own app (mounted at /e2b): E2B's error shape, not firebox's.
    Its state is the daemon app's (create_app shares it)."""
    app = FastAPI(title="firebox: E2B control API", openapi_url=None, docs_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
    # first: its /sandboxes/metrics and /sandboxes/{id}/metrics would otherwise be taken by
    # GET /sandboxes/{id} and by the "not available yet" catch-all
    app.include_router(metrics.router)
    # E2B's template API; imported here, as it imports this module's ENVD_VERSION. Names
    # first: the builds' refusal of E2B's first build calls (POST /templates/{id}) would take
    # POST /templates/tags
    from firebox.server.e2b import snapshots, template_names, templates

    app.include_router(snapshots.router)  # before template_names: DELETE of a snapshot
    app.include_router(template_names.router)
    app.include_router(templates.router)
    app.include_router(router)
    return app
