"""API isolation through the E2B edge: E2B's control API (/e2b) and its in-sandbox routes
(Connect RPC, /files, the code interpreter) never let one key, or one sandbox's tokens, reach
another key's sandbox; and a refusal is word for word the answer for a sandbox that does not
exist (but the id), so the edge is no oracle for which ids exist. The owner's sandbox (made
by firebox's own API: one core behind both edges) is checked untouched after every attempt.
"""

from __future__ import annotations

import secrets
import socket
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon
from tests.security.test_api_isolation import SECRET_TEXT, Owned, _assert_untouched, _scrub
from tests.security.test_api_isolation import owned as owned  # noqa: F401 (the fixture)

# the daemon's API layer: the same whatever backend holds the sandbox (conftest.py)
pytestmark = pytest.mark.daemon_only

JSON = {"content-type": "application/json"}


def _control(sid: str) -> list[tuple[str, str, dict[str, Any]]]:
    s = f"/e2b/sandboxes/{sid}"
    return [
        ("GET", s, {}),
        ("POST", f"{s}/timeout", {"json": {"timeout": 1}}),
        ("POST", f"{s}/connect", {"json": {"timeout": 1}}),
        ("POST", f"/e2b/v2/sandboxes/{sid}/connect", {"json": {"timeout": 1}}),
        ("POST", f"{s}/refreshes", {"json": {"duration": 1}}),
        ("POST", f"{s}/pause", {}),
        ("GET", f"{s}/metrics", {}),
        ("DELETE", s, {}),
    ]


def _inside(o: Owned) -> list[tuple[str, str, dict[str, Any]]]:
    """In-sandbox requests of every kind (Connect unary in its JSON encoding, HTTP routes,
    the code interpreter's port), each aimed at the owner's things."""
    return [
        ("POST", "/process.Process/List", {"content": b"{}", "headers": JSON}),
        (
            "POST",
            "/process.Process/SendSignal",
            {"json": {"process": {"pid": o.pid}, "signal": "SIGNAL_SIGKILL"}},
        ),
        ("POST", "/filesystem.Filesystem/Stat", {"json": {"path": "/home/user/owned"}}),
        ("POST", "/filesystem.Filesystem/ListDir", {"json": {"path": "/home/user", "depth": 1}}),
        ("POST", "/filesystem.Filesystem/Remove", {"json": {"path": "/home/user/owned"}}),
        ("POST", "/filesystem.Filesystem/MakeDir", {"json": {"path": "/home/user/theirs"}}),
        ("GET", "/files", {"params": {"path": "/home/user/owned"}}),
        (
            "POST",
            "/files",
            {
                "params": {"path": "/home/user/owned"},
                "content": b"overwritten",
                "headers": {"content-type": "application/octet-stream"},
            },
        ),
        ("GET", "/envs", {}),
        ("GET", "/health", {}),
        ("POST", "/execute", {"json": {"code": "print(open('/home/user/owned').read())"}}),
        ("GET", "/contexts", {}),
        ("DELETE", f"/contexts/{o.context}", {}),
    ]


def _sandbox_headers(sid: str, port: int, creds: dict[str, str]) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port), **creds}


def _port(path: str) -> int:
    return 49999 if path in ("/execute", "/contexts") or path.startswith("/contexts/") else 49983


@pytest.mark.parametrize("other", ["tenant", "admin"])
def test_another_key_gets_the_404_of_a_missing_sandbox_on_the_control_api(
    daemon: Daemon, owned: Owned, other: str
) -> None:
    key = daemon.new_key("other") if other == "tenant" else daemon.key
    missing = "sbx_" + secrets.token_hex(8)
    with daemon.client(key) as c:
        for (method, path, kw), (_, missing_path, missing_kw) in zip(
            _control(owned.sid), _control(missing), strict=True
        ):
            r = c.request(method, path, **kw)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert _scrub(r, owned.sid) == _scrub(
                c.request(method, missing_path, **missing_kw), missing
            ), (method, path)
        listed = c.get("/e2b/v2/sandboxes").json()
        assert owned.sid not in [s["sandboxID"] for s in listed]
    _assert_untouched(owned)


def test_no_key_and_no_token_of_another_sandbox_opens_its_insides(
    daemon: Daemon, owned: Owned
) -> None:
    other_key = daemon.new_key("other")
    with daemon.client(other_key) as c:
        theirs = c.post("/e2b/v2/sandboxes", json={"templateID": "base", "timeout": 300}).json()
    with daemon.client(owned.owner_key) as c:  # the owner's own tokens, for the wrong port
        # a timeout of 1 s never shortens the sandbox's life: its end stays as it was
        mine = c.post(f"/e2b/sandboxes/{owned.sid}/connect", json={"timeout": 1}).json()
    credentials = {
        "none": {},
        "another key": {"X-API-Key": other_key},
        "the admin key": {"X-API-Key": daemon.key},
        "another sandbox's token": {"X-Access-Token": theirs["envdAccessToken"]},
        "another sandbox's traffic token": {
            "E2B-Traffic-Access-Token": theirs["trafficAccessToken"]
        },
        "a made-up token": {"X-Access-Token": secrets.token_hex(24)},
    }
    missing = "sbx_" + secrets.token_hex(8)
    try:
        with httpx.Client(base_url=daemon.url, timeout=60) as c:
            for name, creds in credentials.items():
                for method, path, kw in _inside(owned):
                    headers = {**kw.get("headers", {})}
                    args = {k: v for k, v in kw.items() if k != "headers"}
                    r = c.request(
                        method,
                        path,
                        headers={**headers, **_sandbox_headers(owned.sid, _port(path), creds)},
                        **args,
                    )
                    gone = c.request(
                        method,
                        path,
                        headers={**headers, **_sandbox_headers(missing, _port(path), creds)},
                        **args,
                    )
                    assert r.status_code >= 400, (name, method, path, r.text)
                    assert _scrub(r, owned.sid) == _scrub(gone, missing), (name, method, path)
                    assert SECRET_TEXT not in r.text
            # the owner's own traffic token opens the interpreter's port, never the envd's
            traffic = {"E2B-Traffic-Access-Token": mine["trafficAccessToken"]}
            r = c.post(
                "/filesystem.Filesystem/Stat",
                json={"path": "/home/user/owned"},
                headers=_sandbox_headers(owned.sid, 49983, traffic),
            )
            assert r.status_code >= 400 and SECRET_TEXT not in r.text
    finally:
        with daemon.client(other_key) as c:
            c.delete(f"/e2b/sandboxes/{theirs['sandboxID']}")
    _assert_untouched(owned)


