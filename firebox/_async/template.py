"""``AsyncTemplate``: define a template in code (or from a Dockerfile) and build it on the
daemon, as E2B's Template SDK does::

    template = AsyncTemplate().from_debian_image().apt_install("cowsay")
    await AsyncTemplate.build(template, "moo", on_build_logs=print)
    sbx = await AsyncSandbox.create("moo")

``build`` uploads the files the template copies that the daemon does not have yet, starts the
build, passes its log to ``on_build_logs`` as it comes and returns once the template is
ready, raising ``TemplateBuildError`` if it fails. The builder methods are
``firebox._core.template``'s; the REST calls are listed in ``firebox._core.template_build``.
"""

from __future__ import annotations

import builtins
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import IO, Any

import httpx

from firebox._async._callbacks import emit
from firebox._async._http import AsyncApiClient
from firebox._core.background import async_pause
from firebox._core.config import resolve_config
from firebox._core.models import OutputHandler
from firebox._core.responses import parse_field
from firebox._core.template import TemplateBase, TemplateClass, Upload, _base_of
from firebox._core.template_build import (
    BUILDS,
    PRUNE,
    TEMPLATES,
    UPLOAD_TIMEOUT,
    BuildEnd,
    BuildInfo,
    BuildLog,
    BuildOptions,
    LogEntry,
    TemplateBuildStatusResponse,
    TemplateInfo,
    build_body,
    build_failure,
    build_name,
    build_path,
    files_path,
    parse_build_event,
    parse_build_info,
    parse_build_status,
    parse_template_info,
    parse_templates,
    template_path,
)
from firebox._core.template_files import write_upload
from firebox.exceptions import (
    FireboxException,
    NotFoundException,
    PermissionDeniedException,
    TimeoutException,
    UnavailableException,
)

PRUNE_TIMEOUT = 600.0
CHUNK = 256 * 1024  # bytes per read of an upload being sent
RECONNECT_PAUSE = 1.0  # s between attempts to read on from a broken log stream
MAX_RECONNECTS = 5  # broken streams in a row, without a log line between, before giving up


def _client(
    api_key: str | None,
    api_url: str | None,
    request_timeout: float | None,
) -> AsyncApiClient:
    return AsyncApiClient(resolve_config(api_key, api_url, request_timeout))


def _build_id(build: BuildInfo | str) -> str:
    return build if isinstance(build, str) else build.build_id


async def _note(on_build_logs: OutputHandler[LogEntry] | None, message: str) -> None:
    """A log line of the SDK's own, between the daemon's, as E2B's SDK writes them."""
    await emit(on_build_logs, LogEntry(datetime.now(UTC), "info", message))


