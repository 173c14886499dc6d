"""Egress: no network by default; a policy opens only what it names, through the daemon's proxy.

Judged by what the host sees: canary listeners on every host address (TCP, UDP, IPv4 and
IPv6) that must receive nothing, and a loopback origin server (the tests' "internet", at
EGRESS_ORIGIN, which the session daemon lifts off the floor) that records what reached it.
Names resolve through the daemon's fixed entries (tests/conftest.py EGRESS_NAMES), so nothing
here leaves the host.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from firebox import Sandbox
from firebox.server.egress import host_addresses
from tests.conftest import EGRESS_ORIGIN, Daemon
from tests.packages import wheel

PROBE_PACKAGE = "firebox-probe-pkg"


class Canary:
    """TCP and UDP listeners on every host address (0.0.0.0 and ::) on one port; anything
    that arrives is recorded."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.tcp = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.udp.bind(("::", self.port))
        for sock in (self.tcp, self.udp):
            sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.tcp.accept()
                self.hits.append(f"tcp from {peer}")
                conn.close()
            except TimeoutError:
                pass
            try:
                _, peer = self.udp.recvfrom(2048)
                self.hits.append(f"udp from {peer}")
            except TimeoutError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.tcp.close()
        self.udp.close()


class Origin(http.server.ThreadingHTTPServer):
    """The tests' internet: answers GET /<anything> with a body naming the path, and serves
    a one-package simple index (PEP 503) for pip."""

    requests: list[str]
    wheel: bytes


def _wheel() -> tuple[str, bytes]:
    return wheel(PROBE_PACKAGE, "firebox_probe", "VALUE = 'installed through the proxy'\n")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Origin

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self.server.requests.append(self.path)
        wheel_name, wheel = _wheel()
        if self.path.rstrip("/") == f"/simple/{PROBE_PACKAGE}":
            digest = hashlib.sha256(wheel).hexdigest()
            link = f'<a href="/files/{wheel_name}#sha256={digest}">{wheel_name}</a>'
            body, kind = f"<html><body>{link}</body></html>".encode(), "text/html"
        elif self.path == f"/files/{wheel_name}":
            body, kind = wheel, "application/octet-stream"
        else:
            body, kind = f"origin says {self.path}".encode(), "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin((EGRESS_ORIGIN, 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def _create(daemon: Daemon, **kw: object) -> Sandbox:
    # every caller kills it (a with block, or kill): a long lifetime, not a hidden deadline
    return Sandbox.create(timeout=1800, **kw)  # type: ignore[arg-type]


def _curl(sbx: Sandbox, url: str, *extra: str) -> tuple[int, str]:
    """(HTTP status, body) of a curl run in the sandbox through its proxy variables."""
    # through a tunnel (--proxytunnel) a refusal is the CONNECT's status, not the request's
    codes = "'%{http_connect} %{http_code}'"
    r = sbx.commands.run(
        # without no_proxy, which sends loopback names direct (where they reach nothing)
        " ".join(
            [
                "env",
                "-u",
                "no_proxy",
                "-u",
                "NO_PROXY",
                "curl",
                "-sS",
                "-m",
                "20",
                "-o",
                "/tmp/body",
                "-w",
                codes,
                *extra,
            ]
        )
        + f" '{url}'; echo; cat /tmp/body",
        timeout=60,
    )
    line, _, body = r.stdout.partition("\n")
    connect, request = (int(c) for c in line.split())
    return request or connect, body


