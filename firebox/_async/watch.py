"""A watcher on a sandbox directory, polled for the changes it has seen."""

from __future__ import annotations

from firebox._async._callbacks import emit
from firebox._async._http import AsyncApiClient
from firebox._core.background import AsyncBackground, async_pause
from firebox._core.models import FilesystemEvent, OutputHandler
from firebox._core.requests import sandbox_path
from firebox._core.responses import parse_fs_events
from firebox.exceptions import SandboxException

POLL_EVERY = 0.2  # seconds between fetches for on_event: what a change waits at most


class AsyncWatchHandle:
    """Returned by ``files.watch_dir``. The daemon keeps the events until they are fetched."""

    def __init__(
        self,
        sandbox_id: str,
        watcher_id: str,
        api: AsyncApiClient,
        on_event: OutputHandler[FilesystemEvent] | None = None,
    ) -> None:
        self._path = sandbox_path(sandbox_id, "watchers", watcher_id)
        self._api = api
        self._on_event = on_event
        self._stopped = False
        # As E2B's SDK: events reach on_event as they come, whether or not the caller asks
        # for them; here a poller beside the caller fetches them (the sync SDK's: a thread).
        self._poller = AsyncBackground(self._poll) if on_event is not None else None

    async def get_new_events(self, request_timeout: float | None = None) -> list[FilesystemEvent]:
        """The events since the last call (or since the watch began), oldest first.

        With an ``on_event`` given to ``watch_dir``, events go there as they come instead.
        """
        if self._stopped:
            raise SandboxException(
                "this watcher is stopped; start a new one with files.watch_dir()"
            )
        response = await self._api.request("GET", self._path + "/events", timeout=request_timeout)
        events = parse_fs_events(response.json())
        for event in events:
            await emit(self._on_event, event)
        return events

    async def _poll(self) -> None:
        while not self._stopped:
            try:
                await self.get_new_events()
            except Exception:  # noqa: BLE001  (stopped meanwhile, or the sandbox ended)
                return
            await async_pause(POLL_EVERY)

    async def stop(self, request_timeout: float | None = None) -> None:
        """Stops watching; the events not yet fetched are dropped."""
        if self._stopped:
            return
        self._stopped = True  # the poller ends at its next round
        await self._api.request("DELETE", self._path, timeout=request_timeout)
