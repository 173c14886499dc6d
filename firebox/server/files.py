"""Files: streamed download and upload, list, stat, remove, rename, mkdir, watchers.

Paths are passed to the agent untouched and interpreted inside the sandbox, where the host's
filesystem does not exist: ``..``, absolute paths and symlinks all resolve within the sandbox's
own mount namespace. The daemon only rejects what cannot be a path at all.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.server import watchers
from firebox.server.agent_calls import agent_call, agent_error, ensure_capacity
from firebox.server.deps import Sandbox
from firebox.server.errors import ApiError, StreamAborted
from firebox.server.manager import LiveSandbox
from firebox.server.models import (
    CreateWatcher,
    EntryInfo,
    FilesystemEvent,
    MadeDir,
    MakeDir,
    RenameFile,
    WatcherCreated,
    iso,
)

router = APIRouter(tags=["files"])
METADATA_PREFIX = "x-metadata-"

log = logging.getLogger("firebox.files")
UPLOAD_IDLE_DEADLINE = 60.0
BINARY = {"type": "string", "format": "binary"}


User = Literal["user", "root"]
PathQuery = Query(min_length=1, max_length=4096, description="path inside the sandbox")


def check_path(path: str) -> str:
    if "\0" in path:
        raise ApiError("invalid_argument", "a path cannot contain a NUL byte")
    return path


def entry(raw: Any) -> EntryInfo:
    # The agent runs inside the sandbox: its replies are checked, never trusted to be well-formed.
    try:
        return EntryInfo(**{**raw, "modified_time": iso(float(raw["modified_time"]))})
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ApiError("sandbox_error", f"the sandbox's agent sent a malformed entry: {e}") from e


@router.get(
    "/sandboxes/{sandbox_id}/files",
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download(sbx: Sandbox, path: str = PathQuery, user: User = "user") -> StreamingResponse:
    body = await file_content(sbx, check_path(path), user)
    return StreamingResponse(body, media_type="application/octet-stream")


async def file_content(sbx: LiveSandbox, path: str, user: str) -> AsyncIterator[bytes]:
    """A file's bytes, streamed from the agent, for a download of either edge. The first chunk
    is read before this returns, so a missing file is an error answer, not a broken 200."""
    ensure_capacity(sbx)
    chunks = sbx.agent.read_file(path, user).__aiter__()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        first = b""
    except (AgentError, AgentGone) as e:
        raise agent_error(e, sbx) from None

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        try:
            async for chunk in chunks:
                yield chunk
        except (AgentError, AgentGone) as e:
            # The answer has begun: all that is left is to end it early, which the client sees
            # as a truncated body (its length does not add up), never as a complete file.
            log.warning("download of %s from %s broke off: %s", path, sbx.id, e)
            raise StreamAborted(str(e)) from None

    return body()


@router.put(
    "/sandboxes/{sandbox_id}/files",
    response_model=EntryInfo,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    request: Request, sbx: Sandbox, path: str = PathQuery, user: User = "user"
) -> EntryInfo:
    # request.stream() hands the body over as it arrives: a large upload is never held whole.
    ensure_capacity(sbx)
    chunks = decoded(request, _body(request))
    metadata = upload_metadata(request) or None
    raw = await agent_call(
        sbx, sbx.agent.write_file(check_path(path), user, chunks, metadata=metadata)
    )
    return entry(raw)


def upload_metadata(request: Request) -> dict[str, str]:
    """``X-Metadata-<key>`` headers (E2B's names): the file's metadata, keys lowercased; the
    first of repeated headers wins, as in E2B's envd. For uploads of both edges."""
    found: dict[str, str] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(METADATA_PREFIX):
            key = name[len(METADATA_PREFIX) :].lower()
            if not key:
                raise ApiError("invalid_argument", "an X-Metadata- header needs a key after it")
            found.setdefault(key, value)
    return found


async def gunzipped(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # bounded steps: a small body that inflates hugely still goes out a chunk at a time
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        async for chunk in body:
            data = chunk
            while data:
                out = inflate.decompress(data, protocol.CHUNK)
                data = inflate.unconsumed_tail
                if out:
                    yield out
        if not inflate.eof:
            raise ApiError("invalid_argument", "the gzip body ended early: send the whole stream")
    except zlib.error as e:
        raise ApiError("invalid_argument", f"the body is not valid gzip: {e}") from None


def decoded(request: Request, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """An upload's bytes as the file gets them: a gzip ``Content-Encoding`` inflated."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        return gunzipped(body)
    if encoding not in ("", "identity"):
        raise ApiError("invalid_argument", f"Content-Encoding {encoding!r}: send gzip or none")
    return body


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, with an idle deadline: a client that stalls mid-upload
    does not hold the sandbox's channel (and this request) forever. An interrupted upload
    leaves nothing behind: the agent only renames a complete file into place."""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), UPLOAD_IDLE_DEADLINE)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                "timeout", f"the upload stalled: no data for {UPLOAD_IDLE_DEADLINE:.0f} s"
            ) from None
        except ClientDisconnect:
            raise ApiError("invalid_argument", "the client went away mid-upload") from None
        yield chunk


