"""Request and response shapes of the REST API; FastAPI derives the OpenAPI document from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from firebox.images import DEFAULT_TEMPLATE

TemplateName = Field(default=DEFAULT_TEMPLATE, pattern=r"^[a-z][a-z0-9-]{0,62}$")


def _clean(value: str) -> str:
    # Everything here crosses into the sandbox (as UTF-8) or is stored and echoed back as JSON:
    # a lone surrogate or a NUL cannot make that trip, so it is refused at the edge.
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it has a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_clean)]
Key = Annotated[Text, StringConstraints(min_length=1, max_length=256)]
Value = Annotated[Text, StringConstraints(max_length=4096)]
EnvName = Annotated[Text, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^=]+$")]
EnvValue = Annotated[Text, StringConstraints(max_length=128 * 1024)]
Envs = Annotated[dict[EnvName, EnvValue], Field(max_length=256)]
SandboxPath = Annotated[Text, StringConstraints(min_length=1, max_length=4096)]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Limits(BaseModel):
    """A sandbox's resources; each one left out takes the daemon's default (``firebox serve
    --help``). The daemon also bounds each by its own maximum."""

    model_config = ConfigDict(extra="forbid")
    cpu_count: float | None = Field(default=None, gt=0, le=64, description="CPU share, in cores")
    memory_mb: int | None = Field(default=None, ge=64, le=65536)
    disk_mb: int | None = Field(default=None, ge=16, le=1 << 20, description="home and /tmp each")
    processes: int | None = Field(default=None, ge=16, le=65536)
    open_files: int | None = Field(default=None, ge=64, le=1 << 20, description="per process")
    output_mb: int | None = Field(
        default=None, ge=1, le=1024, description="printed output forwarded per command or cell"
    )


NetRule = Annotated[Text, StringConstraints(min_length=1, max_length=300)]


class Network(BaseModel):
    """Egress beyond ``allow_internet_access``: domains (``*.example.com``), IPs or CIDRs.
    ``allow_out`` wins over ``deny_out``; private, loopback, link-local and the host's own
    addresses stay closed whatever either says."""

    model_config = ConfigDict(extra="forbid")
    allow_out: list[NetRule] = Field(default_factory=list, max_length=256)
    deny_out: list[NetRule] = Field(default_factory=list, max_length=256)


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = TemplateName
    timeout: int | None = Field(default=None, ge=1, le=86400, description="seconds; default 300")
    metadata: dict[Key, Value] = Field(default_factory=dict, max_length=64)
    envs: Envs = Field(default_factory=dict)
    limits: Limits | None = None
    allow_internet_access: bool = Field(
        default=False, description="egress to the internet through the daemon's proxy"
    )
    network: Network | None = None


class SandboxInfo(BaseModel):
    sandbox_id: str
    template: str
    metadata: dict[str, str]
    started_at: str
    end_at: str
    state: str
    backend: str
    cpu_count: float
    memory_mb: int
    disk_mb: int
    processes: int
    open_files: int
    output_mb: int
    allow_internet_access: bool
    network: Network


class SetTimeout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: int = Field(ge=1, le=86400)


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[Text, StringConstraints(min_length=1, max_length=100)]


class KeyCreated(BaseModel):
    key: str
    name: str


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
    timeout: float = Field(default=60, ge=0, le=86400, description="seconds; 0 means none")
    stdin: bool = False
    stdin_data: Annotated[Text, StringConstraints(max_length=8 * 1024 * 1024)] | None = None
    tag: Annotated[Text, StringConstraints(max_length=200)] | None = None


class ProcessInfo(BaseModel):
    pid: int
    cmd: str | None
    argv: list[str] | None
    cwd: str | None
    user: str
    tag: str | None
    envs: dict[str, str]


class SendStdin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: Annotated[Text, StringConstraints(max_length=8 * 1024 * 1024)] = ""
    eof: bool = False


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


Language = Literal["python", "javascript", "bash"]


class RunCode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[Text, StringConstraints(max_length=256 * 1024)]
    language: Language | None = None
    context_id: Annotated[Text, StringConstraints(max_length=100)] | None = None
    envs: Envs = Field(default_factory=dict)
    timeout: float | None = Field(
        default=None, ge=0, le=86400, description="seconds; the cell is interrupted at it"
    )


class CreateContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Language = "python"
    cwd: SandboxPath | None = None
    user: Literal["user", "root"] = "user"


class ContextInfo(BaseModel):
    id: str
    language: str
    cwd: str
