"""API keys: created, stored hashed, checked on every request.

Keys carry 256 random bits, so a plain SHA-256 of the key is a safe lookup value (there is
nothing to brute-force); the plain key is shown once and, for the admin key, written to a
0600 file for the local SDK and CLI to find.

Keys are minted in E2B's form (``e2b_`` and hex digits) because E2B's JavaScript SDK checks
that form before it sends a request: the same key then works with firebox's SDKs and E2B's.
Keys minted before (``fbx_…``) keep working everywhere but there.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from fastapi import Request

from firebox.server.errors import ApiError
from firebox.server.registry import KeyRecord, Registry

KEY_PREFIX = "e2b_"


def e2b_shaped(key: str) -> bool:
    """Whether E2B's SDKs accept ``key`` without a setting to skip their check."""
    return key.startswith(KEY_PREFIX) and all(c in "0123456789abcdef" for c in key[4:])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(registry: Registry, name: str, admin: bool = False) -> str:
    key = KEY_PREFIX + secrets.token_hex(32)
    registry.add_key("key_" + secrets.token_hex(8), name, hash_key(key), admin)
    return key


def ensure_admin_key(registry: Registry, path: Path, given: bool = False) -> str:
    """Reuse the admin key stored at ``path`` if the registry knows it, else make a new one.
    A ``given`` key (a cluster's, from its secret) is never replaced: it is added if the
    registry does not know it yet, by whichever of the cluster's processes starts first."""
    if given:
        try:
            key = path.read_text().strip()
        except OSError as e:
            raise OSError(f"cannot read the admin key file {path}: {e.strerror}") from None
        if len(key) < 20:
            raise OSError(f"the admin key file {path} holds no key of 20 characters or more")
        key_hash = hash_key(key)
        registry.add_given_key("key_" + key_hash[:16], "admin", key_hash, admin=True)
        return key
    if path.exists():
        key = path.read_text().strip()
        record = registry.key_by_hash(hash_key(key))
        if record is not None and record.admin and e2b_shaped(key):
            return key  # a key of the old form stays valid; the file gets one of the new
    key = new_key(registry, "admin", admin=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    tmp.replace(path)
    return key


def key_of(headers: Mapping[str, str]) -> str | None:
    """The API key a request shows: ``X-API-Key``, else ``Authorization: Bearer``
    (``headers`` with lower-case names, or Starlette's, which match any case)."""
    key = headers.get("x-api-key")
    if key is None:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
    return key or None


def caller_of(registry: Registry, headers: Mapping[str, str]) -> KeyRecord | None:
    """The key record of the key a request shows; None without one, or for an unknown one."""
    key = key_of(headers)
    return registry.key_by_hash(hash_key(key)) if key else None


async def authenticate(request: Request) -> KeyRecord:
    """FastAPI dependency: the caller's key record, or 401."""
    key = key_of(request.headers)
    if not key:
        raise ApiError(
            "unauthenticated",
            "no API key: send it in the X-API-Key header (the local admin key is in "
            "$FIREBOX_HOME/admin.key)",
        )
    registry: Registry = request.app.state.registry
    record = registry.key_by_hash(hash_key(key))
    if record is None:
        raise ApiError("unauthenticated", "unknown API key: check FIREBOX_API_KEY")
    return record
