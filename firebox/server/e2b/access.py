"""Who may reach a sandbox's insides through the E2B edge.

E2B's SDKs send no API key with in-sandbox requests: they name the sandbox (``E2b-Sandbox-Id``)
and, for a secure sandbox, show its access token (``X-Access-Token``). E2B lets anyone who
knows a non-secure sandbox's id in; firebox does not: every sandbox has an access token, the
E2B edge always hands it out (so E2B's SDKs always send it), and a request must show that
token or the owner's API key. Ports other than the in-sandbox daemon's (the code
interpreter's) also open to the sandbox's traffic token, which E2B's SDKs send there. No
credentials, wrong ones and a missing sandbox all get the same answer, so the edge is no
oracle for which ids exist. A signed file URL (E2B's ``download_url`` /
``upload_url``) is its own credential: a v1 signature made with the sandbox's token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from firebox.server.auth import hash_key
from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox, SandboxManager
from firebox.server.registry import Registry

SANDBOX_HEADER = "e2b-sandbox-id"
PORT_HEADER = "e2b-sandbox-port"
TOKEN_HEADER = "x-access-token"
TRAFFIC_HEADER = "e2b-traffic-access-token"
ENVD_PORT = 49983  # E2B's in-sandbox daemon
INTERPRETER_PORT = 49999  # E2B's code interpreter


@dataclass(frozen=True, slots=True)
class Access:
    """What the routing step found for one request: the sandbox, or why not."""

    sandbox: LiveSandbox | None
    error: ApiError | None = None
    port: int = ENVD_PORT
    # the core the routes translate onto (watchers live in the manager); Connect handlers
    # cannot see the app's state, so the routing step hands it over with the decision
    manager: SandboxManager | None = None


_current: ContextVar[Access] = ContextVar("e2b_access")


def current() -> LiveSandbox:
    """The sandbox the request in progress may reach; the refusal as an ApiError if none."""
    access = _current.get(None)
    if access is None:
        raise ApiError("internal", "an in-sandbox route ran without the E2B routing step")
    if access.sandbox is None:
        assert access.error is not None
        raise access.error
    return access.sandbox


def manager() -> SandboxManager:
    """The manager of the request in progress (after current() let it in)."""
    access = _current.get(None)
    if access is None or access.manager is None:
        raise ApiError("internal", "an in-sandbox route ran without the E2B routing step")
    return access.manager


def current_port() -> int:
    access = _current.get(None)
    return access.port if access is not None else ENVD_PORT


@contextmanager
def entered(access: Access) -> Iterator[None]:
    """Make ``access`` the decision ``current()`` sees while one request is served (a context
    variable: tasks the request's handlers start inherit it)."""
    token = _current.set(access)
    try:
        yield
    finally:
        _current.reset(token)


def _not_running(sandbox_id: str) -> ApiError:
    # "was not found" is what E2B's SDKs look for to raise SandboxNotRunningException
    return ApiError(
        "sandbox_not_found",
        f"sandbox {sandbox_id} was not found: it is not running, or the request shows neither "
        "its access token (X-Access-Token, from the create or connect answer) nor its owner's "
        "API key (X-API-Key)",
    )


def resolve(
    mgr: SandboxManager,
    registry: Registry,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    path: str,
) -> Access:
    """Decide one in-sandbox request: headers name the sandbox; its token, its owner's key or a
    valid signature (file routes) let the request in."""
    raw_port = headers.get(PORT_HEADER) or str(ENVD_PORT)
    port = int(raw_port) if raw_port.isascii() and raw_port.isdigit() and len(raw_port) <= 5 else 0
    if not 0 < port < 65536:
        return Access(None, ApiError("invalid_argument", "E2b-Sandbox-Port must be a port number"))
    sandbox_id = headers.get(SANDBOX_HEADER)
    signature = query.get("signature")
    if not sandbox_id:
        if signature and path == "/files":
            return _by_signature(mgr, signature, query, port)
        refused = ApiError("invalid_argument", "name the sandbox in E2b-Sandbox-Id")
        return Access(None, refused, port=port)
    live = mgr.live(sandbox_id)
    if live is None:
        return Access(None, _not_running(sandbox_id), port=port)
    token = headers.get(TOKEN_HEADER)
    if token is not None and _same(token, live.access_token):
        return Access(live, port=port, manager=mgr)
    traffic = headers.get(TRAFFIC_HEADER)
    # the traffic token opens the sandbox's served ports (sandbox_app routes by port): the
    # interpreter's today, never the in-sandbox daemon's files and processes
    if traffic is not None and port == INTERPRETER_PORT and _same(traffic, live.traffic_token):
        return Access(live, port=port, manager=mgr)
    key = headers.get("x-api-key")
    if key:
        record = registry.key_by_hash(hash_key(key))
        if record is not None and record.id == live.owner:
            return Access(live, port=port, manager=mgr)
    if signature and path == "/files" and _signed_by(live, signature, query):
        return Access(live, port=port, manager=mgr)
    # No credentials get the answer a wrong one gets: which ids exist is nobody's business.
    return Access(None, _not_running(sandbox_id), port=port)


def _same(shown: str, token: str) -> bool:
    return hmac.compare_digest(shown.encode(), token.encode())


def sign(path: str, operation: str, user: str, token: str, expiration: int | None) -> str:
    """E2B's v1 file-URL signature (what its SDKs compute from the access token)."""
    raw = f"{path}:{operation}:{user}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode()


def _signed_by(live: LiveSandbox, signature: str, query: Mapping[str, str]) -> bool:
    raw_exp = query.get("signature_expiration")
    try:
        expiration = int(raw_exp) if raw_exp else None
    except ValueError:
        return False
    if expiration is not None and expiration < time.time():
        return False
    path, user = query.get("path", ""), query.get("username", "")
    # the operation is not in the URL: a download signature must not open an upload, so the
    # route checks the operation again (signed_operation) once it knows its method
    return any(
        hmac.compare_digest(signature, sign(path, op, user, live.access_token, expiration))
        for op in ("read", "write")
    )


def _by_signature(
    mgr: SandboxManager, signature: str, query: Mapping[str, str], port: int
) -> Access:
    for live in mgr.all_live():
        if _signed_by(live, signature, query):
            return Access(live, port=port, manager=mgr)
    return Access(
        None, ApiError("unauthenticated", "the signature is invalid or expired"), port=port
    )


def signed_operation(live: LiveSandbox, query: Mapping[str, str], operation: str) -> bool:
    """Whether a signed URL was signed for ``operation`` ("read" or "write")."""
    signature = query.get("signature")
    if not signature:
        return True  # not a signed request: the token or key already let it in
    raw_exp = query.get("signature_expiration")
    try:
        expiration = int(raw_exp) if raw_exp else None
    except ValueError:
        return False
    want = sign(
        query.get("path", ""), operation, query.get("username", ""), live.access_token, expiration
    )
    return hmac.compare_digest(signature, want)
