"""The one place firebox's version is written (the SDK re-exports it; the daemon reports it)."""

__version__ = "0.1.0"
