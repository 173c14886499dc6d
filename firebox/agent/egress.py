"""The sandbox's end of egress: a proxy port on loopback whose connections go to the daemon.

A sandbox has no network interface but loopback (the jail has a network namespace of its own,
the microVM no network device). When its network policy opens anything, the daemon asks the
agent (``protocol.NetAccept``) to listen on 127.0.0.1:3128 and carries each connection made
to it over the agent's channel to the daemon's proxy (server/egress.py), which resolves the
name, applies the policy and connects, or answers 403. Programs find the port through the usual
proxy variables, which the agent puts in the environment of everything it starts from then on
(processes, and every cell of every context).

The agent starts listening before the sandbox is handed to its owner, so no user process can
have taken the port first.
"""

from __future__ import annotations

import socket
import threading

from firebox import protocol
from firebox.agent import relay
from firebox.agent.channel import Stream
from firebox.agent.errors import Fail

_lock = threading.Lock()
_listener: socket.socket | None = None
_port = 0
ACCEPT_POLL = 0.5  # how often a waiting accept checks whether it was cancelled
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def proxy_env() -> dict[str, str]:
    """The proxy variables for a sandbox whose egress is open; empty when it is not."""
    if not _port:
        return {}
    url = f"http://127.0.0.1:{_port}"
    no_proxy = ",".join(LOOPBACK)
    env = {}
    for name, value in (("http_proxy", url), ("https_proxy", url), ("no_proxy", no_proxy)):
        env[name] = env[name.upper()] = value  # curl reads lower case, others upper
    return env


def _listen(port: int) -> socket.socket:
    global _listener, _port
    with _lock:
        if _listener is None:
            if not isinstance(port, int) or not 1024 <= port <= 65535:
                raise Fail("invalid", f"egress port {port!r} must be 1024..65535")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen(64)
            except OSError as e:
                sock.close()
                raise Fail("unavailable", f"cannot listen on 127.0.0.1:{port}: {e}") from None
            sock.settimeout(ACCEPT_POLL)
            _listener, _port = sock, port
        return _listener


def accept(stream: Stream, msg: protocol.NetAccept, payload: bytes) -> None:
    listener = _listen(msg.port)
    stream.send(protocol.NetListening(port=_port))
    conn = None
    while conn is None:
        if stream.cancelled or stream.done:
            return None
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
    if stream.cancelled or stream.done:  # lost the race with a cancel: refuse the client
        conn.close()
        return None
    relay.carry(stream, conn)
    return None
