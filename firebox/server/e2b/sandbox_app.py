"""The app that answers E2B's in-sandbox requests (routing.py sends them here, with the access
decision made): the Connect RPC services by their paths, and E2B's HTTP routes."""

from __future__ import annotations

from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from firebox.server.e2b import access, interpreter
from firebox.server.e2b.envd import files_http
from firebox.server.e2b.envd.errors import http_error_handler
from firebox.server.e2b.envd.filesystem import FilesystemService
from firebox.server.e2b.envd.process import ProcessService
from firebox.server.e2b.envd.proto.filesystem.filesystem_connect import (
    FilesystemASGIApplication,
)
from firebox.server.e2b.envd.proto.process.process_connect import ProcessASGIApplication
from firebox.server.errors import ApiError, unexpected_handler

# Connect's own limit on one request message; file contents travel over /files, not RPC.
RPC_READ_MAX = 4 << 20


def _app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(ApiError, http_error_handler)
    # the daemon's own last resort: a stream broken off (StreamAborted) stays out of the log
    # as noise, anything else is logged once and answered 500
    app.add_exception_handler(Exception, unexpected_handler)

    @app.get("/health", status_code=204)
    async def health() -> Response:
        access.current()
        return Response(status_code=204)

    return app


def _interpreter_app() -> FastAPI:
    """Port 49999: the code interpreter, and nothing of the sandbox daemon's."""
    app = _app()
    app.include_router(interpreter.router)
    return app


def _envd_http_app() -> FastAPI:
    """Port 49983's HTTP routes: the sandbox daemon's."""
    app = _app()

    @app.get("/envs")
    async def envs() -> dict[str, str]:
        return dict(access.current().envs)

    @app.get("/metrics")
    async def metrics() -> dict[str, int | float | None]:
        """envd's view of its sandbox, from the daemon's sampler (server/metrics.py): the
        latest sample; 503 until the first one (never made-up zeros)."""
        sbx = access.current()
        sample = access.manager().metrics.latest(sbx.id)
        if sample is None:
            raise ApiError(
                "unavailable", "no sample of this sandbox yet: the first comes 5 to 10 s in"
            )
        mib = 1 << 20
        return {
            "ts": int(sample.timestamp),
            "cpu_count": max(1, round(sample.cpu_count)),
            "cpu_used_pct": sample.cpu_used_pct,
            "mem_total": sample.mem_total,
            "mem_used": sample.mem_used,
            "mem_cache": sample.mem_cache,
            "mem_total_mib": sample.mem_total // mib if sample.mem_total is not None else None,
            "mem_used_mib": sample.mem_used // mib,
            "disk_used": sample.disk_used,
            "disk_total": sample.disk_total,
        }

    app.include_router(files_http.router)
    return app


class SandboxApp:
    """By port first, as E2B's proxy routes: the in-sandbox daemon's (Connect services by
    path prefix, then its HTTP routes), or the code interpreter's. Any other port never
    comes here: the port proxy takes it first (server/ports/routing.py)."""

    def __init__(self) -> None:
        self.process = ProcessASGIApplication(ProcessService(), read_max_bytes=RPC_READ_MAX)
        self.filesystem = FilesystemASGIApplication(
            FilesystemService(), read_max_bytes=RPC_READ_MAX
        )
        self.http = _envd_http_app()
        self.interpreter = _interpreter_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        port = access.current_port()
        app: ASGIApp = self.http
        if port == access.INTERPRETER_PORT:
            app = self.interpreter
        elif path.startswith("/process.Process/"):
            app = self.process
        elif path.startswith("/filesystem.Filesystem/"):
            app = self.filesystem
        await app(scope, receive, send)
