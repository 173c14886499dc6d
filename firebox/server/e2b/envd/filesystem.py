"""E2B's ``filesystem.Filesystem`` Connect service, onto the agent's file calls.

Each method names its sandbox through ``access.current()`` and its user through the Basic
``Authorization`` header (``user_of``), asks the agent what firebox's own API asks it, and
turns the answer into E2B's messages. E2B's SDKs read some outcomes from the error code
alone: ``exists`` is a Stat that did not end in NOT_FOUND, ``make_dir`` gives False on
ALREADY_EXISTS; the agent already removes a missing path without complaint, as envd does.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.request import RequestContext
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone, Watch
from firebox.server import watchers
from firebox.server.agent_calls import ensure_capacity
from firebox.server.e2b import access
from firebox.server.e2b.envd.errors import as_api_error, connect_errors
from firebox.server.e2b.envd.process import _keepalive_every, user_of
from firebox.server.e2b.envd.proto.filesystem import filesystem_pb as pb
from firebox.server.e2b.envd.proto.filesystem.filesystem_connect import Filesystem
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox

FILE_TYPES = {
    "file": pb.FileType.FILE,
    "dir": pb.FileType.DIRECTORY,
    "symlink": pb.FileType.SYMLINK,
}
EVENT_TYPES = {
    "create": pb.EventType.CREATE,
    "write": pb.EventType.WRITE,
    "remove": pb.EventType.REMOVE,
    "rename": pb.EventType.RENAME,
    "chmod": pb.EventType.CHMOD,
}


def entry_info(raw: Any) -> pb.EntryInfo:
    """An agent's EntryInfo dict as E2B's message. The agent runs inside the sandbox: a
    malformed answer is the sandbox's error, never the daemon's crash."""
    try:
        seconds = float(raw["modified_time"])
        metadata = raw.get("metadata") or {}
        return pb.EntryInfo(
            name=str(raw["name"]),
            # "other" (a FIFO, a socket) has no E2B type: its SDKs skip such entries
            type=FILE_TYPES.get(raw["type"], pb.FileType.UNSPECIFIED),
            path=str(raw["path"]),
            size=int(raw["size"]),
            mode=int(raw["mode"]),
            permissions=str(raw["permissions"]),
            owner=str(raw["owner"]),
            group=str(raw["group"]),
            modified_time=Timestamp.from_nanos(int(seconds * 1e9)),
            symlink_target=raw.get("symlink_target"),
            metadata={str(k): str(v) for k, v in metadata.items()},
        )
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as e:
        raise ApiError("sandbox_error", f"the sandbox's agent sent a malformed entry: {e}") from e


async def _stat(sbx: LiveSandbox, path: str, user: str) -> pb.EntryInfo:
    return entry_info(await sbx.agent.call(protocol.FileStat(path=_checked(path), user=user)))


def _checked(path: str) -> str:
    if not path:
        raise ApiError("invalid_argument", "name a path (relative paths start at the home)")
    if "\0" in path:
        raise ApiError("invalid_argument", "a path cannot contain a NUL byte")
    return path


class FilesystemService(Filesystem):
    async def stat(
        self, request: pb.StatRequest, ctx: RequestContext[pb.StatRequest, pb.StatResponse]
    ) -> pb.StatResponse:
        with connect_errors():
            entry = await _stat(access.current(), request.path, user_of(ctx))
        return pb.StatResponse(entry=entry)

    async def make_dir(
        self,
        request: pb.MakeDirRequest,
        ctx: RequestContext[pb.MakeDirRequest, pb.MakeDirResponse],
    ) -> pb.MakeDirResponse:
        with connect_errors():
            sbx, user = access.current(), user_of(ctx)
            msg = protocol.FileMakeDir(path=_checked(request.path), user=user)
            if not await sbx.agent.call(msg):
                raise ApiError("conflict", f"directory {request.path} already exists")
            entry = await _stat(sbx, request.path, user)
        return pb.MakeDirResponse(entry=entry)

    async def move(
        self, request: pb.MoveRequest, ctx: RequestContext[pb.MoveRequest, pb.MoveResponse]
    ) -> pb.MoveResponse:
        with connect_errors():
            sbx = access.current()
            msg = protocol.FileRename(
                old_path=_checked(request.source),
                new_path=_checked(request.destination),
                user=user_of(ctx),
            )
            entry = entry_info(await sbx.agent.call(msg))
        return pb.MoveResponse(entry=entry)

    async def list_dir(
        self,
        request: pb.ListDirRequest,
        ctx: RequestContext[pb.ListDirRequest, pb.ListDirResponse],
    ) -> pb.ListDirResponse:
        with connect_errors():
            sbx = access.current()
            # E2B's SDKs send depth 0 for "not given", which envd lists as depth 1
            msg = protocol.FileList(
                path=_checked(request.path), user=user_of(ctx), depth=max(1, request.depth)
            )
            raw = await sbx.agent.call(msg)
            if not isinstance(raw, list):
                raise ApiError("sandbox_error", "the sandbox's agent sent a malformed listing")
            entries = [entry_info(e) for e in raw]
        return pb.ListDirResponse(entries=entries)

    async def remove(
        self, request: pb.RemoveRequest, ctx: RequestContext[pb.RemoveRequest, pb.RemoveResponse]
    ) -> pb.RemoveResponse:
        with connect_errors():
            sbx = access.current()
            msg = protocol.FileRemove(path=_checked(request.path), user=user_of(ctx))
            await sbx.agent.call(msg)
        return pb.RemoveResponse()

    async def watch_dir(
        self,
        request: pb.WatchDirRequest,
        ctx: RequestContext[pb.WatchDirRequest, pb.WatchDirResponse],
    ) -> AsyncIterator[pb.WatchDirResponse]:
        with connect_errors():
            sbx, user = access.current(), user_of(ctx)
            ensure_capacity(sbx)
            root = await _stat(sbx, request.path, user) if request.include_entry else None
            watch = await sbx.agent.watch(_checked(request.path), user, request.recursive)
        yield _response("start", pb.WatchDirResponse.StartEvent())
        try:
            async for event in _watch_events(sbx, watch, _keepalive_every(ctx)):
                if event is None:
                    yield _response("keepalive", pb.WatchDirResponse.KeepAlive())
                    continue
                entry = None
                if root is not None:
                    entry = await _entry_of(sbx, root.path, str(event.name), user)
                fs_event = pb.FilesystemEvent(
                    name=protocol.display(str(event.name)),
                    type=EVENT_TYPES.get(str(event.type), pb.EventType.UNSPECIFIED),
                    entry=entry,
                )
                yield _response("filesystem", fs_event)
        except (AgentError, AgentGone) as e:
            # the agent ended the watch (its directory removed, events dropped): E2B's SDKs
            # hand the error to on_exit
            err = as_api_error(e)
            with connect_errors():
                raise err from None
        finally:
            await watch.cancel()

    async def create_watcher(
        self,
        request: pb.CreateWatcherRequest,
        ctx: RequestContext[pb.CreateWatcherRequest, pb.CreateWatcherResponse],
    ) -> pb.CreateWatcherResponse:
        with connect_errors():
            sbx = access.current()
            watcher = await watchers.add(
                sbx, _checked(request.path), user_of(ctx), request.recursive
            )
        return pb.CreateWatcherResponse(watcher_id=watcher.id)

    async def get_watcher_events(
        self,
        request: pb.GetWatcherEventsRequest,
        ctx: RequestContext[pb.GetWatcherEventsRequest, pb.GetWatcherEventsResponse],
    ) -> pb.GetWatcherEventsResponse:
        with connect_errors():
            sbx = access.current()
            watcher = sbx.watchers.get(request.watcher_id)
            if watcher is None:
                raise ApiError("not_found", f"no watcher {request.watcher_id} in this sandbox")
            events = [
                pb.FilesystemEvent(name=e["name"], type=EVENT_TYPES[e["type"]])
                for e in watcher.events
                if e["type"] in EVENT_TYPES
            ]
            watcher.events.clear()
            if not events and watcher.error is not None:
                raise ApiError("sandbox_error", f"the watcher ended: {watcher.error}")
        return pb.GetWatcherEventsResponse(events=events)

    async def remove_watcher(
        self,
        request: pb.RemoveWatcherRequest,
        ctx: RequestContext[pb.RemoveWatcherRequest, pb.RemoveWatcherResponse],
    ) -> pb.RemoveWatcherResponse:
        with connect_errors():
            await watchers.remove(access.current(), request.watcher_id)
        return pb.RemoveWatcherResponse()


def _response(kind: str, value: Any) -> pb.WatchDirResponse:
    return pb.WatchDirResponse(event=Oneof(kind, value))  # type: ignore[arg-type]


async def _watch_events(
    sbx: LiveSandbox, watch: Watch, keepalive: float | None
) -> AsyncIterator[protocol.WatchEvent | None]:
    """The watch's events; None after each ``keepalive`` seconds of silence, so a proxy on the
    way does not close a quiet stream."""
    it = watch.__aiter__()
    pending: asyncio.Future[protocol.WatchEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield event
    finally:
        if pending is not None:
            pending.cancel()


async def _entry_of(sbx: LiveSandbox, root: str, name: str, user: str) -> pb.EntryInfo | None:
    """The entry an event names, best effort: it may be gone already (a remove, a rename's
    old name), which E2B reports as an event without an entry."""
    try:
        return entry_info(
            await sbx.agent.call(protocol.FileStat(path=os.path.join(root, name), user=user))
        )
    except (AgentError, AgentGone, ApiError):
        return None
