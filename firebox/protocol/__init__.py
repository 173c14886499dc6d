"""The one definition of the channel between the daemon and the in-sandbox agent.

Standard library only: this package is imported by the agent inside every sandbox and by the
daemon on the host. Nothing else may define message shapes.

Wire format
-----------
One byte stream (a socket pair in the jail, virtio-serial in a VM) carries frames::

    u32 channel | u32 payload length | u32 header length | header (UTF-8 JSON) | payload

All integers are big-endian. The header is a JSON object whose ``t`` field names the message
type; readers ignore fields they do not know (so a newer peer may add fields without a version
bump). The payload carries raw bytes (process output, file content) so data is never base64'd.

Channels multiplex many operations over the one stream. Channel 0 is the control channel
(``hello`` from the agent). Every other channel is opened by the daemon with a request message
and closed by exactly one final message from the agent: ``result`` or ``error``.

Flow control: every ``data``, ``watch.event``, ``code.result`` and ``code.error`` frame costs
the receiver one credit. A sender of such a stream starts with ``WINDOW`` credits and stops
when it has none; the receiver returns credits with ``credit`` frames as it consumes them.
This bounds memory on both sides no matter how fast a process writes, how busy a watched
directory is or how slowly an HTTP client reads; a peer that sends beyond its credit is broken
or hostile.

Modules
-------
``framing``     the frame layout, its limits, ``encode_frame`` and ``FrameDecoder``
``records``     the cheap run-time stand-in for ``dataclass`` that every message is made with
``messages``    the ``Message`` base; control, egress, replies and stream control
``processes``, ``files``, ``contexts``   the requests by subject, with their result shapes
``catalogue``   ``MESSAGES`` by wire type, ``parse`` and ``encode``

Everything is used as ``protocol.X``: import the package, not its modules.
"""

from __future__ import annotations

from firebox.protocol.catalogue import (
    MESSAGES,
    encode,
    parse,
)
from firebox.protocol.contexts import (
    CONTEXT_RESTART_WAIT,
    INTERPRETER_START_TIMEOUT,
    LANGUAGES,
    CodeDone,
    CodeError,
    CodeResult,
    CodeRun,
    ContextCreate,
    ContextInfo,
    ContextList,
    ContextRemove,
    ContextRestart,
)
from firebox.protocol.files import (
    EntryInfo,
    FileList,
    FileMakeDir,
    FileRead,
    FileRemove,
    FileRename,
    FileStat,
    FileWrite,
    WatchEvent,
    WatchStart,
    WatchStarted,
)
from firebox.protocol.framing import (
    CHUNK,
    CONTROL_CHANNEL,
    FRAME_HEAD,
    MAX_HEADER,
    MAX_PAYLOAD,
    STREAM_LIMIT,
    WINDOW,
    Frame,
    FrameDecoder,
    ProtocolError,
    decode_head,
    decode_header,
    encode_frame,
)
from firebox.protocol.messages import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    Adopt,
    Cancel,
    Configure,
    Credit,
    Data,
    Detach,
    End,
    Error,
    Hello,
    Message,
    NetAccept,
    NetConnect,
    NetConnected,
    NetListening,
    Ping,
    Quiesce,
    Quiesced,
    Result,
    Resume,
)
from firebox.protocol.processes import (
    ProcessAttach,
    ProcessExit,
    ProcessInfo,
    ProcessList,
    ProcessResize,
    ProcessSignal,
    ProcessStart,
    ProcessStarted,
    ProcessStdin,
)
from firebox.protocol.records import (
    as_dict,
    dataclass,
    display,
    field,
)

__all__ = [
    "dataclass",
    "field",
    "PROTOCOL_VERSION",
    "FRAME_HEAD",
    "MAX_PAYLOAD",
    "MAX_HEADER",
    "CHUNK",
    "WINDOW",
    "STREAM_LIMIT",
    "CONTROL_CHANNEL",
    "INTERPRETER_START_TIMEOUT",
    "CONTEXT_RESTART_WAIT",
    "ERROR_CODES",
    "display",
    "as_dict",
    "ProtocolError",
    "Frame",
    "encode_frame",
    "decode_head",
    "decode_header",
    "FrameDecoder",
    "Message",
    "Hello",
    "Ping",
    "Resume",
    "Quiesce",
    "Quiesced",
    "Adopt",
    "Configure",
    "NetAccept",
    "NetConnect",
    "NetListening",
    "NetConnected",
    "Result",
    "Error",
    "Data",
    "End",
    "Credit",
    "Cancel",
    "Detach",
    "ProcessStart",
    "ProcessStarted",
    "ProcessAttach",
    "ProcessExit",
    "ProcessStdin",
    "ProcessResize",
    "ProcessSignal",
    "ProcessList",
    "ProcessInfo",
    "FileRead",
    "FileWrite",
    "FileList",
    "FileStat",
    "FileRemove",
    "FileRename",
    "FileMakeDir",
    "WatchStart",
    "WatchStarted",
    "WatchEvent",
    "EntryInfo",
    "LANGUAGES",
    "ContextCreate",
    "ContextInfo",
    "ContextList",
    "ContextRestart",
    "ContextRemove",
    "CodeRun",
    "CodeResult",
    "CodeError",
    "CodeDone",
    "MESSAGES",
    "parse",
    "encode",
]