# What a sandbox tries on its own: each probe is an attempt to reach the host, the canary's
# port on every host address, by TCP, UDP (DNS included), ICMP and IPv6.
PROBES = r"""
import json, os, socket, sys
port, addrs = int(sys.argv[1]), sys.argv[2].split(",")
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"
for a in addrs:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    attempt(f"tcp {a}", lambda: socket.create_connection((a, port), timeout=3).close())
    def udp():
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.sendto(b"x", (a, port))
        query = bytes.fromhex("123401000001000000000000") + b"\x04test\x00\x00\x01\x00\x01"
        s.sendto(query, (a, port))  # a DNS question: the canary stands in for a resolver
    attempt(f"udp {a}", udp)
def icmp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", ("127.0.0.1", 0))
attempt("icmp", icmp)
attempt("dns", lambda: socket.getaddrinfo("allowed.test", 80))
attempt("proxy port", lambda: socket.create_connection(("127.0.0.1", 3128), timeout=3).close())
out["interfaces"] = [name for _, name in socket.if_nameindex()]
out["proxy env"] = sorted(k for k in os.environ if "proxy" in k.lower())
print(json.dumps(out))
"""


@pytest.mark.parametrize("user", ["user", "root"])
def test_no_policy_means_no_network_at_all(daemon: Daemon, canary: Canary, user: str) -> None:
    targets = ["127.0.0.1", "::1", *sorted(str(a) for a in host_addresses())]
    with _create(daemon) as sbx:
        sbx.files.write("/tmp/probes.py", PROBES)
        r = sbx.commands.run(
            f"python3 /tmp/probes.py {canary.port} {','.join(dict.fromkeys(targets))}",
            user=user,
            timeout=120,
        )
        seen = json.loads(r.stdout)
        assert sbx.get_info().allow_internet_access is False
    assert canary.hits == [], f"the host received {canary.hits}"
    assert seen["interfaces"] == ["lo"]
    assert seen["proxy env"] == []
    for name in ("tcp 127.0.0.1", "tcp ::1", "dns", "proxy port"):
        assert seen[name] != "ok", f"{name} worked: {seen}"
    for name, outcome in seen.items():
        if name.startswith("tcp "):
            assert outcome != "ok", f"{name} connected"


def test_an_allow_listed_domain_is_reachable_by_http_and_connect(
    daemon: Daemon, origin: Origin
) -> None:
    port = origin.server_address[1]
    with _create(daemon, network={"allow_out": ["allowed.test"]}) as sbx:
        status, body = _curl(sbx, f"http://allowed.test:{port}/plain")
        assert (status, body) == (200, "origin says /plain")
        # CONNECT, as HTTPS clients do: a tunnel to the origin, then HTTP inside it
        status, body = _curl(sbx, f"http://allowed.test:{port}/tunnel", "--proxytunnel")
        assert (status, body) == (200, "origin says /tunnel")
        # the proxy variables reach cells too (urllib reads them)
        ex = sbx.run_code(
            "import urllib.request\n"
            f"print(urllib.request.urlopen('http://allowed.test:{port}/cell').read().decode())"
        )
        assert ex.logs.stdout == ["origin says /cell\n"], ex
    assert {"/plain", "/tunnel", "/cell"} <= set(origin.requests)


def test_names_outside_the_policy_are_refused(daemon: Daemon, origin: Origin) -> None:
    port = origin.server_address[1]
    before = len(origin.requests)
    with _create(daemon, network={"allow_out": ["allowed.test"]}) as sbx:
        status, body = _curl(sbx, f"http://also.test:{port}/nope")
        assert status == 403 and "not in allow_out" in body
        status, body = _curl(sbx, f"http://{EGRESS_ORIGIN}:{port}/by-ip")
        assert status == 403
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "target",
    [
        "rebind.test",  # a name resolving to the host's loopback (DNS rebinding)
        "metadata.test",  # … to cloud metadata
        "private.test",  # … to RFC 1918
        "v6loop.test",  # … to IPv6 loopback
        "127.0.0.1",
        "[::1]",
        "169.254.169.254",
        "10.1.2.3",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ],
)
def test_the_floor_holds_even_when_allow_listed(
    daemon: Daemon, canary: Canary, target: str
) -> None:
    policy = {
        "allow_out": ["*.test", "127.0.0.0/8", "::1", "169.254.0.0/16", "10.0.0.0/8", "0.0.0.0/0"]
    }
    with _create(daemon, network=policy, allow_internet_access=True) as sbx:
        for extra in ((), ("--proxytunnel",)):
            status, body = _curl(sbx, f"http://{target}:{canary.port}/x", *extra)
            assert status == 403, (target, extra, status, body)
            assert "no policy opens it" in body
    assert canary.hits == []


