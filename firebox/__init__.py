"""firebox: run untrusted, LLM-generated code in isolated sandboxes on your own host.

``Sandbox`` is the sync API and ``AsyncSandbox`` the async one; they have the same methods.
Names follow E2B's Python SDK, so E2B code moves over by changing its imports.
"""

from firebox._async import AsyncCommandHandle, AsyncSandbox, AsyncWatchHandle
from firebox._core.code import Context, Execution, ExecutionError, Logs, OutputMessage, Result
from firebox._core.models import (
    CommandResult,
    EntryInfo,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
    SandboxQuery,
    WriteEntry,
)
from firebox._sync import CommandHandle, Sandbox, WatchHandle
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
    SandboxNotFoundException,
    TimeoutException,
    TooLargeException,
    UnavailableException,
)
from firebox.version import __version__ as __version__

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncWatchHandle",
    "AuthenticationException",
    "CommandExitException",
    "DiskFullError",
    "MemoryLimitExceeded",
    "CommandHandle",
    "CommandResult",
    "ConflictException",
    "Context",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "FilesystemEvent",
    "FilesystemEventType",
    "FireboxException",
    "InvalidArgumentException",
    "Logs",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "PermissionDeniedException",
    "ProcessInfo",
    "RateLimitException",
    "Result",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "SandboxNotFoundException",
    "SandboxQuery",
    "TimeoutException",
    "TooLargeException",
    "UnavailableException",
    "WatchHandle",
    "WriteEntry",
]
