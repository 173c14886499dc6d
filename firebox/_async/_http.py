"""The one place the SDK sends HTTP: an httpx client that turns failures into firebox exceptions.

Every request has a timeout: the caller's, else the configured ``request_timeout``.
"""

from __future__ import annotations

import functools
import ssl
from types import TracebackType
from typing import Any

import httpx

from firebox._core.config import ConnectionConfig
from firebox._core.errors import error_from_response, error_from_transport


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA store costs ~20 ms; httpx would do it for every client, even for the
    # plain-HTTP local daemon. Do it once per process, and only for https daemons.
    return ssl.create_default_context()


def _verify(api_url: str) -> ssl.SSLContext | bool:
    return _tls_context() if api_url.startswith("https:") else False


class AsyncApiClient:
    """A connection pool to one daemon, authenticated with one key."""

    def __init__(
        self, config: ConnectionConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.api_url,
            headers=config.headers(),
            timeout=config.request_timeout,
            transport=transport,
            verify=_verify(config.api_url),
            # Each background command holds a connection while its output is unread; a capped
            # pool would make the next call wait for one and fail with a baffling timeout.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Sends a request and reads the whole answer; raises the mapped error for a 4xx/5xx."""
        try:
            response = await self._client.request(
                method,
                path,
                params=params,
                json=json,
                content=content,
                headers=headers,
                timeout=self._timeout(timeout),
            )
        except httpx.HTTPError as e:
            raise error_from_transport(e, self.config.api_url) from e
        if response.is_error:
            raise error_from_response(response.status_code, response.content)
        return response

    async def open_stream(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """Sends a request and returns once the answer's head is in, body unread.

        The caller owns the answer and must close it. An error answer is read, closed and
        raised here, so a returned answer is always a success.
        """
        request = self._client.build_request(
            method,
            path,
            params=params,
            json=json,
            content=content,
            headers=headers,
            timeout=self._timeout(timeout),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise error_from_transport(e, self.config.api_url) from e
        if response.is_error:
            try:
                body = await response.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await response.aclose()
            raise error_from_response(response.status_code, body)
        return response

    def _timeout(self, timeout: float | httpx.Timeout | None) -> float | httpx.Timeout:
        return self.config.request_timeout if timeout is None else timeout

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
