"""A server in a sandbox reached from outside through the daemon's port proxy (docs/PORTS.md),
on every backend: plain requests, 100 MB both ways, Server-Sent Events, a WebSocket echo, 50
connections at once; the traffic token, another sandbox's token, public traffic, one-time
links; a port nobody listens on; a kill ending open connections."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from firebox import Sandbox
from tests.conftest import Daemon
from tests.ports.helpers import WAIT, WebSocket, client, start_server

PORT = 8000
MB = 1 << 20


@pytest.fixture(scope="module")
def served(daemon: Daemon) -> Iterator[Sandbox]:
    """One sandbox running the test server, shared by the module's tests."""
    sbx = Sandbox.create(timeout=3600)
    try:
        start_server(sbx, PORT)
        yield sbx
    finally:
        sbx.kill()


def test_a_request_needs_the_sandboxs_own_token(
    daemon: Daemon, served: Sandbox, neighbour: Sandbox
) -> None:
    host = served.get_host(PORT)
    assert host.startswith(f"{PORT}-sbx-") and host.endswith(".localhost:" + str(daemon.port))
    with client(daemon, host, served.traffic_access_token) as c:
        r = c.get("/page?x=1")
        assert r.status_code == 200, r.text
        assert r.text.startswith("hello from ") and r.text.endswith("/page?x=1")
        seen = c.get("/headers").text
    # the credentials that opened the port stay with the daemon; where the request came from
    # is passed on
    assert served.traffic_access_token not in seen
    assert "x-forwarded-for: 127.0.0.1" in seen and f"x-forwarded-host: {host}" in seen
    for token in (None, "", neighbour.traffic_access_token, served.traffic_access_token[:-1]):
        with client(daemon, host, token) as c:
            r = c.get("/")
        assert r.status_code == 403, (token, r.text)
        assert "traffic token" in r.text and "hello" not in r.text
    # the E2B SDKs' header works the same
    with client(daemon, host) as c:
        r = c.get("/", headers={"e2b-traffic-access-token": served.traffic_access_token})
        assert r.status_code == 200, r.text


def test_public_traffic_needs_no_token(daemon: Daemon) -> None:
    with Sandbox.create(network={"allow_public_traffic": True}) as sbx:
        assert sbx.get_info().network["allow_public_traffic"] is True
        start_server(sbx, 8080)
        with client(daemon, sbx.get_host(8080)) as c:
            r = c.get("/")
        assert r.status_code == 200, r.text


def test_a_port_without_a_listener_is_a_clear_502(daemon: Daemon, served: Sandbox) -> None:
    with client(daemon, served.get_host(9), served.traffic_access_token) as c:
        r = c.get("/")
    assert r.status_code == 502
    assert "nothing listens on port 9" in r.text, r.text


def test_an_unknown_sandbox_or_host_is_refused(daemon: Daemon, served: Sandbox) -> None:
    gone = f"{PORT}-sbx-0000000000000000.localhost:{daemon.port}"
    with client(daemon, gone, served.traffic_access_token) as c:
        assert c.get("/").status_code == 403
    # a host outside the preview domain is the daemon's own API
    with client(daemon, f"127.0.0.1:{daemon.port}") as c:
        assert c.get("/health").status_code == 200


def test_100_mb_down_and_up_stream_through(daemon: Daemon, served: Sandbox) -> None:
    with client(daemon, served.get_host(PORT), served.traffic_access_token) as c:
        digest = hashlib.sha256()
        size = 0
        with c.stream("GET", "/big?mb=100") as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                digest.update(chunk)
                size += len(chunk)
        block = bytes(range(256)) * 256
        assert size == 100 * MB
        assert digest.hexdigest() == hashlib.sha256(block * (100 * MB // len(block))).hexdigest()

        def body() -> Iterator[bytes]:  # no length given: it goes chunked
            for _ in range(100 * MB // len(block)):
                yield block

        r = c.post("/upload", content=body())
        assert r.status_code == 200, r.text
        assert r.text == f"{100 * MB} {digest.hexdigest()}"


def test_server_sent_events_arrive_as_sent(daemon: Daemon, served: Sandbox) -> None:
    host, token = served.get_host(PORT), served.traffic_access_token
    with client(daemon, host, token) as c, c.stream("GET", "/sse") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
            if len(events) == 3:
                break
    assert events == ["tick 0", "tick 1", "tick 2"]


def test_a_websocket_echoes_a_thousand_messages(daemon: Daemon, served: Sandbox) -> None:
    token = {"Firebox-Traffic-Token": served.traffic_access_token}
    ws = WebSocket(daemon, served.get_host(PORT), "/ws", token)
    try:
        for i in range(1000):
            message: str | bytes = f"message {i}" if i % 2 else bytes([i % 256]) * (i % 300)
            ws.send(message)
            assert ws.receive() == message
    finally:
        ws.close()
    with pytest.raises(ConnectionRefusedError):
        WebSocket(daemon, served.get_host(PORT), "/ws", {})  # no token: no socket


def test_fifty_connections_at_once(daemon: Daemon, served: Sandbox) -> None:
    host, token = served.get_host(PORT), served.traffic_access_token
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=0)

    with client(daemon, host, token, limits=limits) as c:
        # one slow reader holds a big download open meanwhile: it holds back nobody else
        slow = c.stream("GET", "/big?mb=50")
        r = slow.__enter__()
        try:
            next(r.iter_bytes())

            def one(i: int) -> str:
                return c.get(f"/n{i}").text

            with ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(one, range(50)))
        finally:
            slow.__exit__(None, None, None)
    assert [a.rsplit(" ", 1)[1] for a in answers] == [f"/n{i}" for i in range(50)]


def test_a_one_time_link_sets_a_cookie_for_its_host_alone(daemon: Daemon, served: Sandbox) -> None:
    url = served.get_preview_url(PORT)
    host = served.get_host(PORT)
    path = url.split(host, 1)[1]
    assert url.startswith(f"http://{host}/")
    with client(daemon, host) as c:
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Domain" not in cookie
        assert c.get("/").status_code == 200  # the cookie now opens it
        assert c.get(path).status_code == 403  # a link works once
    value = cookie.split(";")[0]
    other = served.get_host(PORT + 1)
    with client(daemon, other, headers={"Cookie": value}) as c:
        assert c.get("/").status_code == 403  # not another port's host


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_a_kill_or_pause_ends_open_connections(daemon: Daemon, how: str) -> None:
    sbx = Sandbox.create()
    start_server(sbx, PORT)
    ended = threading.Event()
    got: list[str] = []

    def listen() -> None:
        with client(daemon, sbx.get_host(PORT), sbx.traffic_access_token) as c:
            try:
                with c.stream("GET", "/sse") as r:
                    for line in r.iter_lines():
                        got.append(line)
            except httpx.HTTPError:
                pass
        ended.set()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    deadline = time.monotonic() + WAIT
    while not any("tick 2" in g for g in got) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("tick 2" in g for g in got), got
    try:
        if how == "pause":
            if sbx.get_info().pause_keeps is None:
                pytest.skip(f"the {sbx.get_info().backend} backend cannot pause")
            sbx.pause()
        else:
            sbx.kill()
        assert ended.wait(WAIT), f"the stream stayed open after the {how}"
    finally:
        Sandbox.kill(sbx.sandbox_id)
