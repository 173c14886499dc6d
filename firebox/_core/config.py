"""Where the daemon is and which key to show it.

Discovery order, first hit wins:

- URL: the ``api_url`` argument, ``$FIREBOX_URL``, then ``http://127.0.0.1:7070``.
- Key: the ``api_key`` argument, ``$FIREBOX_API_KEY``, then the file ``$FIREBOX_HOME/admin.key``
  (``FIREBOX_HOME`` defaults to ``/var/lib/firebox``), which the daemon writes on first start.

An empty value counts as unset, so ``FIREBOX_API_KEY=`` in a shell does not mean "no key".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from firebox.exceptions import AuthenticationException

DEFAULT_API_URL = "http://127.0.0.1:7070"
DEFAULT_HOME = "/var/lib/firebox"
KEY_FILE = "admin.key"
DEFAULT_REQUEST_TIMEOUT = 30.0  # seconds, for every call that is not a command stream
API_KEY_HEADER = "X-API-Key"


@dataclass(frozen=True)
class ConnectionConfig:
    api_url: str
    api_key: str = field(repr=False)  # never printed: reprs end up in logs
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    def headers(self) -> dict[str, str]:
        # Imported here because firebox/__init__ imports this module while it is loading.
        from firebox import __version__

        return {API_KEY_HEADER: self.api_key, "User-Agent": f"firebox-python/{__version__}"}


def resolve_config(
    api_key: str | None = None,
    api_url: str | None = None,
    request_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ConnectionConfig:
    """Builds the connection settings from arguments, then the environment, then defaults."""
    env = os.environ if env is None else env
    url = api_url or env.get("FIREBOX_URL") or DEFAULT_API_URL
    key = api_key or env.get("FIREBOX_API_KEY") or _local_key(url, env)
    timeout = DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout
    return ConnectionConfig(api_url=url.rstrip("/"), api_key=key, request_timeout=timeout)


def _local_key(url: str, env: Mapping[str, str]) -> str:
    # The admin key file belongs to the daemon on this host: it is never sent elsewhere.
    host = urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise AuthenticationException(
            f"no API key for the firebox daemon at {url}: set FIREBOX_API_KEY (or pass "
            "api_key=); the local admin key is only used for a daemon on this host"
        )
    return _read_key_file(env)


def key_file(env: Mapping[str, str]) -> Path:
    return Path(env.get("FIREBOX_HOME") or DEFAULT_HOME) / KEY_FILE


def _read_key_file(env: Mapping[str, str]) -> str:
    path = key_file(env)
    how = (
        "Set FIREBOX_API_KEY (or pass api_key=) to a key of the firebox daemon; on the daemon's "
        f"host the admin key is in {path}, written when `firebox serve` first starts "
        "(set FIREBOX_HOME if the daemon uses another state directory)."
    )
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise AuthenticationException(f"No firebox API key found. {how}") from None
    except OSError as e:
        raise AuthenticationException(
            f"No firebox API key: {path} exists but cannot be read ({e.strerror}). {how}"
        ) from None
    if not key:
        raise AuthenticationException(f"No firebox API key: {path} is empty. {how}")
    return key
