"""``AsyncSandbox``: create, find, control and end sandboxes."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from firebox._async import snapshots
from firebox._async._http import AsyncApiClient
from firebox._async.code import AsyncCodeExecution
from firebox._async.commands import AsyncCommands
from firebox._async.files import AsyncFilesystem
from firebox._async.pty import AsyncPty
from firebox._core.config import resolve_config
from firebox._core.dual import ClassOrInstanceMethod
from firebox._core.models import SandboxInfo, SandboxMetrics, SandboxQuery, SnapshotInfo
from firebox._core.requests import create_body, list_query, sandbox_path
from firebox._core.responses import (
    parse_list,
    parse_metrics,
    parse_preview_url,
    parse_sandbox_info,
)
from firebox.exceptions import FireboxException, InvalidArgumentException, NotFoundException

# The class-level forms of ``kill``, ``set_timeout``, ``get_info`` and ``get_metrics``, which
# open a client for the one call.


async def _kill_by_id(
    sandbox_id: str,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> bool:
    """Kills the sandbox ``sandbox_id``; False if it was already gone."""
    async with _client(api_key, api_url, request_timeout) as api:
        return await _delete(api, sandbox_id, None)


async def _set_timeout_by_id(
    sandbox_id: str,
    timeout: int,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> None:
    """Kills the sandbox ``sandbox_id`` ``timeout`` seconds from now instead of when it was due."""
    async with _client(api_key, api_url, request_timeout) as api:
        await _post_timeout(api, sandbox_id, timeout, None)


async def _get_info_by_id(
    sandbox_id: str,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> SandboxInfo:
    """What the daemon knows of the sandbox ``sandbox_id``."""
    async with _client(api_key, api_url, request_timeout) as api:
        return await _fetch_info(api, sandbox_id, None)


async def _get_metrics_by_id(
    sandbox_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> builtins.list[SandboxMetrics]:
    """The sandbox ``sandbox_id``'s CPU, memory and disk, sampled every 5 s."""
    async with _client(api_key, api_url, request_timeout) as api:
        return await _fetch_metrics(api, sandbox_id, start, end, None)


