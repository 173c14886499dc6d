"""Request and response shapes of the REST API; FastAPI derives the OpenAPI document from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from firebox import protocol
from firebox.settings import MAX_TIMEOUT, Envs, Lifecycle, Limits, Network, Text, Timeout

SandboxPath = Annotated[Text, StringConstraints(min_length=1, max_length=4096)]


def iso(ts: float) -> str:
    """A time as the API carries it: ISO 8601, UTC."""
    # Clamped: sandbox code sets file times at will (touch -d, utime) and none may break a call.
    ts = min(max(float(ts), 0.0), 253402300799.0)  # 1970-01-01 … 9999-12-31T23:59:59
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def wire_model(record: type[Any]) -> type[BaseModel]:
    """The REST shape of a record the agent sends (``protocol.ProcessInfo``): the same fields,
    defined once in protocol.py, checked on their way out."""
    from typing import get_type_hints

    hints = get_type_hints(record)
    return create_model(  # type: ignore[call-overload, no-any-return]
        record.__name__,
        __doc__=record.__doc__,
        **{name: (hints[name], ...) for name in record.__dataclass_fields__},
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SandboxInfo(Limits):
    """A sandbox as the daemon describes it: its limits flat, as E2B's info carries them."""

    model_config = ConfigDict(frozen=False, extra="ignore")
    sandbox_id: str
    template: str
    metadata: dict[str, str]
    started_at: str
    end_at: str
    state: str  # running | paused
    paused_at: str | None = None
    # what a pause keeps: "disk" (memory and devices on disk; survives a host reboot),
    # "memory" (frozen in place; lost at a reboot), or None (this backend cannot pause)
    pause_keeps: str | None = None
    lifecycle: Lifecycle = Lifecycle()
    backend: str
    allow_internet_access: bool
    network: Network
    # its ports: <port>-<sandbox id>.<domain> (server/ports), opened by its traffic token
    # unless network.allow_public_traffic; the owner's alone to see, as every field here
    domain: str = ""
    traffic_access_token: str = ""


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = Field(ge=1, le=65535)


class PreviewLink(BaseModel):
    """A one-time link that opens a port in a browser: it sets a cookie for that preview
    host alone, then redirects to ``/``; it works once, within ``expires_at``."""

    url: str
    host: str
    expires_at: str


class Resume(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: Timeout | None = None  # seconds from now, if longer than what it had left


class SetTimeout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: Timeout


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, StringConstraints(min_length=1, max_length=100)]


class KeyInfo(BaseModel):
    """A key as the admin sees it listed: never the key itself (only its hash is kept)."""

    id: str
    name: str
    admin: bool
    created_at: str
    revoked_at: str | None = None


class KeyCreated(BaseModel):
    key: str  # shown this once: only its hash is kept
    name: str
    id: str | None = None  # what GET /keys lists it as, and DELETE /keys/{id} revokes


class RunCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A shell line or argv reaches the agent in one 8 MiB frame (JSON-escaped): bounded here so
    # that a too-long one is a clear 400, not a failure on the way in.
    cmd: Annotated[Text, StringConstraints(max_length=256 * 1024)] | None = None
    argv: list[Annotated[Text, StringConstraints(max_length=128 * 1024)]] | None = Field(
        default=None, min_length=1, max_length=4096
    )
    envs: Envs = Field(default_factory=dict)
    cwd: SandboxPath | None = None
    user: Literal["user", "root"] = "user"
    timeout: float = Field(default=60, ge=0, le=MAX_TIMEOUT, description="seconds; 0 means none")
    stdin: bool = False
    stdin_data: Annotated[Text, StringConstraints(max_length=8 * 1024 * 1024)] | None = None
    tag: Annotated[Text, StringConstraints(max_length=200)] | None = None


if TYPE_CHECKING:  # what wire_model makes, for the type checker
    ProcessInfo = BaseModel
    ContextInfo = BaseModel
else:
    ProcessInfo = wire_model(protocol.ProcessInfo)
    ContextInfo = wire_model(protocol.ContextInfo)


class SendStdin(BaseModel):
    """``data`` as text, or ``data_base64`` as bytes (a terminal's keys need not be UTF-8)."""

    model_config = ConfigDict(extra="forbid")
    data: Annotated[Text, StringConstraints(max_length=8 * 1024 * 1024)] = ""
    data_base64: Annotated[str, StringConstraints(max_length=11 * 1024 * 1024)] | None = None
    eof: bool = False


class PtySize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cols: int = Field(default=80, ge=1, le=1000)
    rows: int = Field(default=24, ge=1, le=1000)


class StartPty(PtySize):
    """A terminal session: ``cmd`` (default an interactive login bash) on a new terminal of
    ``cols`` × ``rows``, as ``user`` in ``cwd``; ``timeout`` in seconds kills it (0: never)."""

    cmd: Annotated[Text, StringConstraints(min_length=1, max_length=256 * 1024)] | None = None
    envs: Envs = Field(default_factory=dict)
    cwd: SandboxPath | None = None
    user: Literal["user", "root"] = "user"
    timeout: float = Field(default=0, ge=0, le=MAX_TIMEOUT, description="seconds; 0 means none")


class SendSignal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    signal: str | int = "SIGTERM"


class EntryInfo(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: str
    symlink_target: str | None = None
    metadata: dict[str, str] | None = None  # set by an upload's X-Metadata-<key> headers


class RenameFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old_path: SandboxPath
    new_path: SandboxPath
    user: Literal["user", "root"] = "user"


class MakeDir(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SandboxPath
    user: Literal["user", "root"] = "user"


class MadeDir(BaseModel):
    created: bool


class CreateWatcher(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: SandboxPath
    recursive: bool = False
    user: Literal["user", "root"] = "user"


class WatcherCreated(BaseModel):
    watcher_id: str


class FilesystemEvent(BaseModel):
    type: str
    name: str


class Health(BaseModel):
    status: str
    version: str
    backend: str


Language = Literal["python", "javascript", "typescript", "bash"]


class RunCode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[Text, StringConstraints(max_length=256 * 1024)]
    language: Language | None = None
    context_id: Annotated[Text, StringConstraints(max_length=100)] | None = None
    envs: Envs = Field(default_factory=dict)
    timeout: float | None = Field(
        default=None, ge=0, le=MAX_TIMEOUT, description="seconds; the cell is interrupted at it"
    )


class CreateContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Language = "python"
    cwd: SandboxPath | None = None
    user: Literal["user", "root"] = "user"


class ActivityEntry(BaseModel):
    """Something run in a sandbox through the API (server/activity.py)."""

    at: str  # ISO 8601, UTC
    kind: Literal["command", "terminal", "cell"]
    text: str  # the command line or the cell's code, cut at 500 characters
    user: str | None = None
    pid: int | None = None
