"""Code execution's value types and the parsing of its event stream (sans-I/O).

Named and shaped like the E2B Code Interpreter SDK (``Execution``, ``Result``, ``Logs``,
``ExecutionError``, ``Context``, ``OutputMessage``), so an agent written for it moves over by
changing an import.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from firebox._core.responses import _unexpected, ndjson_value

# MIME type → Result attribute; the order is the order of ``formats()``
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


@dataclass
class OutputMessage:
    """One chunk of a cell's stdout or stderr, as it was printed."""

    line: str
    timestamp: int  # nanoseconds since the epoch, when the SDK received it
    error: bool = False  # True for stderr

    def __str__(self) -> str:
        return self.line


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class ExecutionError:
    """The cell raised (or timed out, or its interpreter died): ``traceback`` shows the
    user's code."""

    name: str
    value: str
    traceback: str


@dataclass
class Result:
    """One rich output of a cell: a display call or the cell's final value, in every MIME form
    the object offered. Binary forms (png, jpeg, pdf) are base64 text. ``chart`` is the
    plotted data of a matplotlib line, bar, scatter or pie chart, else None."""

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    javascript: str | None = None
    chart: dict[str, Any] | None = None
    is_main_result: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # MIME types without a field

    def formats(self) -> list[str]:
        """The forms this result has: "text", "html", "png", … (and extra MIME types)."""
        out = [name for name in MIME_FIELDS.values() if getattr(self, name) is not None]
        if self.chart is not None:
            out.append("chart")
        return out + list(self.extra)

    # Jupyter shows a Result the way it shows the original object.
    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_png_(self) -> str | None:
        return self.png

    def _repr_jpeg_(self) -> str | None:
        return self.jpeg

    def _repr_pdf_(self) -> str | None:
        return self.pdf

    def _repr_latex_(self) -> str | None:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def _repr_javascript_(self) -> str | None:
        return self.javascript

    def __str__(self) -> str:
        return self.text or ""


@dataclass
class Execution:
    """Everything one ``run_code`` produced."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    # the cell printed more than the daemon forwards (--max-output-mb): the rest of its
    # stdout/stderr was discarded, after a marker line in stderr
    output_truncated: bool = False

    @property
    def text(self) -> str | None:
        """The text of the cell's main result (its final value), if it had one."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None


@dataclass
class Context:
    """A named, stateful execution context (``create_code_context``)."""

    id: str
    language: str
    cwd: str


def context_id(context: Context | str) -> str:
    return context.id if isinstance(context, Context) else context


def parse_context(obj: Any) -> Context:
    if not isinstance(obj, dict) or not all(
        isinstance(obj.get(k), str) for k in ("id", "language", "cwd")
    ):
        raise _unexpected(f"a code context {obj!r:.200}")
    return Context(obj["id"], obj["language"], obj["cwd"])


def parse_result(event: dict[str, Any]) -> Result:
    data = event.get("data")
    if not isinstance(data, dict):
        raise _unexpected(f"a result without data {event!r:.200}")
    result = Result(is_main_result=event.get("is_main_result") is True)
    chart = event.get("chart")
    result.chart = chart if isinstance(chart, dict) else None
    for mime, value in data.items():
        name = MIME_FIELDS.get(mime)
        if name is None:
            result.extra[mime] = value
        elif name == "json":
            result.json = value if not isinstance(value, str) else _maybe_json(value)
        else:
            setattr(result, name, value if isinstance(value, str) else str(value))
    return result


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_code_event(line: str) -> dict[str, Any] | None:
    """One NDJSON line of a code stream; None for an empty line or an unknown event type
    (a newer daemon may add some)."""
    event = ndjson_value(line, "code stream")
    if event is None:
        return None
    if not isinstance(event, dict):
        raise _unexpected(f"a code event that is not an object: {line!r:.200}")
    if event.get("type") not in ("stdout", "stderr", "result", "error", "end"):
        return None
    return event


def output_message(event: dict[str, Any]) -> OutputMessage:
    return OutputMessage(str(event.get("text", "")), time.time_ns(), event["type"] == "stderr")


def parse_error(event: dict[str, Any]) -> ExecutionError:
    return ExecutionError(
        str(event.get("name", "")), str(event.get("value", "")), str(event.get("traceback", ""))
    )


def end_error(event: dict[str, Any], current: ExecutionError | None) -> ExecutionError | None:
    """The error an ``end`` event implies: a timeout or a restarted interpreter is reported
    even when the cell's own error said less; an agent failure becomes an error too."""
    reason = event.get("reason") or event.get("message") or ""
    if event.get("timed_out"):
        return ExecutionError(
            "TimeoutError",
            str(reason or "the cell ran out of time"),
            current.traceback if current else "",
        )
    if event.get("restarted") and current is None:
        return ExecutionError("ContextRestarted", str(reason or "the interpreter restarted"), "")
    if event.get("error") and current is None:
        return ExecutionError(str(event["error"]), str(reason), "")
    return current