def test_a_signed_url_opens_one_file_of_one_sandbox_for_one_operation(
    daemon: Daemon, owned: Owned
) -> None:
    from e2b import Sandbox

    with daemon.client(owned.owner_key) as c:
        token = c.post(f"/e2b/sandboxes/{owned.sid}/connect", json={"timeout": 1}).json()[
            "envdAccessToken"
        ]
    sbx = Sandbox.connect(
        owned.sid,
        timeout=1,
        api_key=owned.owner_key,
        api_url=f"{daemon.url}/e2b",
        sandbox_url=daemon.url,
    )
    assert sbx._envd_access_token == token
    read = sbx.download_url("/home/user/owned", use_signature_expiration=60)
    write = sbx.upload_url("/home/user/owned", use_signature_expiration=60)
    with httpx.Client(timeout=60) as c:
        assert c.get(read).text == SECRET_TEXT  # no header at all: the signature opens it
        # the read signature never writes, and never reads another path
        assert c.post(read, files={"file": ("owned", b"x")}).status_code >= 400
        other_path = read.replace("%2Fhome%2Fuser%2Fowned", "%2Fetc%2Fpasswd")
        assert other_path != read and c.get(other_path).status_code >= 400
        tampered = read.replace("signature=v1_", "signature=v1_A")
        assert c.get(tampered).status_code >= 400
        # the write signature does not read
        assert SECRET_TEXT not in c.get(write).text
        expired = sbx.download_url("/home/user/owned", use_signature_expiration=-120)
        assert c.get(expired).status_code >= 400
    _assert_untouched(owned)


def test_the_traffic_token_opens_no_port_but_the_interpreters(daemon: Daemon, owned: Owned) -> None:
    with daemon.client(owned.owner_key) as c:
        traffic = c.post(f"/e2b/sandboxes/{owned.sid}/connect", json={"timeout": 1}).json()[
            "trafficAccessToken"
        ]
    creds = {"E2B-Traffic-Access-Token": traffic}
    with httpx.Client(base_url=daemon.url, timeout=60) as c:
        for port in ("1", "80", "49983", "+49999", "0", "-1", "049999", "4.9999e4"):
            r = c.post(
                "/process.Process/List",
                content=b"{}",
                headers={**JSON, **_sandbox_headers(owned.sid, 0, creds), "E2b-Sandbox-Port": port},
            )
            assert r.status_code >= 400, (port, r.text)
            r = c.get(
                "/files",
                params={"path": "/home/user/owned"},
                headers={**_sandbox_headers(owned.sid, 0, creds), "E2b-Sandbox-Port": port},
            )
            assert r.status_code >= 400 and SECRET_TEXT not in r.text, (port, r.text)
        # on the interpreter's port it is the interpreter, and only that
        r = c.get("/contexts", headers=_sandbox_headers(owned.sid, 49999, creds))
        assert r.status_code == 200, r.text
        r = c.get(
            "/files",
            params={"path": "/home/user/owned"},
            headers=_sandbox_headers(owned.sid, 49999, creds),
        )
        assert r.status_code >= 400 and SECRET_TEXT not in r.text
    _assert_untouched(owned)


def test_anonymous_huge_bodies_to_the_edge_are_refused_before_they_are_read(
    daemon: Daemon,
) -> None:
    headers = {"E2b-Sandbox-Id": "sbx_" + secrets.token_hex(8), "E2b-Sandbox-Port": "49999"}
    # a length claimed past the cap: answered at once, from the headers alone
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=60) as s:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(
            f"POST /execute HTTP/1.1\r\nHost: x\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {10 << 30}\r\n\r\n{{}}".encode()
        )
        assert s.recv(4096).split(b"\r\n", 1)[0].endswith(b"413 Request Entity Too Large")
    with httpx.Client(base_url=daemon.url, timeout=60) as c:

        def chunks() -> Any:
            for _ in range(40):  # 40 MiB, chunked, over the 16 MiB cap
                yield b" " * (1 << 20)

        r = c.post("/execute", headers={**headers, **JSON}, content=chunks())
        assert r.status_code == 413, r.text
        assert c.get("/health").status_code == 200  # the daemon carries on
