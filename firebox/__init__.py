"""firebox: run untrusted, LLM-generated code in isolated sandboxes on your own host.

``Sandbox`` is the sync API and ``AsyncSandbox`` the async one; they have the same methods.
``Template`` / ``AsyncTemplate`` define and build custom templates (E2B's Template SDK).
Names follow E2B's Python SDK, so E2B code moves over by changing its imports.
"""

from firebox._async import AsyncCommandHandle, AsyncSandbox, AsyncWatchHandle
from firebox._async.template import AsyncTemplate
from firebox._core.code import Context, Execution, ExecutionError, Logs, OutputMessage, Result
from firebox._core.models import (
    CommandResult,
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    PtySize,
    SandboxInfo,
    SandboxMetrics,
    SandboxQuery,
    SnapshotInfo,
    WriteEntry,
)
from firebox._core.template_build import (
    BuildInfo,
    BuildStatusReason,
    LogEntry,
    TemplateBuildStatus,
    TemplateBuildStatusResponse,
    TemplateInfo,
)
from firebox._sync import CommandHandle, Sandbox, WatchHandle
from firebox._sync.template import Template
from firebox.exceptions import (
    AuthenticationException,
    CommandExitException,
    ConflictException,
    DiskFullError,
    FireboxException,
    InvalidArgumentException,
    MemoryLimitExceeded,
    NotEnoughSpaceException,
    NotFoundException,
    PermissionDeniedException,
    RateLimitException,
    SandboxException,
    SandboxLostException,
    SandboxNotFoundException,
    TemplateBuildError,
    TimeoutException,
    TooLargeException,
    UnavailableException,
)
from firebox.recipes.readycmd import (
    ReadyCmd,
    wait_for_file,
    wait_for_port,
    wait_for_process,
    wait_for_timeout,
    wait_for_url,
)
from firebox.version import __version__ as __version__

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncTemplate",
    "AsyncWatchHandle",
    "AuthenticationException",
    "BuildInfo",
    "BuildStatusReason",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "ConflictException",
    "Context",
    "DiskFullError",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "FireboxException",
    "InvalidArgumentException",
    "LogEntry",
    "Logs",
    "MemoryLimitExceeded",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "PermissionDeniedException",
    "ProcessInfo",
    "PtySize",
    "RateLimitException",
    "ReadyCmd",
    "Result",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxLostException",
    "SandboxNotFoundException",
    "SandboxQuery",
    "SnapshotInfo",
    "Template",
    "TemplateBuildError",
    "TemplateBuildStatus",
    "TemplateBuildStatusResponse",
    "TemplateInfo",
    "TimeoutException",
    "TooLargeException",
    "UnavailableException",
    "WatchHandle",
    "WriteEntry",
    "wait_for_file",
    "wait_for_port",
    "wait_for_process",
    "wait_for_timeout",
    "wait_for_url",
]