@router.get("/sandboxes/{sandbox_id}/files/list", response_model=list[EntryInfo])
async def list_dir(
    sbx: Sandbox, path: str = PathQuery, depth: int = Query(1, ge=1, le=64), user: User = "user"
) -> list[EntryInfo]:

    raw = await agent_call(
        sbx, sbx.agent.call(protocol.FileList(path=check_path(path), user=user, depth=depth))
    )
    if not isinstance(raw, list):
        raise ApiError("sandbox_error", "the sandbox's agent sent a malformed listing")
    return [entry(e) for e in raw]


@router.get("/sandboxes/{sandbox_id}/files/stat", response_model=EntryInfo)
async def stat(sbx: Sandbox, path: str = PathQuery, user: User = "user") -> EntryInfo:

    return entry(
        await agent_call(sbx, sbx.agent.call(protocol.FileStat(path=check_path(path), user=user)))
    )


@router.delete("/sandboxes/{sandbox_id}/files", status_code=204)
async def remove(sbx: Sandbox, path: str = PathQuery, user: User = "user") -> Response:

    await agent_call(sbx, sbx.agent.call(protocol.FileRemove(path=check_path(path), user=user)))
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/files/rename", response_model=EntryInfo)
async def rename(body: RenameFile, sbx: Sandbox) -> EntryInfo:

    msg = protocol.FileRename(
        old_path=check_path(body.old_path), new_path=check_path(body.new_path), user=body.user
    )
    return entry(await agent_call(sbx, sbx.agent.call(msg)))


@router.post("/sandboxes/{sandbox_id}/files/mkdir", response_model=MadeDir)
async def make_dir(body: MakeDir, sbx: Sandbox) -> MadeDir:

    created = await agent_call(
        sbx, sbx.agent.call(protocol.FileMakeDir(path=check_path(body.path), user=body.user))
    )
    return MadeDir(created=bool(created))


@router.post("/sandboxes/{sandbox_id}/watchers", status_code=201, response_model=WatcherCreated)
async def create_watcher(body: CreateWatcher, sbx: Sandbox) -> WatcherCreated:
    watcher = await agent_call(
        sbx, watchers.add(sbx, check_path(body.path), body.user, body.recursive)
    )
    return WatcherCreated(watcher_id=watcher.id)


@router.get(
    "/sandboxes/{sandbox_id}/watchers/{watcher_id}/events", response_model=list[FilesystemEvent]
)
async def watcher_events(watcher_id: str, sbx: Sandbox) -> list[FilesystemEvent]:
    watcher = sbx.watchers.get(watcher_id)
    if watcher is None:
        raise ApiError("not_found", f"no watcher {watcher_id} in sandbox {sbx.id}")
    events = [FilesystemEvent(**e) for e in watcher.events]
    watcher.events.clear()
    return events


@router.delete("/sandboxes/{sandbox_id}/watchers/{watcher_id}", status_code=204)
async def delete_watcher(watcher_id: str, sbx: Sandbox) -> Response:
    await watchers.remove(sbx, watcher_id)
    return Response(status_code=204)
