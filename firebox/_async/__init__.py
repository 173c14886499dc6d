"""The SDK's classes: the async ones are written by hand, the sync ones generated from them."""

from firebox._async.command_handle import AsyncCommandHandle
from firebox._async.commands import AsyncCommands
from firebox._async.files import AsyncFilesystem
from firebox._async.pty import AsyncPty
from firebox._async.sandbox import AsyncSandbox
from firebox._async.watch import AsyncWatchHandle

__all__ = [
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFilesystem",
    "AsyncPty",
    "AsyncSandbox",
    "AsyncWatchHandle",
]
