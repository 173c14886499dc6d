"""Exceptions raised by the guest image builder."""

from __future__ import annotations

from pathlib import Path


class ImageBuildError(Exception):
    """A guest image could not be found, configured or built.

    Defined here for now; it will be re-parented under the project's exception root.
    ``log_path`` and ``tail`` are set when an external build step (debootstrap) failed, so
    callers can show the end of its output without reading the log themselves.
    """

    def __init__(
        self, message: str, *, log_path: Path | None = None, tail: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.log_path = log_path
        self.tail = tail
