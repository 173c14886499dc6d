"""E2B's ``/files``: download (GET) and multipart / octet-stream / gzip upload (POST).

Both stream, as firebox's own file routes do (server/files.py): a download goes out chunk by
chunk as the agent reads it, an upload goes into the sandbox as it arrives (with the same idle
deadline), and neither is ever held whole by the daemon. A request let in by a signed URL
(E2B's ``download_url`` / ``upload_url``) is only good for the operation it was signed for.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from firebox.server.agent_calls import agent_call, ensure_capacity
from firebox.server.e2b import access
from firebox.server.e2b.envd.multipart import MultipartReader, boundary_of
from firebox.server.e2b.envd.process import USERS
from firebox.server.errors import ApiError
from firebox.server.files import _body as upload_body
from firebox.server.files import check_path, decoded, file_content, upload_metadata
from firebox.server.manager import LiveSandbox

router = APIRouter()


def _allowed(request: Request, operation: str) -> LiveSandbox:
    sbx = access.current()
    if not access.signed_operation(sbx, request.query_params, operation):
        raise ApiError(
            "unauthenticated",
            f"this URL was not signed to {operation} files; ask the SDK for an "
            f"{'upload_url' if operation == 'write' else 'download_url'}",
        )
    return sbx


def _user(request: Request) -> str:
    user = request.query_params.get("username") or "user"
    if user not in USERS:
        # envd answers an unknown user with 401
        raise ApiError(
            "unauthenticated", f"no user {user!r} in a firebox sandbox; use 'user' or 'root'"
        )
    return user


@router.get("/files")
async def download(request: Request) -> StreamingResponse:
    sbx = _allowed(request, "read")
    user = _user(request)
    path = check_path(request.query_params.get("path") or "")
    if not path:
        raise ApiError("invalid_argument", "name the file to download in the path parameter")
    body = await file_content(sbx, path, user)
    headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{_quoted(path)}"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        body = _gzipped(body)
    return StreamingResponse(body, media_type="application/octet-stream", headers=headers)


@router.post("/files")
async def upload(request: Request) -> list[dict[str, Any]]:
    sbx = _allowed(request, "write")
    user = _user(request)
    metadata = upload_metadata(request)
    query_path = check_path(request.query_params.get("path") or "")
    body = decoded(request, upload_body(request))
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/"):
        if not query_path:
            raise ApiError("invalid_argument", "name the file to write in the path parameter")
        return [await _write(sbx, query_path, user, body, metadata)]
    written: list[dict[str, Any]] = []
    reader = MultipartReader(body, boundary_of(ctype))
    async for part, content in reader.parts():
        if query_path and written:
            raise ApiError(
                "invalid_argument",
                "a path parameter names one file; to upload several, leave it out and name "
                "each file by its part's filename",
            )
        path = query_path or check_path(part.filename or "")
        if not path:
            raise ApiError("invalid_argument", "each uploaded part needs a filename: its path")
        written.append(await _write(sbx, path, user, content, metadata))
    if not written:
        raise ApiError("invalid_argument", "the multipart upload holds no file")
    return written


async def _write(
    sbx: LiveSandbox,
    path: str,
    user: str,
    content: AsyncIterator[bytes],
    metadata: dict[str, str],
) -> dict[str, Any]:
    ensure_capacity(sbx)
    raw = await agent_call(sbx, sbx.agent.write_file(path, user, content, metadata=metadata))
    try:
        answer: dict[str, Any] = {"name": str(raw["name"]), "path": str(raw["path"])}
    except (KeyError, TypeError) as e:
        raise ApiError("sandbox_error", f"the sandbox's agent sent a malformed entry: {e}") from e
    answer["type"] = "file"
    if raw.get("metadata"):
        answer["metadata"] = raw["metadata"]
    return answer


async def _gzipped(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    async for chunk in body:
        if out := deflate.compress(chunk):
            yield out
    yield deflate.flush()


def _quoted(path: str) -> str:
    from urllib.parse import quote

    return quote(path.rsplit("/", 1)[-1], safe="")
