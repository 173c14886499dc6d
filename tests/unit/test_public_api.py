"""``firebox.__all__`` is the public API; changing it is a decision, made here on purpose."""

from __future__ import annotations

import inspect

import firebox
import firebox.exceptions

PUBLIC = [
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
    "SandboxLostException",
    "SandboxMetrics",
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


def test_all_is_pinned() -> None:
    assert sorted(firebox.__all__) == PUBLIC
    assert len(set(firebox.__all__)) == len(firebox.__all__)


def test_every_name_resolves() -> None:
    for name in firebox.__all__:
        assert getattr(firebox, name) is not None, name


def test_version() -> None:
    assert firebox.__version__ == "0.1.0"


def test_every_exception_is_exported_under_one_root() -> None:
    defined = [
        obj
        for obj in vars(firebox.exceptions).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == "firebox.exceptions"
    ]
    assert defined
    for exc in defined:
        assert exc.__name__ in firebox.__all__, exc
        assert exc.__name__ in firebox.exceptions.__all__, exc
        assert issubclass(exc, firebox.FireboxException), exc


def test_e2b_shaped_exceptions() -> None:
    # E2B's catch sites keep working: these are SandboxExceptions there too.
    for name in (
        "TimeoutException",
        "NotFoundException",
        "InvalidArgumentException",
        "NotEnoughSpaceException",
        "RateLimitException",
        "CommandExitException",
    ):
        assert issubclass(getattr(firebox, name), firebox.SandboxException), name
    assert issubclass(firebox.CommandExitException, firebox.CommandResult)
    e = firebox.CommandExitException("out", "err", 2, None)
    assert (e.stdout, e.stderr, e.exit_code, e.error) == ("out", "err", 2, None)
    assert "code 2" in str(e) and "err" in str(e)
    assert e != firebox.CommandExitException("out", "err", 2, None)  # exceptions: identity
    assert {e}  # and hashable


def test_sync_and_async_entry_points() -> None:
    assert firebox.Sandbox.__module__ == "firebox._sync.sandbox"
    assert firebox.AsyncSandbox.__module__ == "firebox._async.sandbox"
    for name in ("create", "connect", "list", "kill", "set_timeout", "get_info", "is_running"):
        assert callable(getattr(firebox.Sandbox, name, None)), name
        assert callable(getattr(firebox.AsyncSandbox, name, None)), name
