"""A bound on a request's head (its request line and headers), for every request the daemon
takes: the API's, the E2B edge's and a sandbox port's.

uvicorn's fast parser (httptools) keeps a request's head in memory until it is complete, with
no bound of its own: a client could make the daemon hold gigabytes with one endless header.
This is uvicorn's protocol with a count of the bytes of a head as they arrive; past
``MAX_HEAD`` the client gets a 431 and the connection is closed, before any of it reaches the
app (or a sandbox).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024  # bytes; browsers send a few KB, proxies commonly allow 8-32 KB
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: 47\r\n\r\n"
    b"request headers over 64 KiB; send less in them\n"
)


class BoundedHead(HttpToolsProtocol):
    """``uvicorn.Config(http=BoundedHead)``."""

    _in_head = True  # between a message's start and its headers' end (and at first)
    _head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self.transport.write(_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next request on the connection, if any, starts its head
        super().on_message_complete()
