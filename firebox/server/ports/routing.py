"""Sends traffic for a sandbox's port to it; everything else goes on to the daemon's API.

Two ways name a port: a preview host (``<port>-<sandbox id>.<domain>``, hosts.py), and E2B's
edge headers (``E2b-Sandbox-Id`` with an ``E2b-Sandbox-Port`` other than the in-sandbox
daemon's and the code interpreter's, which the E2B edge serves itself). Either way the request
passes the gate (gate.py), a paused sandbox wakes as any call wakes it, and the agent connects
to the port inside; the request or WebSocket is then relayed (http_relay.py, ws_relay.py). This
sits outermost, so the API's body cap does not apply: bodies stream, and are never held.
"""

from __future__ import annotations

import logging
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from firebox.agent_client import AgentError, AgentGone
from firebox.server import telemetry
from firebox.server.e2b import access as e2b_access
from firebox.server.errors import ApiError
from firebox.server.ports import answers, gate, hosts, http_relay, ws_relay

log = logging.getLogger("firebox.ports")
CONNECT_DEADLINE = 15.0


class PortTraffic:
    """ASGI middleware: a sandbox port's traffic to the sandbox, the rest to ``app``."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state  # the daemon's: manager, preview domain and links

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            target = self._target(scope)
            if target is not None:
                await self._serve(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    def _target(self, scope: Scope) -> tuple[str, int] | None:
        headers = dict(scope["headers"])
        sandbox = headers.get(e2b_access.SANDBOX_HEADER.encode())
        if sandbox is not None:
            raw = headers.get(e2b_access.PORT_HEADER.encode(), b"")
            if raw.isdigit() and 0 < int(raw) < 65536:
                port = int(raw)
                if port not in (e2b_access.ENVD_PORT, e2b_access.INTERPRETER_PORT):
                    return sandbox.decode("latin-1"), port
            return None  # the E2B edge's own (or its refusal of a bad port)
        host = headers.get(b"host")
        domain = getattr(self.state, "preview_domain", "")
        if host is None or not domain:
            return None
        return hosts.parse(domain, host.decode("latin-1"))

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, sandbox_id: str, port: int
    ) -> None:
        http = scope["type"] == "http"
        if http and scope["path"] == gate.OPEN_PATH:
            await self._open_link(scope, send, sandbox_id, port)
            return
        headers = [(k.lower(), v) for k, v in scope["headers"]]
        text = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        cookies = _cookies(text.get("cookie", ""))
        live = self.state.manager.live(sandbox_id)
        kind = scope["type"]
        if live is None or not gate.allowed(
            live.traffic_token, live.public_traffic, sandbox_id, port, text, cookies
        ):
            telemetry.PORT_CONNECTIONS.labels(kind=kind, outcome="refused").inc()
            await _refuse(scope, receive, send, 403, _needs_token(sandbox_id, port))
            return
        try:
            await self.state.manager.lifecycle.usable(live)
            conn = await live.agent.net_connect(port, CONNECT_DEADLINE)
        except (ApiError, AgentError, AgentGone) as e:
            telemetry.PORT_CONNECTIONS.labels(kind=kind, outcome="unreachable").inc()
            await _refuse(scope, receive, send, 502, _unreachable(sandbox_id, port, e))
            return
        telemetry.PORT_CONNECTIONS.labels(kind=kind, outcome="relayed").inc()
        passed = _passed_headers(scope, headers)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        if http:
            await http_relay.relay(scope, receive, send, conn, target, passed)
            return
        first = await receive()  # websocket.connect
        if first["type"] != "websocket.connect":
            conn.close()
            return
        await ws_relay.relay(scope, receive, send, conn, target, passed)

    async def _open_link(self, scope: Scope, send: Send, sandbox_id: str, port: int) -> None:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        live = self.state.manager.live(sandbox_id)
        links: gate.Links = self.state.preview_links
        if live is None or not links.redeem(query.get("code", ""), sandbox_id, port):
            await answers.plain(
                send,
                403,
                "this preview link was used already, has expired, or is for another host; "
                "ask for a new one (get_preview_url, or POST /sandboxes/{id}/previews)",
            )
            return
        value = gate.cookie_value(live.traffic_token, sandbox_id, port)
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        cookie = f"{gate.COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax{secure}"
        await answers.plain(
            send,
            303,
            "opening the preview",
            [(b"location", b"/"), (b"set-cookie", cookie.encode("latin-1"))],
        )


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def _passed_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers as the sandbox's server gets them: without the credentials that
    opened the port (token headers, the gate's cookie), with where the request came from."""
    drop = {n.encode() for n in gate.TOKEN_HEADERS}
    drop |= {e2b_access.SANDBOX_HEADER.encode(), e2b_access.PORT_HEADER.encode(), b"x-api-key"}
    drop |= {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    out = [(k, v) for k, v in headers if k not in drop and k != b"cookie"]
    for k, v in headers:
        if k == b"cookie":
            kept = [
                c.strip()
                for c in v.decode("latin-1").split(";")
                if c.strip() and not c.strip().startswith(gate.COOKIE + "=")
            ]
            if kept:
                out.append((b"cookie", "; ".join(kept).encode("latin-1")))
    client = scope.get("client")
    if client:
        out.append((b"x-forwarded-for", str(client[0]).encode()))
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme"))
    out.append((b"x-forwarded-proto", str(scheme).encode()))
    host = dict(headers).get(b"host")
    if host is not None:
        out.append((b"x-forwarded-host", host))
    return out


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    if scope["type"] == "http":
        await answers.plain(send, status, message)
        return
    await receive()  # websocket.connect
    await answers.refuse_websocket(scope, send, status, message)


def _needs_token(sandbox_id: str, port: int) -> str:
    return (
        f"port {port} of sandbox {sandbox_id} needs the sandbox's traffic token: send it in "
        f"the {gate.TOKEN_HEADERS[0]} header ({gate.TOKEN_HEADERS[1]} for E2B's SDKs), or open "
        "a one-time link from get_preview_url; a sandbox created with allow_public_traffic "
        "needs none. (Or no such sandbox is running.)"
    )


def _unreachable(sandbox_id: str, port: int, e: Exception) -> str:
    said = e.message if isinstance(e, ApiError | AgentError) else str(e)
    return f"port {port} of sandbox {sandbox_id} cannot be reached: {said}"
