"""A bound on a request's head (its request line and headers), for every request the daemon
takes: the API's, the E2B edge's and a sandbox port's.

uvicorn's fast parser (httptools) keeps a request's head in memory until it is complete, with
no bound of its own: a client could make the daemon hold gigabytes with one endless header.
This is uvicorn's protocol with a count of the bytes of a head as they arrive; past
``MAX_HEAD`` the client gets a 431 and the connection is closed, before any of it reaches the
app (or a sandbox).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # bytes; browsers send a few KB, proxies commonly allow 8-32 KB
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 47\r\n\r\n"
    b"request headers over 64 KiB; send less in them\n"
)


class _HeadTooLarge(Exception):
    pass


class BoundedHead(HttpToolsProtocol):
    """``uvicorn.Config(http=BoundedHead)``: a head is counted twice over. As it arrives, one
    still incomplete past ``MAX_HEAD`` ends the connection before more of it is read (memory
    stays bounded by that and one read); as it is parsed, its request line and headers past
    ``MAX_HEAD`` are refused before the app sees the request (a head that came in one read)."""

    _in_head = True  # between a message's start and its headers' end (and at first)
    _head_bytes = 0
    _headers_seen = False  # a head was completed in the data being fed
    _parsed = 0  # bytes of the request line and headers parsed so far
    _too_large = False

    def data_received(self, data: bytes) -> None:
        # counted only when all of it went to a head still incomplete: not the end of a
        # body (its message completing sets _in_head), not a head completed by it
        was_in_head = self._in_head
        self._headers_seen = False
        super().data_received(data)
        if (
            was_in_head
            and self._in_head
            and not self._headers_seen
            and not self.transport.is_closing()
        ):
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse()

    def on_message_begin(self) -> None:
        self._parsed = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._parsed += n
        if self._parsed > MAX_HEAD:
            self._too_large = True
            raise _HeadTooLarge  # the parser's error path answers: send_400_response below

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse()
            return
        super().send_400_response(msg)

    def _refuse(self) -> None:
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._headers_seen = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next request on the connection, if any, starts its head
        super().on_message_complete()


def server(app: Any, **more: Any) -> uvicorn.Server:
    """uvicorn as the daemon and the gateway run it (``more``: their own settings)."""
    return uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            # No X-Forwarded-* handling: nothing uses the client's address or scheme, and the
            # middleware would cost every call its time.
            proxy_headers=False,
            access_log=False,
            lifespan="off",  # start and stop are the caller's
            http=BoundedHead,  # no request head past 64 KiB is held
            server_header=False,  # a sandbox port's or a node's answer keeps its own
            **more,
        )
    )
