"""Code contexts: named, stateful interpreters (python via IPython, javascript via node, bash),
and the cells run in them."""

from __future__ import annotations

from firebox.protocol.messages import Message
from firebox.protocol.records import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Seconds the agent gives a new interpreter to say ready (a python one under software emulation
# takes seconds), and a context's restart the killed cell to let go of the context: the
# daemon waits for these, and a margin, before it calls the agent unresponsive.
INTERPRETER_START_TIMEOUT = 60.0
CONTEXT_RESTART_WAIT = 20.0

LANGUAGES = ("python", "javascript", "typescript", "bash")


@dataclass(slots=True)
class ContextCreate(Message):
    """Start a context. Result value: ``ContextInfo`` fields. ``language`` is one of
    ``LANGUAGES``; ``cwd`` defaults to the user's home."""

    T = "context.create"
    language: str = "python"
    cwd: str | None = None
    user: str = "user"


@dataclass(slots=True)
class ContextInfo:
    """A code context (``ContextCreate``, ``ContextList``); the REST API's shape too."""

    id: str
    language: str
    cwd: str


@dataclass(slots=True)
class ContextList(Message):
    """Result value: a list of ``ContextInfo`` dicts (the default python context included)."""

    T = "context.list"


@dataclass(slots=True)
class ContextRestart(Message):
    """Kill the context's interpreter and start a fresh one (its state is lost)."""

    T = "context.restart"
    id: str = ""


@dataclass(slots=True)
class ContextRemove(Message):
    T = "context.remove"
    id: str = ""


@dataclass(slots=True)
class CodeRun(Message):
    """Run a cell in a context (``context_id``, else the default context of ``language``,
    else the default python context).

    Replies on the channel, each costing a credit: ``Data`` frames (fd 1/2, UTF-8 text as it is
    printed), ``CodeResult`` frames (one per display call and the cell's final value), at most
    one ``CodeError``; then the final ``Result`` whose value is ``CodeDone`` fields. ``timeout``
    interrupts the cell (KeyboardInterrupt for python, keeping the context's state); a cell that
    cannot be interrupted, or whose interpreter dies (``os._exit``, out of memory), ends with
    the context restarted and ``CodeDone.restarted`` set.
    """

    T = "code.run"
    code: str = ""
    context_id: str | None = None
    language: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    # python: run without counting an execution, storing history or showing the value (the
    # daemon's warm-up of a restored VM, which must leave no trace in the user's context)
    silent: bool = False
    # bytes of printed text (stdout and stderr) forwarded at most; past it a marker on stderr,
    # the rest dropped while the cell runs on, and CodeDone.output_truncated set
    output_limit: int | None = None


@dataclass(slots=True)
class CodeResult(Message):
    """One rich result: ``data`` maps MIME types to content (text, or base64 for binary types
    such as image/png), ``chart`` is the structured data of a matplotlib chart or None."""

    T = "code.result"
    data: dict[str, Any] = field(default_factory=dict)
    is_main_result: bool = False
    chart: dict[str, Any] | None = None


@dataclass(slots=True)
class CodeError(Message):
    """The cell raised: ``traceback`` shows the user's code, not the agent's."""

    T = "code.error"
    name: str = ""
    value: str = ""
    traceback: str = ""


@dataclass(slots=True)
class CodeDone:
    """Value of the final ``Result`` of a ``code.run`` channel."""

    execution_count: int | None = None
    timed_out: bool = False
    restarted: bool = False  # the interpreter died or could not be interrupted; state is lost
    reason: str | None = None  # why, when restarted or timed out
    output_truncated: bool = False  # it printed more than CodeRun.output_limit
