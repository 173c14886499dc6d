"""The port proxy as an attacker meets it (server/ports, docs/PORTS.md), on every backend:
Host header tricks, a sandbox reaching another sandbox's port or the daemon through it,
requests smuggled in conflicting lengths, oversized headers. What must hold: a port answers
only its own sandbox's token (or public traffic), and nothing reaches the daemon's API or
another sandbox by way of a preview host."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from firebox import Sandbox
from tests.conftest import Daemon
from tests.ports.helpers import WAIT, client, start_server
from tests.security.helpers import run

PORT = 8000


@pytest.fixture(scope="module")
def pair(daemon: Daemon) -> Iterator[tuple[Sandbox, Sandbox]]:
    """Two sandboxes serving the test server: an attacker's and a victim's."""
    a, b = Sandbox.create(timeout=1800), Sandbox.create(timeout=1800)
    try:
        start_server(a, PORT)
        start_server(b, PORT)
        yield a, b
    finally:
        a.kill()
        b.kill()


def _raw(daemon: Daemon, request: bytes) -> bytes:
    """Send ``request`` as it is; everything the daemon answers until it closes or goes
    quiet."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(request)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return got


def _hello(sbx: Sandbox) -> bytes:
    """What the victim's server says first: its sandbox's host name."""
    return f"hello from {sbx.get_info().sandbox_id.replace('_', '-')}".encode()


@pytest.mark.parametrize(
    "shape",
    [
        "{port}-{victim}.localhost.evil.example:{dport}",  # the domain inside another
        "{port}-{victim}.evil.localhost:{dport}",  # one label more
        "{port}-{victim}.localhost@127.0.0.1:{dport}",
        "{port}-{victim}xlocalhost:{dport}",
        " {port}-{victim}.localhost:{dport}",
    ],
)
def test_host_header_tricks_reach_no_sandbox(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox], shape: str
) -> None:
    _, victim = pair
    vid = victim.sandbox_id.replace("_", "-")
    host = shape.format(port=PORT, victim=vid, dport=daemon.port)
    answer = _raw(daemon, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert _hello(victim) not in answer, answer[:300]


def test_two_host_headers_with_one_sandboxs_token_open_neither_other(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox]
) -> None:
    attacker, victim = pair
    request = (
        f"GET / HTTP/1.1\r\nHost: {attacker.get_host(PORT)}\r\nHost: {victim.get_host(PORT)}\r\n"
        f"Firebox-Traffic-Token: {attacker.traffic_access_token}\r\nConnection: close\r\n\r\n"
    )
    answer = _raw(daemon, request.encode())
    assert _hello(victim) not in answer, answer[:300]


def test_an_absolute_target_does_not_pick_the_sandbox(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox]
) -> None:
    attacker, victim = pair
    request = (
        f"GET http://{victim.get_host(PORT)}/ HTTP/1.1\r\nHost: {attacker.get_host(PORT)}\r\n"
        f"Firebox-Traffic-Token: {attacker.traffic_access_token}\r\nConnection: close\r\n\r\n"
    )
    answer = _raw(daemon, request.encode())
    assert _hello(victim) not in answer, answer[:300]


def test_a_request_smuggled_in_conflicting_lengths_reaches_nothing(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox]
) -> None:
    attacker, victim = pair
    smuggled = f"GET / HTTP/1.1\r\nHost: {victim.get_host(PORT)}\r\n\r\n"
    for framing in (
        f"Content-Length: {len(smuggled) + 5}\r\nTransfer-Encoding: chunked\r\n",
        f"Transfer-Encoding: chunked\r\nContent-Length: {len(smuggled) + 5}\r\n",
        f"Content-Length: 5\r\nContent-Length: {len(smuggled) + 5}\r\n",
    ):
        request = (
            f"POST /upload HTTP/1.1\r\nHost: {attacker.get_host(PORT)}\r\n"
            f"Firebox-Traffic-Token: {attacker.traffic_access_token}\r\n{framing}\r\n"
            f"0\r\n\r\n{smuggled}"
        )
        answer = _raw(daemon, request.encode())
        assert _hello(victim) not in answer, (framing, answer[:300])
        # nor to the daemon's API, which the attacker has no key for
        api = f"GET /sandboxes HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\n\r\n"
        request = request.replace(smuggled, api)
        answer = _raw(daemon, request.encode())
        assert victim.sandbox_id.encode() not in answer, (framing, answer[:300])


@pytest.mark.parametrize("size", [64 << 10, 1 << 20])
def test_oversized_headers_are_refused_and_the_daemon_lives_on(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox], size: int
) -> None:
    attacker, _ = pair
    request = (
        f"GET / HTTP/1.1\r\nHost: {attacker.get_host(PORT)}\r\n"
        f"Firebox-Traffic-Token: {attacker.traffic_access_token}\r\n"
        f"X-Big: {'a' * size}\r\nConnection: close\r\n\r\n"
    )
    answer = _raw(daemon, request.encode())
    # refused by the daemon itself, before the app or the sandbox sees any of it
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"request headers over 64 KiB" in answer, answer[:300]  # the daemon's, not the server's
    with client(daemon, attacker.get_host(PORT), attacker.traffic_access_token) as c:
        assert c.get("/").status_code == 200


def test_a_sandbox_reaches_neither_the_daemon_nor_another_sandbox_through_it(
    daemon: Daemon, pair: tuple[Sandbox, Sandbox]
) -> None:
    _, victim = pair
    with Sandbox.create(allow_internet_access=True) as inside:
        target = f"http://{victim.get_host(PORT)}/"
        for how in (
            # straight to the daemon's address (a sandbox's loopback is its own)
            f"curl -s -m 10 -H 'Host: {victim.get_host(PORT)}' "
            f"-H 'Firebox-Traffic-Token: {victim.traffic_access_token}' "
            f"http://127.0.0.1:{daemon.port}/",
            # through its egress proxy, which refuses loopback whatever the name
            f"curl -s -m 10 -H 'Firebox-Traffic-Token: {victim.traffic_access_token}' {target}",
            f"curl -s -m 10 http://127.0.0.1:{daemon.port}/health",
        ):
            code, out = run(inside, how + "; echo EXIT=$?", timeout=WAIT)
            assert "hello from" not in out and '"status"' not in out, (how, out)