async def _chunks(archive: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := archive.read(CHUNK):
        yield chunk


async def _upload(
    api: AsyncApiClient,
    upload: Upload,
    on_build_logs: OutputHandler[LogEntry] | None,
) -> None:
    """Sends a COPY step's files unless the daemon has them (or ``force_upload``)."""
    path = files_path(upload.files_hash)
    if not upload.force_upload:
        response = await api.request("GET", path)
        if parse_field(response.json(), "template files", "present", bool):
            await _note(on_build_logs, f"'{upload.src}' is on the daemon already")
            return
    # Spooled to disk, not memory: a build context can be larger than memory.
    with tempfile.TemporaryFile() as archive:
        write_upload(archive, upload.src, upload.dest, upload.items, upload.files_hash)
        size = archive.tell()
        archive.seek(0)
        await api.request(
            "PUT",
            path,
            content=_chunks(archive),
            headers={"Content-Type": "application/gzip", "Content-Length": str(size)},
            timeout=httpx.Timeout(api.config.request_timeout, read=UPLOAD_TIMEOUT),
        )
    await _note(on_build_logs, f"uploaded '{upload.src}' ({size} bytes)")


async def _start(
    api: AsyncApiClient,
    template: TemplateClass,
    name: str | None,
    alias: str | None,
    tags: list[str] | None,
    cpu_count: int,
    memory_mb: int,
    skip_cache: bool,
    on_build_logs: OutputHandler[LogEntry] | None,
    options: BuildOptions,
) -> BuildInfo:
    """Uploads what the template copies and asks the daemon for the build."""
    base_name, all_tags = build_name(name, alias, tags)
    data, uploads = _base_of(template)._prepare(skip_cache)
    for upload in uploads:
        await _upload(api, upload, on_build_logs)
    body = build_body(base_name, all_tags, cpu_count, memory_mb, skip_cache, data, options)
    info = parse_build_info((await api.request("POST", BUILDS, json=body)).json())
    await _note(on_build_logs, f"build {info.build_id} of template {info.name!r} started")
    return info


async def _follow(
    api: AsyncApiClient,
    info: BuildInfo,
    on_build_logs: OutputHandler[LogEntry] | None,
    build_timeout: float | None,
) -> BuildEnd:
    """Reads the build's log to its end, passing each line on; reads on from where it was if
    the stream breaks; cancels the build when ``build_timeout`` runs out."""
    deadline = time.monotonic() + build_timeout if build_timeout else None
    offset, failures = 0, 0
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise await _timed_out(api, info, build_timeout)
        # A step may print nothing for long: only the build's deadline bounds a read.
        response = await api.open_stream(
            "GET",
            build_path(info.build_id, "logs"),
            params={"offset": offset, "follow": "true"},
            timeout=httpx.Timeout(api.config.request_timeout, read=remaining),
        )
        progressed = False
        try:
            async for line in response.aiter_lines():
                event = parse_build_event(line)
                if isinstance(event, BuildLog):
                    offset = offset + 1 if event.offset is None else event.offset + 1
                    progressed = True
                    await emit(on_build_logs, event.entry)
                elif isinstance(event, BuildEnd):
                    return event
            broken = False  # the daemon ends a quiet stream now and then: ask again
        except httpx.TimeoutException:
            continue  # the deadline: the loop's first check raises
        except httpx.TransportError:
            broken = True  # the daemon restarted, or the network failed
        finally:
            await response.aclose()
        if broken:
            failures = 0 if progressed else failures + 1
            if failures > MAX_RECONNECTS:
                raise UnavailableException(
                    f"the log of build {info.build_id} keeps breaking off; check the daemon "
                    "(its log), and see the build with get_build_status()"
                )
            await async_pause(RECONNECT_PAUSE)


async def _timed_out(
    api: AsyncApiClient,
    info: BuildInfo,
    build_timeout: float | None,
) -> TimeoutException:
    with contextlib.suppress(FireboxException):  # it may have just ended: report the timeout
        await api.request("POST", build_path(info.build_id, "cancel"))
    return TimeoutException(
        f"the build {info.build_id} of template {info.name!r} did not finish within "
        f"build_timeout={build_timeout:g} s and was cancelled; pass a larger build_timeout= "
        "(None: no limit), or use build_in_background() and get_build_status()"
    )


class AsyncTemplate(TemplateBase):
    """A template: build it up with the ``from_*`` and step methods, then ``build`` it."""

    @classmethod
    async def build(
        cls,
        template: TemplateClass,
        name: str | None = None,
        *,
        alias: str | None = None,
        tags: builtins.list[str] | None = None,
        cpu_count: int = 2,
        memory_mb: int = 2048,
        skip_cache: bool = False,
        pool_size: int | None = None,
        allow_out: builtins.list[str] | None = None,
        on_build_logs: OutputHandler[LogEntry] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
        build_timeout: float | None = 1800,
    ) -> BuildInfo:
        """Builds ``template`` as ``name`` (``"name"`` or ``"name:tag"``; ``alias`` is E2B's
        older spelling), also under ``tags``, and returns once it is ready.

        ``cpu_count`` and ``memory_mb`` size the build's sandboxes (each step's); the
        template's own sandboxes get what their create asks for.
        ``skip_cache`` builds every step again. firebox's own: ``pool_size`` sandboxes of it
        kept warm (default: the daemon's), ``allow_out`` hosts its steps may reach besides the
        daemon's package sources. ``on_build_logs`` is called with each
        ``LogEntry`` as it comes (in the async SDK it may be a coroutine function). Raises
        ``TemplateBuildError`` when the build fails or is cancelled, and ``TimeoutException``
        (having cancelled it) when it takes over ``build_timeout`` seconds.
        """
        async with _client(api_key, api_url, request_timeout) as api:
            info = await _start(
                api,
                template,
                name,
                alias,
                tags,
                cpu_count,
                memory_mb,
                skip_cache,
                on_build_logs,
                BuildOptions(pool_size, tuple(allow_out or ())),
            )
            end = await _follow(api, info, on_build_logs, build_timeout)
        if end.status != "ready":
            raise build_failure(info, end.status, end.reason, _base_of(template)._origins())
        await _note(on_build_logs, f"template {info.name!r} is ready")
        return info

    @classmethod
    async def build_in_background(
        cls,
        template: TemplateClass,
        name: str | None = None,
        *,
        alias: str | None = None,
        tags: builtins.list[str] | None = None,
        cpu_count: int = 2,
        memory_mb: int = 2048,
        skip_cache: bool = False,
        pool_size: int | None = None,
        allow_out: builtins.list[str] | None = None,
        on_build_logs: OutputHandler[LogEntry] | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> BuildInfo:
        """Uploads the template's files and starts its build, without waiting for it; follow
        it with ``get_build_status``. ``on_build_logs`` hears only of the uploads."""
        async with _client(api_key, api_url, request_timeout) as api:
            return await _start(
                api,
                template,
                name,
                alias,
                tags,
                cpu_count,
                memory_mb,
                skip_cache,
                on_build_logs,
                BuildOptions(pool_size, tuple(allow_out or ())),
            )

    @classmethod
    async def get_build_status(
        cls,
        build_info: BuildInfo | str,
        logs_offset: int = 0,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> TemplateBuildStatusResponse:
        """A build's status (``build_info`` or its build id) and its log entries from
        ``logs_offset`` on (add the number of entries read to page through them)."""
        async with _client(api_key, api_url, request_timeout) as api:
            response = await api.request(
                "GET", build_path(_build_id(build_info)), params={"logs_offset": logs_offset}
            )
            return parse_build_status(response.json(), logs_offset)

    @classmethod
    async def cancel_build(
        cls,
        build_info: BuildInfo | str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Stops a build that is waiting or running; it ends with status "cancelled"."""
        async with _client(api_key, api_url, request_timeout) as api:
            await api.request("POST", build_path(_build_id(build_info), "cancel"))

    @classmethod
    async def list(
        cls,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[TemplateInfo]:
        """The templates this API key can start sandboxes from."""
        async with _client(api_key, api_url, request_timeout) as api:
            return parse_templates((await api.request("GET", TEMPLATES)).json())

    @classmethod
    async def get(
        cls,
        name: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> TemplateInfo:
        """One template, by ``name`` or ``name:tag``; ``NotFoundException`` if there is none."""
        async with _client(api_key, api_url, request_timeout) as api:
            return parse_template_info((await api.request("GET", template_path(name))).json())

    @classmethod
    async def exists(
        cls,
        name: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> bool:
        """Whether a template is called ``name`` (also one this key may not use, as E2B's)."""
        try:
            await cls.get(name, api_key, api_url, request_timeout)
        except NotFoundException:
            return False
        except PermissionDeniedException:
            return True
        return True

    @classmethod
    async def delete(
        cls,
        name: str,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> bool:
        """Deletes a template (``name``, or one tag of it as ``name:tag``); False if there was
        none. The daemon refuses (ConflictException) while sandboxes made from it run."""
        async with _client(api_key, api_url, request_timeout) as api:
            try:
                await api.request("DELETE", template_path(name))
            except NotFoundException:
                return False
            return True

    @classmethod
    async def prune(
        cls,
        api_key: str | None = None,
        api_url: str | None = None,
        request_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Drops build cache and uploads no template needs (admin key); the daemon's account
        of what it freed. Removing gigabytes of trees takes a while: 10 minutes unless
        ``request_timeout`` says otherwise."""
        async with _client(api_key, api_url, request_timeout or PRUNE_TIMEOUT) as api:
            response = await api.request("POST", PRUNE)
            return dict(response.json()) if response.content else {}
