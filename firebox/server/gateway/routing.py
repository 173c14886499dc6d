"""Which node a request is for, read from the request alone (sans I/O).

- a preview host (``<port>-<sandbox id>.<domain>``) or E2B's ``E2b-Sandbox-Id`` header:
  the sandbox's node, whatever the path;
- ``/sandboxes/{id}/…``, ``/e2b/sandboxes/{id}/…``: the sandbox's node;
- a create (``POST /sandboxes``, ``POST /e2b/sandboxes``): a node placement chooses;
- a list of sandboxes: every node, the answers joined;
- ``DELETE /snapshots/{ref}``: the snapshot's node (its files are there);
- ``POST /templates/{name}/warm``: every node;
- the dashboard's overview and live list: every node, the answers joined;
- ``/mcp`` and template builds: one node per API key (an MCP session, and a build and its
  logs, live in one node's memory; a built template reaches the others through the
  template registry);
- ``/health`` and ``/metrics``: the gateway's own (each node serves its own metrics);
- anything else (keys, templates, snapshots' list, the dashboard, the OpenAPI document):
  any node, since what they read is the shared database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from firebox.server.ports import hosts

_ID = r"sbx_[0-9a-f]{16}"
_SANDBOX = re.compile(rf"^(?:/e2b(?:/v2)?)?/sandboxes/({_ID})(?:/.*)?$")
_CREATE = {"/sandboxes": "firebox", "/e2b/sandboxes": "e2b"}
_LISTS = {"/sandboxes", "/e2b/sandboxes", "/e2b/v2/sandboxes"}
_SNAPSHOT = re.compile(r"^(?:/e2b)?/snapshots/([^/]+)$")
_DASHBOARD = {"/dashboard/api/overview": "overview", "/dashboard/api/events": "events"}
_WARM = re.compile(r"^/templates/[^/]+/warm$")
_TEMPLATES = re.compile(r"^(?:/e2b(?:/v[23])?)?/templates(?:/.*)?$")


@dataclass(frozen=True, slots=True)
class Route:
    # sandbox | create | list | snapshot | warm | overview | events | keyed | health |
    # metrics | any
    kind: str
    edge: str = "firebox"  # firebox | e2b | port: whose error shape an answer of ours takes
    sandbox_id: str = ""
    ref: str = ""  # a snapshot's id or name


def route(method: str, path: str, headers: dict[bytes, bytes], domain: str) -> Route:
    host = headers.get(b"host", b"").decode("latin-1")
    preview = hosts.parse(domain, host) if host else None
    if preview is not None:
        return Route("sandbox", "port", preview[0])
    e2b_id = headers.get(b"e2b-sandbox-id")
    if e2b_id is not None:
        return Route("sandbox", "e2b", e2b_id.decode("latin-1"))
    edge = "e2b" if path.startswith("/e2b/") else "firebox"
    m = _SANDBOX.match(path)
    if m is not None:
        return Route("sandbox", edge, m[1])
    if method == "POST" and path in _CREATE:
        return Route("create", _CREATE[path])
    if method == "GET" and path in _LISTS:
        return Route("list", edge)
    m = _SNAPSHOT.match(path)
    if m is not None and method == "DELETE":
        return Route("snapshot", edge, ref=m[1])
    if method == "POST" and _WARM.match(path):
        return Route("warm")
    if method == "GET" and path in _DASHBOARD:
        return Route(_DASHBOARD[path])
    if path == "/mcp" or path.startswith("/mcp/") or _TEMPLATES.match(path):
        return Route("keyed", edge)
    if path == "/health":
        return Route("health")
    if path == "/metrics":
        return Route("metrics")
    return Route("any", edge)