async def _pause_by_id(
    sandbox_id: str,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> None:
    """Pauses the sandbox ``sandbox_id`` (see ``pause``)."""
    async with _client(api_key, api_url, request_timeout) as api:
        await _post_pause(api, sandbox_id, None)


async def _create_snapshot_by_id(
    sandbox_id: str,
    name: str | None = None,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> SnapshotInfo:
    """Takes a snapshot of the sandbox ``sandbox_id`` (see ``create_snapshot``)."""
    async with _client(api_key, api_url, request_timeout) as api:
        return await snapshots.take_snapshot(api, sandbox_id, name, None)


async def _fork_by_id(
    sandbox_id: str,
    timeout: int | None = None,
    count: int | None = None,
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
) -> builtins.list[AsyncSandbox | FireboxException]:
    """Forks the sandbox ``sandbox_id`` (see ``fork``)."""
    async with _client(api_key, api_url, request_timeout) as api:
        made = await snapshots.fork(api, sandbox_id, timeout, count, None)
        return [_sandbox_of(m, api, AsyncSandbox) for m in made]


S = TypeVar("S", bound="AsyncSandbox")


def _sandbox_of(
    made: SandboxInfo | FireboxException, api: AsyncApiClient, cls: type[S]
) -> S | FireboxException:
    """A fork as its caller gets it: a sandbox (of ``cls``) with a client of its own, or its
    error."""
    if isinstance(made, FireboxException):
        return made
    return cls(made.sandbox_id, AsyncApiClient(api.config), made)


async def _post_pause(api: AsyncApiClient, sandbox_id: str, request_timeout: float | None) -> None:
    await api.request("POST", sandbox_path(sandbox_id, "pause"), timeout=request_timeout)


async def _post_resume(
    api: AsyncApiClient, sandbox_id: str, timeout: int | None, request_timeout: float | None
) -> SandboxInfo:
    body = {} if timeout is None else {"timeout": timeout}
    response = await api.request(
        "POST", sandbox_path(sandbox_id, "resume"), json=body, timeout=request_timeout
    )
    return parse_sandbox_info(response.json())


def _client(
    api_key: str | None, api_url: str | None, request_timeout: float | None
) -> AsyncApiClient:
    return AsyncApiClient(resolve_config(api_key, api_url, request_timeout))


async def _fetch_info(
    api: AsyncApiClient, sandbox_id: str, request_timeout: float | None
) -> SandboxInfo:
    response = await api.request("GET", sandbox_path(sandbox_id), timeout=request_timeout)
    return parse_sandbox_info(response.json())


async def _fetch_metrics(
    api: AsyncApiClient,
    sandbox_id: str,
    start: datetime | None,
    end: datetime | None,
    request_timeout: float | None,
) -> builtins.list[SandboxMetrics]:
    params = {k: v.timestamp() for k, v in (("start", start), ("end", end)) if v is not None}
    response = await api.request(
        "GET", sandbox_path(sandbox_id, "metrics"), params=params, timeout=request_timeout
    )
    return parse_metrics(response.json())


async def _post_timeout(
    api: AsyncApiClient, sandbox_id: str, timeout: int, request_timeout: float | None
) -> None:
    await api.request(
        "POST",
        sandbox_path(sandbox_id, "timeout"),
        json={"timeout": timeout},
        timeout=request_timeout,
    )


async def _delete(api: AsyncApiClient, sandbox_id: str, request_timeout: float | None) -> bool:
    try:
        await api.request("DELETE", sandbox_path(sandbox_id), timeout=request_timeout)
    except NotFoundException:
        return False
    return True


class AsyncSandbox(AsyncCodeExecution):
    """An isolated machine for running untrusted code.

    Get one with ``await AsyncSandbox.create()`` or ``await AsyncSandbox.connect(id)``; use it
    as ``async with await AsyncSandbox.create() as sbx:`` to kill it when the block ends. The
    daemon's address and key come from the arguments, else ``FIREBOX_URL`` and
    ``FIREBOX_API_KEY``, else the local daemon and its admin key file.
    """

    def __init__(
        self, sandbox_id: str, api: AsyncApiClient, info: SandboxInfo | None = None
    ) -> None:
        self._sandbox_id = sandbox_id
        self._api = api
        # how its ports are reached (get_host): what the daemon said when it was made or joined
        self._domain = info.domain if info is not None else ""
        self._traffic_token = info.traffic_access_token if info is not None else ""
        self._commands = AsyncCommands(sandbox_id, api)
        self._files = AsyncFilesystem(sandbox_id, api)
        self._pty = AsyncPty(sandbox_id, api, self._commands)

    @property
    def sandbox_id(self) -> str:
        return self._sandbox_id

    @property
    def traffic_access_token(self) -> str:
        """Opens this sandbox's ports, and nothing else of it or of another sandbox: send it
        in the ``Firebox-Traffic-Token`` header to ``get_host(port)``. Not needed when the
        sandbox was created with ``network={"allow_public_traffic": True}``."""
        return self._traffic_token

    def get_host(self, port: int) -> str:
        """The host name that reaches ``port`` inside the sandbox (a server listening on
        127.0.0.1 or 0.0.0.0 there): ``<port>-<sandbox id>.<domain>``, served by the daemon
        over HTTP and WebSocket (docs/PORTS.md)."""
        if not 0 < port < 65536:
            raise InvalidArgumentException(f"port {port} must be 1..65535")
        return f"{port}-{self._sandbox_id.replace('_', '-')}.{self._domain}"

    async def get_preview_url(self, port: int, request_timeout: float | None = None) -> str:
        """A one-time link that opens ``port`` in a person's browser: it sets a cookie for that
        port's host alone, then shows ``/``. It works once, within five minutes."""
        response = await self._api.request(
            "POST",
            sandbox_path(self._sandbox_id, "previews"),
            json={"port": port},
            timeout=request_timeout,
        )
        return parse_preview_url(response.json())

    @property
    def commands(self) -> AsyncCommands:
        """Run commands in the sandbox and manage running ones."""
        return self._commands

    @property
    def pty(self) -> AsyncPty:
        """Terminal sessions: a shell a person (or an agent) types into."""
        return self._pty

    @property
    def files(self) -> AsyncFilesystem:
        """Read, write, list and watch the sandbox's files."""
        return self._files

    @classmethod
    async def create(
        cls,
        template: str = "python",
        timeout: int = 300,
        metadata: Mapping[str, str] | None = None,
        envs: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        limits: Mapping[str, float] | None = None,
        allow_internet_access: bool = False,
        network: Mapping[str, Any] | None = None,
        lifecycle: Mapping[str, Any] | None = None,
        snapshot: str | None = None,
    ) -> Self:
        """Starts a new sandbox from ``template``.

        It is killed ``timeout`` seconds from now (1 to 86400) unless ``set_timeout`` extends
        it. ``metadata`` labels it for ``list``; ``envs`` are set for every command in it.

        ``limits`` sizes it instead of the daemon's defaults: ``cpu_count``, ``memory_mb``,
        ``disk_mb``, ``processes``, ``open_files`` (any of them).

        It has no network unless ``allow_internet_access=True`` or ``network={"allow_out":
        [...], "deny_out": [...]}`` (domains such as ``*.pypi.org``, IPs, CIDRs) open egress
        through the daemon's proxy; private, loopback and link-local addresses stay closed.
        ``network={"allow_public_traffic": True}`` lets anyone who can reach the daemon reach
        its ports (``get_host``); without it they need ``traffic_access_token``.

        ``lifecycle`` (E2B's): ``{"on_timeout": "pause"}`` pauses it at its timeout instead
        of killing it; ``"auto_resume": True`` has a call into a paused sandbox resume it.

        ``snapshot`` (an id or name from ``create_snapshot``) starts it from that snapshot
        instead of ``template``: its template and size, where the sandbox it was taken from
        was (a microVM's memory and disk; a jail's files).
        """
        api = _client(api_key, api_url, request_timeout)
        body = create_body(
            template, timeout, metadata, envs, limits, allow_internet_access, network, lifecycle
        )
        if snapshot is not None:
            body["snapshot"] = snapshot
        try:
            response = await api.request("POST", "/sandboxes", json=body)
            info = parse_sandbox_info(response.json())
        except BaseException:
            await api.aclose()
            raise
        return cls(info.sandbox_id, api, info)

    @classmethod
    async def connect(
        cls,
        sandbox_id: str,
        timeout: int | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Attaches to a sandbox, resuming it if it is paused (as E2B's does); with
        ``timeout``, its timeout is at least that many seconds from now.

        Raises ``NotFoundException`` if no such sandbox belongs to the API key.
        """
        api = _client(api_key, api_url, request_timeout)
        try:
            info = await _post_resume(api, sandbox_id, timeout, None)
        except BaseException:
            await api.aclose()
            raise
        return cls(info.sandbox_id, api, info)

    @classmethod
    async def resume(
        cls,
        sandbox_id: str,
        timeout: int | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Self:
        """Resumes a paused sandbox where it was paused: its files, processes and a python
        context's variables, with what was left of its timeout (or ``timeout`` if longer).
        The same as ``connect``."""
        return await cls.connect(sandbox_id, timeout, api_key, api_url, request_timeout)

    @classmethod
    async def list(
        cls,
        metadata: Mapping[str, str] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        query: SandboxQuery | None = None,
        order: str | None = None,
    ) -> builtins.list[SandboxInfo]:
        """The API key's sandboxes, oldest first (``order="desc"``: newest first); with
        ``metadata``, only those carrying all of its pairs; ``query`` filters as E2B's
        (metadata, state, started_after, template)."""
        params = list_query(metadata, query, order)
        async with _client(api_key, api_url, request_timeout) as api:
            response = await api.request("GET", "/sandboxes", params=params)
            return [parse_sandbox_info(s) for s in parse_list(response.json(), "sandboxes")]

    async def _kill_self(self, request_timeout: float | None = None) -> bool:
        """Kills the sandbox; False if it was already gone.

        Also callable on the class: ``await AsyncSandbox.kill(sandbox_id)``.
        """
        return await _delete(self._api, self._sandbox_id, request_timeout)

    async def _set_timeout_self(self, timeout: int, request_timeout: float | None = None) -> None:
        """Kills the sandbox ``timeout`` seconds from now instead of when it was due.

        Also callable on the class: ``await AsyncSandbox.set_timeout(sandbox_id, timeout)``.
        """
        await _post_timeout(self._api, self._sandbox_id, timeout, request_timeout)

    async def _pause_self(self, request_timeout: float | None = None) -> None:
        """Pauses the sandbox, keeping everything: files, processes (a command still running
        included), a python context's variables, its network policy and the timeout left.
        It frees its CPU, and a microVM's memory (written to disk); ``connect``/``resume``
        brings it back. Requests in flight end with an error; reconnect to commands after.

        Also callable on the class: ``await AsyncSandbox.pause(sandbox_id)``.
        """
        await _post_pause(self._api, self._sandbox_id, request_timeout)

    async def _create_snapshot_self(
        self, name: str | None = None, request_timeout: float | None = None
    ) -> SnapshotInfo:
        """Saves the sandbox as it is now, to start any number of sandboxes from
        (``create(snapshot=...)``). A microVM keeps its memory and disk, stopped only while
        they are copied; a jail keeps its files (``keeps`` says which). It runs on.

        Also callable on the class: ``await AsyncSandbox.create_snapshot(sandbox_id)``.
        """
        return await snapshots.take_snapshot(self._api, self._sandbox_id, name, request_timeout)

    async def _fork_self(
        self,
        timeout: int | None = None,
        count: int | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[Self | FireboxException]:
        """``count`` (default 1) new sandboxes starting where this one is now, each with an
        identity of its own and its own timeout (``timeout``, default the daemon's); one
        entry per fork: a sandbox, or the error that one failed with. This one runs on.

        Also callable on the class: ``await AsyncSandbox.fork(sandbox_id, count=2)``.
        """
        made = await snapshots.fork(self._api, self._sandbox_id, timeout, count, request_timeout)
        return [_sandbox_of(m, self._api, type(self)) for m in made]

    async def _get_info_self(self, request_timeout: float | None = None) -> SandboxInfo:
        """What the daemon knows of the sandbox: template, metadata, times, state, backend.

        Also callable on the class: ``await AsyncSandbox.get_info(sandbox_id)``.
        """
        return await _fetch_info(self._api, self._sandbox_id, request_timeout)

    async def _get_metrics_self(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxMetrics]:
        """The sandbox's CPU, memory and disk, oldest first: a sample every 5 s taken by the
        daemon, kept for an hour, from ``start`` (default: its start) to ``end`` (default:
        now). A new sandbox has none for its first 5 to 10 seconds.

        Also callable on the class: ``await AsyncSandbox.get_metrics(sandbox_id)``.
        """
        return await _fetch_metrics(self._api, self._sandbox_id, start, end, request_timeout)

    # One name for both forms, as in E2B: ``sbx.kill()`` and ``AsyncSandbox.kill(sandbox_id)``.
    kill = ClassOrInstanceMethod(_kill_by_id, _kill_self)
    set_timeout = ClassOrInstanceMethod(_set_timeout_by_id, _set_timeout_self)
    get_info = ClassOrInstanceMethod(_get_info_by_id, _get_info_self)
    get_metrics = ClassOrInstanceMethod(_get_metrics_by_id, _get_metrics_self)
    pause = ClassOrInstanceMethod(_pause_by_id, _pause_self)
    beta_pause = pause  # E2B's earlier name
    create_snapshot = ClassOrInstanceMethod(_create_snapshot_by_id, _create_snapshot_self)
    fork = ClassOrInstanceMethod(_fork_by_id, _fork_self)
    list_snapshots = staticmethod(snapshots.list_snapshots)
    delete_snapshot = staticmethod(snapshots.delete_snapshot)

    async def is_running(self, request_timeout: float | None = None) -> bool:
        """Whether the sandbox still runs; False once it is killed or its timeout expired."""
        try:
            info = await self._get_info_self(request_timeout)
        except NotFoundException:
            return False
        return info.state == "running"

    async def aclose(self) -> None:
        """Frees this object's connections to the daemon; the sandbox itself runs on."""
        await self._api.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._kill_self()
        finally:
            await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sandbox_id={self._sandbox_id!r})"
