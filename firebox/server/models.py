"""Request and response shapes of the REST API; FastAPI derives the OpenAPI document from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TemplateName = Field(default="base", pattern=r"^[a-z][a-z0-9-]{0,62}$")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class CreateSandbox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str = TemplateName
    timeout: int | None = Field(default=None, ge=1, le=86400, description="seconds; default 300")
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)
    envs: dict[str, str] = Field(default_factory=dict, max_length=256)


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


class SetTimeout(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: int = Field(ge=1, le=86400)


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class KeyCreated(BaseModel):
    key: str
    name: str


class RunCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: str | None = Field(default=None, max_length=1_000_000)
    argv: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: Literal["user", "root"] = "user"
    timeout: float = Field(default=60, ge=0, le=86400, description="seconds; 0 means none")
    stdin: bool = False
    stdin_data: str | None = None
    tag: str | None = Field(default=None, max_length=200)


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
    data: str = ""
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
    old_path: str = Field(min_length=1)
    new_path: str = Field(min_length=1)
    user: Literal["user", "root"] = "user"


class MakeDir(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
    user: Literal["user", "root"] = "user"


class MadeDir(BaseModel):
    created: bool


class CreateWatcher(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
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
