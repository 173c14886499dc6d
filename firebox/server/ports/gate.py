"""Who may reach a sandbox's port: its traffic token, a cookie from a one-time link, or anyone
when the sandbox was created with public traffic allowed.

The token (``traffic_access_token``, as E2B names it) is per sandbox and opens only that
sandbox's ports, never its files or processes. A browser cannot send a header, so the owner
asks for a one-time link (``links``); opening it sets a cookie for that one preview host
(host-only, HttpOnly) whose value is derived from the token for that host's sandbox and port:
it opens nothing else. E2B's SDKs send the token in E2B's header; firebox's own is accepted
alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from firebox.server.e2b.access import TRAFFIC_HEADER

TOKEN_HEADERS = ("firebox-traffic-token", TRAFFIC_HEADER)  # firebox's own, E2B's
COOKIE = "firebox_traffic"
OPEN_PATH = "/.firebox/open"  # a one-time link's path on the preview host
LINK_TTL = 300.0  # seconds a one-time link may wait to be opened
MAX_LINKS = 10_000  # links waiting at once, over all sandboxes: a bound on memory


def cookie_value(traffic_token: str, sandbox_id: str, port: int) -> str:
    """The cookie that opens ``port`` of ``sandbox_id`` alone."""
    msg = f"{sandbox_id}:{port}".encode()
    return hmac.new(traffic_token.encode(), msg, hashlib.sha256).hexdigest()


def allowed(
    traffic_token: str,
    public: bool,
    sandbox_id: str,
    port: int,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
) -> bool:
    if public:
        return True
    for name in TOKEN_HEADERS:
        shown = headers.get(name)
        if shown is not None and hmac.compare_digest(shown.encode(), traffic_token.encode()):
            return True
    cookie = cookies.get(COOKIE)
    expected = cookie_value(traffic_token, sandbox_id, port)
    return cookie is not None and hmac.compare_digest(cookie.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class _Link:
    sandbox_id: str
    port: int
    expires: float


class Links:
    """One-time links: minted for the owner (an API call with its key), each opened once."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def mint(self, sandbox_id: str, port: int) -> tuple[str, float]:
        """A new code for ``port`` of ``sandbox_id`` and when it expires (epoch seconds)."""
        now = time.time()
        self._links = {c: k for c, k in self._links.items() if k.expires > now}
        if len(self._links) >= MAX_LINKS:
            oldest = min(self._links, key=lambda c: self._links[c].expires)
            del self._links[oldest]
        code = secrets.token_urlsafe(24)
        link = _Link(sandbox_id, port, now + LINK_TTL)
        self._links[code] = link
        return code, link.expires

    def redeem(self, code: str, sandbox_id: str, port: int) -> bool:
        """Whether ``code`` opens this host; it is spent either way (a code shown to the
        wrong host is as good as leaked)."""
        link = self._links.pop(code, None)
        return (
            link is not None
            and link.expires > time.time()
            and (link.sandbox_id, link.port) == (sandbox_id, port)
        )

    def forget(self, sandbox_id: str) -> None:
        self._links = {c: k for c, k in self._links.items() if k.sandbox_id != sandbox_id}
