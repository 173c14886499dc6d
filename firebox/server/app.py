"""The daemon's ASGI application: wiring only; each API resource lives in its own module, and
the daemon's life (start, serve, stop) is daemon.py's."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from firebox.server import (
    code,
    commands,
    errors,
    files,
    metrics_routes,
    sandboxes,
    snapshot_routes,
    terminals,
)
from firebox.server.body_limit import BodyLimit
from firebox.server.dashboard import routes as dashboard
from firebox.server.e2b.control import control_app
from firebox.server.e2b.routing import SandboxTraffic
from firebox.server.e2b.sandbox_app import SandboxApp
from firebox.server.mcp import endpoint as mcp_endpoint
from firebox.server.models import ErrorBody, Health
from firebox.server.ports import routes as port_routes
from firebox.server.ports.routing import PortTraffic
from firebox.server.templates import routes as templates
from firebox.server.timing import ServerTiming
from firebox.version import __version__


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made to say what the daemon really does: invalid requests are 400
    (never FastAPI's 422), and streamed answers have only their streamed media type."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for item in doc["paths"].values():
            for op in item.values():
                responses = op.get("responses", {})
                responses.pop("422", None)
                content = responses.get("200", {}).get("content", {})
                if len(content) > 1 and content.get("application/json", {}).get("schema") == {}:
                    del content["application/json"]
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app() -> FastAPI:
    """The API, wiring only: what it serves with (``app.state.manager``, ``registry``,
    ``backend``) is set by the daemon once it has started (daemon.py)."""
    app = FastAPI(
        title="firebox",
        version=__version__,
        description="Sandboxes for untrusted, LLM-generated code. See docs/API.md.",
        responses={status: {"model": ErrorBody} for status in sorted(set(errors.STATUS.values()))},
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    # E2B's in-sandbox requests (an E2b-Sandbox-Id header) never reach firebox's own routes
    app.add_middleware(SandboxTraffic, sandbox_app=SandboxApp(), state=app.state)
    app.add_middleware(BodyLimit)  # outside the E2B edge too: no body is held past the cap
    app.add_middleware(ServerTiming)  # it times everything else
    # outermost: a sandbox port's traffic streams through untouched by the API's middleware
    app.add_middleware(PortTraffic, state=app.state)
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)

    @app.get("/health", response_model=Health, tags=["health"])
    async def health() -> Health:
        return Health(status="ok", version=__version__, backend=app.state.backend.name)

    app.include_router(sandboxes.router)
    app.include_router(commands.router)
    app.include_router(terminals.router)
    app.include_router(files.router)
    app.include_router(code.router)
    app.include_router(metrics_routes.router)
    app.include_router(templates.router)
    app.include_router(snapshot_routes.router)
    app.include_router(port_routes.router)
    app.include_router(dashboard.router)
    mcp_route, app.state.mcp = mcp_endpoint.route(app.state)
    app.router.routes.append(mcp_route)
    e2b = control_app()
    e2b.state = app.state  # the same manager, registry and backend
    app.mount("/e2b", e2b)
    return app
