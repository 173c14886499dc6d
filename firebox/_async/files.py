"""``sandbox.files``: read, write, list and watch files in a sandbox.

Relative paths are taken against the user's home, ``/home/user``; every operation runs with the
permissions of ``user`` ("user", uid 1000, or "root").
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import IO, Any, Literal, cast, overload

import httpx

from firebox._async._http import AsyncApiClient
from firebox._async.watch import AsyncWatchHandle
from firebox._core.errors import error_from_transport
from firebox._core.models import EntryInfo, FilesystemEvent, OutputHandler, WriteEntry
from firebox._core.requests import file_params, metadata_headers, sandbox_path, upload_length
from firebox._core.responses import parse_entry_info, parse_field, parse_list
from firebox.exceptions import NotFoundException, SandboxNotFoundException

# What ``write`` accepts. File objects and iterators are streamed, never read whole.
WriteData = str | bytes | IO[bytes] | IO[str] | AsyncIterable[bytes]

CHUNK = 256 * 1024  # bytes per read from a file object being uploaded


class AsyncFilesystem:
    """Files of one sandbox; reached as ``sandbox.files``."""

    def __init__(self, sandbox_id: str, api: AsyncApiClient) -> None:
        self._sandbox_id = sandbox_id
        self._api = api

    @overload
    async def read(
        self,
        path: str,
        format: Literal["text"] = "text",
        user: str = "user",
        request_timeout: float | None = None,
    ) -> str: ...

    @overload
    async def read(
        self,
        path: str,
        format: Literal["bytes"],
        user: str = "user",
        request_timeout: float | None = None,
    ) -> bytes: ...

    @overload
    async def read(
        self,
        path: str,
        format: Literal["stream"],
        user: str = "user",
        request_timeout: float | None = None,
    ) -> AsyncIterator[bytes]: ...

    async def read(
        self,
        path: str,
        format: Literal["text", "bytes", "stream"] = "text",
        user: str = "user",
        request_timeout: float | None = None,
    ) -> str | bytes | AsyncIterator[bytes]:
        """A file's content: as text (UTF-8), as bytes, or as a stream of byte chunks.

        A stream reads from the network as you iterate, so a file larger than memory can be
        copied out; iterate it to the end (or ``aclose()`` it) to free its connection.
        """
        url, params = self._url(), file_params(path, user)
        if format == "stream":
            response = await self._api.open_stream(
                "GET", url, params=params, timeout=request_timeout
            )
            return _iter_body(response, self._api.config.api_url)
        response = await self._api.request("GET", url, params=params, timeout=request_timeout)
        if format == "bytes":
            return response.content
        return response.content.decode("utf-8", "replace")

    async def write(
        self,
        path: str,
        data: WriteData,
        user: str = "user",
        request_timeout: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> EntryInfo:
        """Writes a file, creating it and its parent directories, or replacing its content.

        ``data`` is text (written as UTF-8), bytes, a file object opened for reading, or an
        iterator of byte chunks; file objects and iterators are streamed as they are read.
        ``metadata`` is kept with the file (``EntryInfo.metadata``), as E2B's.
        """
        headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
        headers.update(metadata_headers(metadata))
        content: bytes | AsyncIterator[bytes]
        if isinstance(data, str):
            content = data.encode()
        elif isinstance(data, bytes | bytearray | memoryview) and len(data) <= CHUNK:
            content = bytes(data)
        else:
            length = upload_length(data)
            if length is not None:
                headers["Content-Length"] = str(length)  # lets the daemon refuse early
            content = _upload_chunks(data, length)
        response = await self._api.request(
            "PUT",
            self._url(),
            params=file_params(path, user),
            content=content,
            headers=headers,
            timeout=request_timeout,
        )
        return parse_entry_info(response.json())

    async def write_files(
        self,
        files: builtins.list[WriteEntry],
        user: str = "user",
        request_timeout: float | None = None,
    ) -> builtins.list[EntryInfo]:
        """Writes several files, one after the other, as ``write`` does."""
        return [await self.write(f.path, f.data, user, request_timeout) for f in files]

    async def list(
        self,
        path: str,
        depth: int | None = 1,
        user: str = "user",
        request_timeout: float | None = None,
    ) -> builtins.list[EntryInfo]:
        """The entries of a directory, and of its subdirectories down to ``depth`` levels
        (None: one level, as E2B's)."""
        response = await self._api.request(
            "GET",
            self._url("list"),
            params=file_params(path, user, depth=depth or 1),
            timeout=request_timeout,
        )
        return [parse_entry_info(e) for e in parse_list(response.json(), "entries")]

    async def exists(
        self, path: str, user: str = "user", request_timeout: float | None = None
    ) -> bool:
        """Whether a file or directory exists at ``path``."""
        try:
            await self.get_info(path, user, request_timeout)
        except SandboxNotFoundException:
            raise
        except NotFoundException:
            return False
        return True

    async def get_info(
        self, path: str, user: str = "user", request_timeout: float | None = None
    ) -> EntryInfo:
        """What is at ``path``: type, size, permissions, owner, times."""
        response = await self._api.request(
            "GET", self._url("stat"), params=file_params(path, user), timeout=request_timeout
        )
        return parse_entry_info(response.json())

    async def remove(
        self, path: str, user: str = "user", request_timeout: float | None = None
    ) -> None:
        """Removes a file, or a directory with everything in it."""
        await self._api.request(
            "DELETE", self._url(), params=file_params(path, user), timeout=request_timeout
        )

    async def rename(
        self,
        old_path: str,
        new_path: str,
        user: str = "user",
        request_timeout: float | None = None,
    ) -> EntryInfo:
        """Moves a file or directory; returns what is now at ``new_path``."""
        response = await self._api.request(
            "POST",
            self._url("rename"),
            json={"old_path": old_path, "new_path": new_path, "user": user},
            timeout=request_timeout,
        )
        return parse_entry_info(response.json())

    async def make_dir(
        self, path: str, user: str = "user", request_timeout: float | None = None
    ) -> bool:
        """Creates a directory and its parents; False if it already existed."""
        response = await self._api.request(
            "POST",
            self._url("mkdir"),
            json={"path": path, "user": user},
            timeout=request_timeout,
        )
        return bool(parse_field(response.json(), "mkdir answer", "created", bool))

    async def watch_dir(
        self,
        path: str,
        on_event: OutputHandler[FilesystemEvent] | None = None,
        recursive: bool = False,
        user: str = "user",
        request_timeout: float | None = None,
    ) -> AsyncWatchHandle:
        """Starts watching a directory; collect what changed with ``get_new_events()``, or
        give ``on_event``, which is then called with each event as it comes (as E2B's)."""
        response = await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "watchers"),
            json={"path": path, "recursive": recursive, "user": user},
            timeout=request_timeout,
        )
        watcher_id = parse_field(response.json(), "watcher", "watcher_id", str)
        return AsyncWatchHandle(self._sandbox_id, watcher_id, self._api, on_event)

    def _url(self, *parts: str) -> str:
        return sandbox_path(self._sandbox_id, "files", *parts)


async def _iter_body(response: httpx.Response, api_url: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except httpx.HTTPError as e:
        raise error_from_transport(e, api_url) from e
    finally:
        await response.aclose()


async def _upload_chunks(data: Any, length: int | None) -> AsyncIterator[bytes]:
    """An upload body read piece by piece, never whole.

    At most ``length`` bytes are sent when it is known, because a file that grows while it is
    sent must not overrun the Content-Length already announced.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        # Sent in pieces, not whole: httpx's sync transport re-slices the unsent rest of one
        # big bytes body after every socket send, which made a 100 MB write cost ~0.5 s of
        # CPU copying (3× the rest of the upload).
        view = memoryview(data).cast("B")
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start : start + CHUNK])
        return
    read = getattr(data, "read", None)
    if not callable(read):
        async for piece in cast(AsyncIterable[bytes], data):
            yield bytes(piece)
        return
    remaining = length
    while remaining is None or remaining > 0:
        chunk = read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            break
        if isinstance(chunk, str):
            chunk = chunk.encode()
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk
