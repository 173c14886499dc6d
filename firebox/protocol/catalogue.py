"""The catalogue: every message by its wire type, and the two conversions a peer needs between
frames and messages."""

from __future__ import annotations

from firebox.protocol import contexts, files, messages, processes
from firebox.protocol.framing import ProtocolError, encode_frame
from firebox.protocol.messages import Message

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MESSAGES: dict[str, type[Message]] = {
    m.T: m
    for m in (
        messages.Hello,
        messages.Ping,
        messages.Resume,
        messages.Quiesce,
        messages.Quiesced,
        messages.Adopt,
        messages.Configure,
        messages.NetAccept,
        messages.NetConnect,
        messages.NetListening,
        messages.NetConnected,
        messages.Result,
        messages.Error,
        messages.Data,
        messages.End,
        messages.Credit,
        messages.Cancel,
        messages.Detach,
        processes.ProcessStart,
        processes.ProcessStarted,
        processes.ProcessAttach,
        processes.ProcessStdin,
        processes.ProcessSignal,
        processes.ProcessResize,
        processes.ProcessList,
        files.FileRead,
        files.FileWrite,
        files.FileList,
        files.FileStat,
        files.FileRemove,
        files.FileRename,
        files.FileMakeDir,
        files.WatchStart,
        files.WatchStarted,
        files.WatchEvent,
        contexts.ContextCreate,
        contexts.ContextList,
        contexts.ContextRestart,
        contexts.ContextRemove,
        contexts.CodeRun,
        contexts.CodeResult,
        contexts.CodeError,
    )
}


def parse(header: dict[str, Any]) -> Message:
    """Turn a frame header into its message; unknown types are a protocol error."""
    cls = MESSAGES.get(str(header.get("t")))
    if cls is None:
        raise ProtocolError(f"unknown message type {header.get('t')!r}")
    msg: Message = cls.from_header(header)
    return msg


def encode(channel: int, msg: Message, payload: bytes = b"") -> bytes:
    return encode_frame(channel, msg.to_header(), payload)
