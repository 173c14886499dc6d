"""One TCP connection inside the sandbox carried over one channel, both ways, with credit.

Egress (egress.py: a connection a sandbox process made to the proxy port) and ports (ports.py:
a connection the agent made to a sandbox server for the daemon's port proxy) are the same
stream once connected: the socket's bytes go out as counted ``data`` frames and its end as
``end``; the daemon's ``data`` frames go into the socket, credited once written (a slow socket
holds only its own channel back), and its ``end`` half-closes the socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from firebox import protocol
from firebox.agent.channel import Stream


def carry(stream: Stream, conn: socket.socket) -> None:
    """Relay ``conn`` over ``stream`` until both halves have ended, then close it; a cancel
    shuts the socket at once."""
    conn.settimeout(None)
    stream.on_cancel(lambda: shut(conn))
    try:
        stream.send(protocol.NetConnected())
        to_daemon = threading.Thread(target=_upstream, args=(stream, conn), daemon=True)
        to_daemon.start()
        _downstream(stream, conn)
        to_daemon.join()
    finally:
        conn.close()


def _upstream(stream: Stream, conn: socket.socket) -> None:
    """What the socket's peer writes goes to the daemon, as credit allows."""
    while True:
        try:
            data = conn.recv(protocol.CHUNK)
        except OSError:
            data = b""
        if not data:
            stream.send(protocol.End())
            return
        if not stream.send_counted(protocol.Data(), data):
            return


def _downstream(stream: Stream, conn: socket.socket) -> None:
    """What the daemon sends goes to the socket's peer."""
    while True:
        item = stream.receive()
        if item is None:  # cancelled: the daemon closed the connection
            shut(conn)
            return
        msg, data = item
        if isinstance(msg, protocol.End):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            return
        try:
            conn.sendall(data)
        except OSError:
            shut(conn)
            return
        stream.grant(1)


def shut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
