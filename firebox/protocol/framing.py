"""Frames: the byte layout of the channel, its limits, and how both sides cut a stream into
frames. Knows nothing of message types beyond the header's being a JSON object."""

from __future__ import annotations

import json
import struct

from firebox.protocol.records import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FRAME_HEAD = struct.Struct(">III")
MAX_PAYLOAD = 1 << 20  # a data frame carries at most 1 MiB
# Headers carry whole requests and results: a long ``cmd`` script, a deep file listing. 8 MiB
# bounds what one frame can make a reader allocate while leaving room for both.
MAX_HEADER = 8 << 20
CHUNK = 256 * 1024  # what senders put in one data frame
WINDOW = 16  # data frames in flight per stream before the sender waits for credit
STREAM_LIMIT = 1 << 20  # asyncio StreamReader buffer limit suited to CHUNK-sized frames

CONTROL_CHANNEL = 0


class ProtocolError(Exception):
    """The byte stream does not follow this module: the peer is broken or hostile."""


@dataclass(slots=True)
class Frame:
    channel: int
    header: dict[str, Any]
    payload: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header.get("t", ""))


def encode_frame(channel: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER}")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return FRAME_HEAD.pack(channel, len(payload), len(head)) + head + payload


def decode_head(head: bytes | bytearray) -> tuple[int, int, int]:
    """(channel, payload length, header length) of a frame's first ``FRAME_HEAD.size`` bytes.

    For readers that read a frame in parts (head, then header, then payload) instead of
    feeding a ``FrameDecoder``; the limits are checked before anything is allocated.
    """
    channel, plen, hlen = FRAME_HEAD.unpack_from(head)
    if plen > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {plen} bytes exceeds {MAX_PAYLOAD}")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"frame header of {hlen} bytes exceeds {MAX_HEADER}")
    return channel, plen, hlen


def decode_header(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header


class FrameSplitter:
    """Incremental splitter: feed bytes, take whole frames as they came, undecoded (what a
    relay forwards, a frame at a time). No I/O."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= FRAME_HEAD.size:
            _, plen, hlen = decode_head(self._buf)
            end = FRAME_HEAD.size + hlen + plen
            if len(self._buf) < end:
                break
            frames.append(bytes(self._buf[:end]))
            del self._buf[:end]
        return frames


class FrameDecoder:
    """Incremental decoder: feed bytes, take whole frames. No I/O, usable by both sides."""

    def __init__(self) -> None:
        self._split = FrameSplitter()

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        for raw in self._split.feed(data):
            channel, plen, hlen = decode_head(raw)
            header = decode_header(raw[FRAME_HEAD.size : FRAME_HEAD.size + hlen])
            frames.append(Frame(channel, header, raw[FRAME_HEAD.size + hlen :]))
        return frames
