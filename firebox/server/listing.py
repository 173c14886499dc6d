"""Which of a key's sandboxes a list shows, in what order, a page at a time: one definition
for firebox's own ``GET /sandboxes`` and E2B's ``/v2/sandboxes``.

Order is by start time, then id (stable); a page's cursor is the last sandbox it showed, so
a sandbox created or ended between two pages neither repeats nor shifts another out.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl

from firebox.server.errors import ApiError
from firebox.server.manager import LiveSandbox, SandboxManager

STATES = ("running", "paused")


@dataclass(frozen=True)
class Query:
    metadata: Mapping[str, str] = field(default_factory=dict)
    states: frozenset[str] = frozenset(STATES)
    started_after: datetime | None = None
    templates: frozenset[str] | None = None  # any of these names (a template and its aliases)
    newest_first: bool = False
    limit: int | None = None
    next_token: str | None = None


@dataclass(frozen=True)
class Page:
    sandboxes: list[LiveSandbox]
    matching: int  # before paging: E2B's X-Total-Running
    next_token: str | None


def parse_metadata(raw: str | None) -> dict[str, str]:
    """The ``metadata`` filter: URL-encoded ``k=v&k2=v2``, every pair to match."""
    if not raw:
        return {}
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        raise ApiError(
            "invalid_argument",
            "metadata must be URL-encoded pairs like 'user=alice&app=prod'",
        ) from None


def parse_states(raw: str | None) -> frozenset[str]:
    states = frozenset(s.strip() for s in raw.split(",")) if raw else frozenset(STATES)
    if unknown := states - set(STATES):
        raise ApiError(
            "invalid_argument", f"unknown state {sorted(unknown)}: give running and/or paused"
        )
    return states


def parse_order(raw: str | None, default: str) -> bool:
    """True for newest first."""
    order = raw or default
    if order not in ("asc", "desc"):
        raise ApiError("invalid_argument", "order is asc (oldest first) or desc (newest first)")
    return order == "desc"


def select(mgr: SandboxManager, owner: str, q: Query) -> Page:
    found = [s for s in mgr.list(owner, dict(q.metadata)) if s.state in q.states]
    if q.started_after is not None:
        found = [s for s in found if s.started_at >= q.started_after.timestamp()]
    if q.templates is not None:
        names = q.templates
        found = [s for s in found if s.spec.template in names or s.settings.template in names]
    found.sort(key=lambda s: (s.started_at, s.id), reverse=q.newest_first)
    matching = len(found)
    if q.next_token:
        mark = _after(q.next_token)
        if q.newest_first:
            found = [s for s in found if (s.started_at, s.id) < mark]
        else:
            found = [s for s in found if (s.started_at, s.id) > mark]
    if q.limit is None or len(found) <= q.limit:
        return Page(found, matching, None)
    page = found[: q.limit]
    return Page(page, matching, _cursor(page[-1]))


def _cursor(live: LiveSandbox) -> str:
    return base64.urlsafe_b64encode(f"{live.started_at!r}|{live.id}".encode()).decode()


def _after(token: str) -> tuple[float, str]:
    try:
        started, sandbox_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return float(started), sandbox_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            "invalid_argument",
            "the page token (next_token; E2B's nextToken) is not one this API gave; start "
            "from the first page",
        ) from None
