"""The owner's API for ports: a one-time link that opens a port in a browser."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import State

from firebox.server.deps import KnownSandbox
from firebox.server.models import PreviewLink, PreviewRequest, iso
from firebox.server.ports import gate, hosts

router = APIRouter(tags=["ports"])


def link_scheme(domain: str) -> str:
    """A domain with a port (the default ``localhost:<port>``) is the daemon itself, plain
    HTTP; a bare one is a deployment's wildcard name, behind a TLS proxy (docs/PORTS.md)."""
    return "http" if ":" in domain or domain == "localhost" else "https"


def preview_link(state: State, sandbox_id: str, port: int) -> PreviewLink:
    """A new one-time link to ``port`` of ``sandbox_id`` (for the REST API and MCP alike)."""
    links: gate.Links = state.preview_links
    code, expires = links.mint(sandbox_id, port)
    host = hosts.host_for(state.preview_domain, sandbox_id, port)
    url = f"{link_scheme(state.preview_domain)}://{host}{gate.OPEN_PATH}?code={code}"
    return PreviewLink(url=url, host=host, expires_at=iso(expires))


@router.post("/sandboxes/{sandbox_id}/previews", status_code=201, response_model=PreviewLink)
async def create_preview(body: PreviewRequest, sbx: KnownSandbox, request: Request) -> PreviewLink:
    """A link for a person's browser: opening it sets a cookie for that port's preview host
    (and no other) and redirects to ``/``. It works once, within five minutes; programs send
    the traffic token in the ``Firebox-Traffic-Token`` header instead."""
    return preview_link(request.app.state, sbx.id, body.port)
