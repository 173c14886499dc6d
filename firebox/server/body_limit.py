"""A cap on request bodies, applied before anything reads them (authentication included).

FastAPI reads a JSON body whole before it runs any dependency, so without this an anonymous
client could make the daemon hold a body of any size. File uploads are exempt: they are
streamed into the sandbox as they arrive and never held (see files.py).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_BODY = 16 * 1024 * 1024
_UPLOAD = re.compile(r"^/sandboxes/[^/]+/files$")
# a template's COPY files, firebox's and E2B's (e2b/templates.py): streamed to disk, capped there
_TEMPLATE_FILES = re.compile(r"^/templates/files/[^/]+$|^/e2b/templates/[^/]+/files/[^/]+$")
_E2B_UPLOAD = "/files"  # E2B's envd upload (POST), streamed the same way (e2b/envd/files_http.py)


def _too_large() -> HTTPException:
    return HTTPException(
        413,
        f"request body over {MAX_BODY >> 20} MiB; send large data as a file "
        "(PUT /sandboxes/{id}/files streams it)",
    )


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streamed_upload(scope):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _reject(send, self.max_body)
                return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:  # a chunked body that claimed no length
                    raise _too_large()
            return message

        await self.app(scope, limited, send)


def _streamed_upload(scope: Scope) -> bool:
    method, path = scope["method"], scope["path"]
    if method == "PUT" and _TEMPLATE_FILES.match(path):
        return True
    return (method == "PUT" and bool(_UPLOAD.match(path))) or (
        method == "POST" and path == _E2B_UPLOAD
    )


async def _reject(send: Send, max_body: int) -> None:
    import json

    from firebox.server.errors import body

    payload = json.dumps(body("too_large", str(_too_large().detail))).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