def test_a_name_with_a_private_and_a_public_address_goes_only_to_the_public_one(
    daemon: Daemon, origin: Origin, canary: Canary
) -> None:
    # mixed.test resolves to 127.0.0.1 (refused) and the origin: the proxy connects only to
    # an address it checked, never re-resolving
    port = origin.server_address[1]
    with _create(daemon, network={"allow_out": ["mixed.test"]}) as sbx:
        status, body = _curl(sbx, f"http://mixed.test:{port}/mixed")
        assert (status, body) == (200, "origin says /mixed")
    assert canary.hits == []


def test_allow_out_wins_over_deny_out_and_deny_out_over_internet_access(
    daemon: Daemon, origin: Origin
) -> None:
    port = origin.server_address[1]
    with _create(daemon, allow_internet_access=True, network={"deny_out": ["allowed.test"]}) as s:
        assert _curl(s, f"http://allowed.test:{port}/a")[0] == 403
        assert _curl(s, f"http://also.test:{port}/b") == (200, "origin says /b")
    policy = {"allow_out": ["allowed.test"], "deny_out": ["*.test"]}
    with _create(daemon, network=policy) as s:
        assert _curl(s, f"http://allowed.test:{port}/c") == (200, "origin says /c")
        assert _curl(s, f"http://also.test:{port}/d")[0] == 403


def test_pip_install_honours_the_policy(daemon: Daemon, origin: Origin) -> None:
    port = origin.server_address[1]
    pip = (
        "python3 -m pip install --user --no-cache-dir --disable-pip-version-check "
        f"--index-url http://pypi.test:{port}/simple/ --trusted-host pypi.test {PROBE_PACKAGE}"
    )
    with _create(daemon, network={"allow_out": ["pypi.test"]}) as sbx:
        r = sbx.commands.run(pip, timeout=180)
        assert "Successfully installed" in r.stdout, r.stdout + r.stderr
        r = sbx.commands.run("python3 -c 'import firebox_probe; print(firebox_probe.VALUE)'")
        assert r.stdout == "installed through the proxy\n"
    before = len(origin.requests)
    with _create(daemon, network={"allow_out": ["allowed.test"]}) as sbx:
        r = sbx.commands.run(pip + " --timeout 5 --retries 0 || true", timeout=180)
        assert "Successfully installed" not in r.stdout
        r = sbx.commands.run("python3 -c 'import firebox_probe' 2>&1 || true")
        assert "ModuleNotFoundError" in r.stdout
    assert len(origin.requests) == before  # pip's requests never reached the index


def test_a_bad_policy_is_a_clear_400(daemon: Daemon) -> None:
    with daemon.client() as c:
        for network in (
            {"allow_out": ["not a domain!"]},
            {"allow_out": ["*"]},
            {"deny_out": ["10.0.0.0/33"]},
            {"allow_out": "example.com"},
            {"allow_out": ["x.test"] * 300},
            {"other": []},
        ):
            r = c.post("/sandboxes", json={"network": network})
            assert r.status_code == 400, (network, r.text)
            assert r.json()["error"]["message"], r.text


def test_egress_ends_with_the_sandbox(daemon: Daemon, origin: Origin) -> None:
    port = origin.server_address[1]
    sbx = _create(daemon, network={"allow_out": ["allowed.test"]})
    handle = sbx.commands.run(
        f"curl -sS -m 60 --limit-rate 1 http://allowed.test:{port}/slow; sleep 60",
        background=True,
    )
    sbx.kill()
    with pytest.raises(Exception):  # noqa: B017 (any end of the handle: the sandbox is gone)
        handle.wait()
    with daemon.client() as c:
        assert c.get("/health").status_code == 200
    with _create(daemon, network={"allow_out": ["allowed.test"]}) as again:
        assert _curl(again, f"http://allowed.test:{port}/after") == (200, "origin says /after")
