"""Reaching a test server in a sandbox through the daemon's port proxy, as a client outside
would: plain HTTP to the daemon's address with the preview host in the Host header (the
*.localhost names need no resolver that way), and a small WebSocket client (wsproto)."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import httpx
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from tests.conftest import Daemon

SERVER = Path(__file__).with_name("server.py")
TOKEN_HEADER = "Firebox-Traffic-Token"
WAIT = 90.0


def start_server(sbx: Any, port: int = 8000) -> None:
    """Run tests/ports/server.py in ``sbx`` on ``port``; returns once it answers inside."""
    sbx.files.write("/tmp/portsrv.py", SERVER.read_text())
    sbx.commands.run(f"python3 /tmp/portsrv.py {port} >/tmp/portsrv.log 2>&1", background=True)
    probe = (
        "import socket,time\n"
        "for _ in range(600):\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), 1).close(); break\n"
        "    except OSError: time.sleep(0.1)\n"
    )
    sbx.commands.run(f'python3 -c "{probe}"', timeout=int(WAIT))


def client(
    daemon: Daemon,
    host: str,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Client:
    sent = {"Host": host, **(headers or {})}
    if token is not None:
        sent[TOKEN_HEADER] = token
    return httpx.Client(base_url=daemon.url, headers=sent, timeout=WAIT, **kw)


class WebSocket:
    """A blocking WebSocket client over a plain socket to the daemon."""

    def __init__(self, daemon: Daemon, host: str, path: str, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.sock.sendall(self.ws.send(Request(host=host, target=path, extra_headers=extra)))
        self.pending: list[Any] = []
        event = self._next()
        if isinstance(event, RejectConnection):
            self.close()
            raise ConnectionRefusedError(f"refused with {event.status_code}")
        assert isinstance(event, AcceptConnection), event

    def _next(self) -> Any:
        deadline = time.monotonic() + WAIT
        while not self.pending:
            if time.monotonic() > deadline:
                raise TimeoutError("no WebSocket event in time")
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise ConnectionError("the connection closed")
        return self.pending.pop(0)

    def send(self, text: str | bytes) -> None:
        msg = TextMessage(data=text) if isinstance(text, str) else BytesMessage(data=text)
        self.sock.sendall(self.ws.send(msg))

    def receive(self) -> str | bytes | None:
        """The next whole message; None once the other end closed."""
        parts: list[Any] = []
        while True:
            event = self._next()
            if isinstance(event, CloseConnection):
                return None
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()
