"""A streaming reader of ``multipart/form-data`` bodies (E2B's SDKs upload files this way).

Each part's content is handed on as it arrives, so an upload of any size passes through with
a bounded buffer; the caller reads one part to its end before asking for the next. Only what
E2B's SDKs send is understood: parts with a Content-Disposition naming a filename.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote

from firebox.server.errors import ApiError

HEADERS_MAX = 16 * 1024  # one part's headers; a filename is a path of at most 4 KiB
_PARAM = re.compile(r';\s*([\w*.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass(frozen=True, slots=True)
class Part:
    name: str | None
    filename: str | None


def boundary_of(content_type: str) -> bytes:
    for key, value in _PARAM.findall(";" + content_type.split(";", 1)[-1]):
        if key.lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if 0 < len(value) <= 200:
                return value.encode("latin-1")
    raise ApiError("invalid_argument", "a multipart upload needs a boundary in its Content-Type")


class MultipartReader:
    """``async for part, content in MultipartReader(body, boundary)``: ``content`` yields the
    part's bytes and must be read to its end before the next part is asked for."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._buf = b""
        self._delim = b"--" + boundary
        self._ended = False

    async def _fill(self) -> None:
        try:
            chunk = await self._body.__anext__()
        except StopAsyncIteration:
            raise ApiError(
                "invalid_argument", "the multipart body ended before its closing boundary"
            ) from None
        self._buf += chunk

    async def _until(self, marker: bytes, limit: int) -> bytes:
        """Everything before ``marker`` (which is consumed too)."""
        while (i := self._buf.find(marker)) < 0:
            if len(self._buf) > limit:
                raise ApiError("invalid_argument", "a multipart part's headers are too long")
            await self._fill()
        head, self._buf = self._buf[:i], self._buf[i + len(marker) :]
        return head

    async def _after_delimiter(self) -> bool:
        """Past a boundary: True if another part follows, False at the closing one."""
        while len(self._buf) < 2:
            await self._fill()
        if self._buf.startswith(b"--"):
            return False
        await self._until(b"\r\n", HEADERS_MAX)  # transport padding, then the line end
        return True

    async def parts(self) -> AsyncIterator[tuple[Part, AsyncIterator[bytes]]]:
        await self._until(self._delim, 1 << 20)  # the preamble, which is ignored
        while await self._after_delimiter():
            raw = await self._until(b"\r\n\r\n", HEADERS_MAX)
            part = _part(raw.decode("utf-8", "replace"))
            finished: list[bool] = []
            yield part, self._content(finished)
            if not finished:
                raise ApiError("internal", "a multipart part was not read to its end")

    async def _content(self, finished: list[bool]) -> AsyncIterator[bytes]:
        end = b"\r\n" + self._delim
        while True:
            i = self._buf.find(end)
            if i >= 0:
                data, self._buf = self._buf[:i], self._buf[i + len(end) :]
                if data:
                    yield data
                finished.append(True)
                return
            # keep what could be the start of the boundary; hand on the rest
            keep = len(end) - 1
            if len(self._buf) > keep:
                data, self._buf = self._buf[:-keep], self._buf[-keep:]
                yield data
            await self._fill()


def _part(raw_headers: str) -> Part:
    disposition = ""
    for line in raw_headers.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            disposition = value
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(disposition):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: charset'language'percent-encoded
        filename = unquote(params["filename*"].split("'", 2)[-1])
    elif filename is not None:
        filename = filename.replace("%22", '"')  # how browsers and httpx escape a quote
    return Part(name=params.get("name"), filename=filename)
