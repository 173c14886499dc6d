"""A cell being run: what goes to the daemon's ``code.run`` channel, and how the cell ended.

Frames go out as the cell produces them: ``Data`` (fd 1/2, UTF-8 text), ``CodeResult``, at
most one ``CodeError``; each sent with ``send_counted``, so a daemon that reads slowly holds up
the interpreter's pump (and so the cell) instead of filling the agent's memory. The final
``Result`` (``CodeDone``) is sent by the request (contexts.py).

Everything here comes from a worker running user code: strings are made valid Unicode
(``clean``) and bounded (``text``) before they reach a frame.
"""

from __future__ import annotations

import threading

from firebox import protocol
from firebox.agent.channel import Stream

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from typing import Any

TEXT_CHUNK = protocol.CHUNK // 4  # characters per Data frame: at most CHUNK bytes of UTF-8
ERROR_VALUE_MAX = 256 * 1024  # characters; ×6 for JSON escapes stays well inside MAX_HEADER
ERROR_TRACEBACK_MAX = 512 * 1024


def _cut(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return (
        value[: limit // 2]
        + f"\n… ({len(value) - limit} characters left out) …\n"
        + value[-limit // 2 :]
    )


def clean(value: Any) -> Any:
    """A JSON value from a worker with every string valid Unicode: JSON escapes may carry lone
    surrogates, which would break the daemon's UTF-8 encoding further on."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {clean(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def text(value: object, limit: int = 1 << 20) -> str:
    """A string field of a message, bounded; anything else is empty."""
    return clean(value if isinstance(value, str) else "")[:limit]


class Cell:
    """One run of code: what the daemon's channel receives, and how it ended."""

    def __init__(self, stream: Stream, seq: int) -> None:
        self.stream = stream
        self.seq = seq
        self.cond = threading.Condition()
        self.finished = False
        self.cancelled = False
        self.timed_out = False
        self.timeout: float | None = None
        self.count: int | None = None
        self.status: int | None = None  # bash: the last command's exit status
        self.died: str | None = None  # why the interpreter ended during the cell
        self.killed = False  # ... because the agent ended it (timeout, restart, removal)
        self.error_sent = False
        self._live = True  # false once the daemon cancelled: output goes nowhere
        self.output_left: int | None = None  # bytes of text still forwarded (None: no limit)
        self.output_truncated = False

    # -- from the pump thread -------------------------------------------------------------

    def output(self, fd: int, text: str) -> None:
        if self.output_truncated:
            return
        if self.output_left is not None:
            size = len(text.encode("utf-8", "replace"))
            if size > self.output_left:
                # cut on a character boundary: each frame must stay valid UTF-8 on its own
                cut = text.encode("utf-8", "replace")[: self.output_left]
                text = cut.decode("utf-8", "ignore")
                size = len(text.encode("utf-8"))
                self.output_truncated = True
            self.output_left -= size
        for i in range(0, len(text), TEXT_CHUNK):
            self._send(protocol.Data(fd=fd), text[i : i + TEXT_CHUNK].encode("utf-8", "replace"))
        if self.output_truncated:
            marker = "\n[firebox: output truncated; the rest of the cell's output was discarded]\n"
            self._send(protocol.Data(fd=2), marker.encode())

    def result(
        self, data: dict[str, Any], main: bool, chart: dict[str, Any] | None, size: int
    ) -> None:
        """``size``: of the worker's message, about what the frame's header will be."""
        msg = protocol.CodeResult(data=data, is_main_result=main, chart=chart)
        # JSON escapes non-ASCII text, up to 6 bytes a character: check the exact size only
        # when it may matter (encoding a big PNG twice costs)
        if size > protocol.MAX_HEADER // 6:
            try:  # the exact size only when it may matter: encoding a big PNG twice costs
                protocol.encode(self.stream.channel, msg)
            except protocol.ProtocolError:
                note = (
                    f"(a result of {size / 1e6:.1f} MB was left out: one result may take "
                    f"{protocol.MAX_HEADER / 1e6:.0f} MB; save large output to a file instead)"
                )
                msg = protocol.CodeResult(data={"text/plain": note}, is_main_result=main)
        self._send(msg)

    def error(self, name: str, value: str, traceback: str) -> None:
        if self.error_sent:  # at most one per cell (protocol): the first is the cell's error
            return
        self.error_sent = True
        if self.timed_out:
            # The interrupt surfaces as the language's own (KeyboardInterrupt, an interrupted
            # script, status 130); say what happened in the words of the API.
            name, value = "TimeoutError", self.timeout_message()
        # bounded so that the frame fits even when every character needs a JSON escape
        self._send(
            protocol.CodeError(
                name=name[:1000],
                value=_cut(value, ERROR_VALUE_MAX),
                traceback=_cut(traceback, ERROR_TRACEBACK_MAX),
            )
        )

    def timeout_message(self) -> str:
        return (
            f"the cell ran longer than its timeout of {self.timeout:g} s and was interrupted; "
            "the context and its state are kept"
        )

    def finish(self, count: int | None, status: int | None) -> None:
        with self.cond:
            self.count, self.status, self.finished = count, status, True
            self.cond.notify_all()

    def wait_finished(self, timeout: float | None) -> bool:
        """With ``cond`` held: wait up to ``timeout`` for the end; whether it came."""
        return self.cond.wait_for(lambda: self.finished, timeout)

    def die(self, reason: str, by_agent: bool) -> None:
        with self.cond:
            self.died, self.killed, self.finished = reason, by_agent, True
            self.cond.notify_all()

    # -- from the request thread ----------------------------------------------------------

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def send_error(self, name: str, value: str, traceback: str = "") -> None:
        if not self.error_sent:
            self.error_sent = True
            # bounded so that the frame fits even when every character needs a JSON escape
        self._send(
            protocol.CodeError(
                name=name[:1000],
                value=_cut(value, ERROR_VALUE_MAX),
                traceback=_cut(traceback, ERROR_TRACEBACK_MAX),
            )
        )

    def _send(self, msg: protocol.Message, payload: bytes = b"") -> None:
        if self._live:
            self._live = self.stream.send_counted(msg, payload)
