"""The daemon's ASGI application: wiring only; each API resource lives in its own module."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

import firebox
from firebox import images
from firebox.backends.base import BackendError
from firebox.backends.select import select
from firebox.server import code, commands, errors, files, sandboxes
from firebox.server.auth import ensure_admin_key
from firebox.server.body_limit import BodyLimit
from firebox.server.boot import spec_for
from firebox.server.config import ServerConfig
from firebox.server.manager import SandboxManager
from firebox.server.models import ErrorBody, Health
from firebox.server.registry import Registry
from firebox.server.timing import ServerTiming

log = logging.getLogger("firebox.server")


def prepare_home(config: ServerConfig) -> None:
    # 0711: by default the image cache lives inside (/var/lib/firebox/images) and sandboxes'
    # unprivileged host uid must traverse to it; the secrets here (admin.key, firebox.db) are
    # 0600 and the directory cannot be listed.
    config.home.mkdir(parents=True, exist_ok=True)
    os.chmod(config.home, 0o711)


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


async def _ready_manager(config: ServerConfig, registry: Registry) -> SandboxManager:
    """The backend, got ready (a microVM's template snapshot is made here, once). With
    ``auto`` a backend that works but cannot get ready (say, its snapshot fails) gives way to
    the next, loudly; a backend asked for by name either gets ready or the daemon stops."""
    ruled_out: dict[str, str] = {}
    while True:
        backend = select(config.isolation, config.home, config.uid_base, ruled_out)
        log.warning("isolation: %s (%s)", backend.name, backend.availability().reason)
        manager = SandboxManager(config, registry, backend)
        await manager.reclaim()
        try:
            await backend.prepare(spec_for(images.DEFAULT_TEMPLATE, manager.default_limits))
            return manager
        except BackendError as e:
            log.error("isolation %s could not get ready: %s", backend.name, e)
            await backend.close()
            if config.isolation != "auto":
                raise
            ruled_out[backend.name] = f"could not get ready: {e}"


def create_app(config: ServerConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prepare_home(config)
        registry = Registry(config.db_path)
        ensure_admin_key(registry, config.admin_key_path)
        if config.build_image_on_start and images.image_path(images.DEFAULT_TEMPLATE) is None:
            log.warning("the guest image is missing; building it now (a few minutes, once)")
            await asyncio.to_thread(
                images.build_image,
                images.DEFAULT_TEMPLATE,
                lambda m: log.warning("image: %s", m),
            )
        manager = await _ready_manager(config, registry)
        manager.start_pool([images.DEFAULT_TEMPLATE])
        app.state.registry = registry
        app.state.manager = manager
        app.state.backend = manager.backend
        try:
            yield
        finally:
            await manager.shutdown()
            registry.close()

    app = FastAPI(
        title="firebox",
        version=firebox.__version__,
        description="Sandboxes for untrusted, LLM-generated code. See docs/API.md.",
        lifespan=lifespan,
        responses={status: {"model": ErrorBody} for status in sorted(set(errors.STATUS.values()))},
    )
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit)
    app.add_middleware(ServerTiming)  # the outermost: it times everything else
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_handler)

    @app.get("/health", response_model=Health, tags=["health"])
    async def health() -> Health:
        return Health(status="ok", version=firebox.__version__, backend=app.state.backend.name)

    app.include_router(sandboxes.router)
    app.include_router(commands.router)
    app.include_router(files.router)
    app.include_router(code.router)
    return app
