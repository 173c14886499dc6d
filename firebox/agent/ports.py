"""The sandbox's end of the port proxy: a connection to a server a sandbox process runs.

The daemon (server/ports) asks (``protocol.NetConnect``) for a port; the agent connects to it
on the sandbox's own loopback, where a server bound to 127.0.0.1, ::1 or any address answers,
and carries the connection over its channel (relay.py). The sandbox needs no network device
for this, and the connection comes from inside: a server sees a local client.
"""

from __future__ import annotations

import socket

from firebox import protocol
from firebox.agent import relay
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail

CONNECT_DEADLINE = 10.0  # a local connect answers at once, unless the server's backlog is full


def connect(stream: Stream, msg: protocol.NetConnect, payload: bytes) -> None:
    port = msg.port
    if not isinstance(port, int) or not 0 < port < 65536:
        raise Fail("invalid", f"port {port!r} must be 1..65535")
    conn = _connect(port)
    if stream.cancelled or stream.done:  # the daemon gave up meanwhile
        conn.close()
        return None
    relay.carry(stream, conn)
    return None


def _connect(port: int) -> socket.socket:
    refused: OSError | None = None
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_DEADLINE)
        try:
            sock.connect((address, port))
        except TimeoutError:
            sock.close()
            raise Fail(
                "unavailable",
                f"port {port} in the sandbox did not take a connection in "
                f"{CONNECT_DEADLINE:g} s (is its server stuck?)",
            ) from None
        except OSError as e:  # refused, or no IPv6 loopback: try the next
            sock.close()
            refused = e
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise Fail(
        "connection_refused",
        f"nothing listens on port {port} in the sandbox ({refused.strerror if refused else ''}); "
        "start a server there, bound to 127.0.0.1 or 0.0.0.0",
    )
