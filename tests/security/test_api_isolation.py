"""API isolation: one key cannot list, connect to, read, write, run in, watch, signal or kill
another key's sandboxes, through any endpoint family; and malformed or oversized requests get
a 4xx without costing the daemon its memory or its answers.

Another key's sandbox must be indistinguishable from one that does not exist (the same 404,
word for word but the id): no existence oracle. After every attempt, the owner's sandbox is
checked to be exactly as it was: its file, its command, its watcher, its code context, its
timeout.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from firebox import Sandbox
from firebox.exceptions import NotFoundException
from tests.conftest import Daemon

# the daemon's API layer: the same whatever backend holds the sandbox (conftest.py)
pytestmark = pytest.mark.daemon_only

SECRET_TEXT = "owner's data " + secrets.token_hex(8)


@dataclass
class Owned:
    """A sandbox of the owner's key, with something in every endpoint family."""

    client: httpx.Client
    sid: str
    pid: int
    watcher: str
    context: str
    end_at: str
    owner_key: str


@pytest.fixture
def owned(daemon: Daemon) -> Iterator[Owned]:
    key = daemon.new_key("owner")
    with daemon.client(key) as c:
        r = c.post("/sandboxes", json={"metadata": {"tenant": "owner"}, "timeout": 300})
        assert r.status_code == 201, r.text
        sid = r.json()["sandbox_id"]
        try:
            put = c.put(
                f"/sandboxes/{sid}/files",
                params={"path": "/home/user/owned"},
                content=SECRET_TEXT.encode(),
            )
            assert put.status_code < 300, put.text
            with c.stream(
                "POST", f"/sandboxes/{sid}/commands", json={"cmd": "sleep 300", "timeout": 0}
            ) as stream:
                first = next(stream.iter_lines())
            pid = int(json.loads(first)["pid"])
            watcher = c.post(f"/sandboxes/{sid}/watchers", json={"path": "/home/user"})
            assert watcher.status_code == 201, watcher.text
            context = c.post(f"/sandboxes/{sid}/contexts", json={"language": "python"})
            assert context.status_code == 201, context.text
            info = c.get(f"/sandboxes/{sid}").json()
            yield Owned(
                c,
                sid,
                pid,
                watcher.json()["watcher_id"],
                context.json()["id"],
                info["end_at"],
                key,
            )
        finally:
            c.delete(f"/sandboxes/{sid}")


def _requests(o: Owned, sid: str) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """Every request of every endpoint family, aimed at sandbox ``sid``."""
    s = f"/sandboxes/{sid}"
    return {
        "sandboxes": [
            ("GET", s, {}),
            ("POST", f"{s}/timeout", {"json": {"timeout": 1}}),
            ("DELETE", s, {}),
        ],
        "commands": [
            ("POST", f"{s}/commands", {"json": {"cmd": "id"}}),
            ("POST", f"{s}/commands", {"json": {"cmd": "kill -9 -1", "user": "root"}}),
            ("GET", f"{s}/commands", {}),
            ("POST", f"{s}/commands/{o.pid}/stdin", {"json": {"data": "x"}}),
            ("POST", f"{s}/commands/{o.pid}/signal", {"json": {"signal": "SIGKILL"}}),
            ("DELETE", f"{s}/commands/{o.pid}", {}),
        ],
        "files": [
            ("GET", f"{s}/files", {"params": {"path": "/home/user/owned"}}),
            ("PUT", f"{s}/files", {"params": {"path": "/home/user/owned"}, "content": b"x"}),
            ("GET", f"{s}/files/list", {"params": {"path": "/home/user"}}),
            ("GET", f"{s}/files/stat", {"params": {"path": "/home/user/owned"}}),
            ("DELETE", f"{s}/files", {"params": {"path": "/home/user/owned"}}),
            (
                "POST",
                f"{s}/files/rename",
                {"json": {"old_path": "/home/user/owned", "new_path": "/tmp/x"}},
            ),
            ("POST", f"{s}/files/mkdir", {"json": {"path": "/home/user/theirs"}}),
        ],
        "watchers": [
            ("POST", f"{s}/watchers", {"json": {"path": "/home/user"}}),
            ("GET", f"{s}/watchers/{o.watcher}/events", {}),
            ("DELETE", f"{s}/watchers/{o.watcher}", {}),
        ],
        "code": [
            ("POST", f"{s}/code", {"json": {"code": "print(open('/home/user/owned').read())"}}),
            ("POST", f"{s}/contexts", {"json": {"language": "python"}}),
            ("GET", f"{s}/contexts", {}),
            ("POST", f"{s}/contexts/{o.context}/restart", {}),
            ("DELETE", f"{s}/contexts/{o.context}", {}),
        ],
    }


def _scrub(response: httpx.Response, sid: str) -> tuple[int, str]:
    return response.status_code, response.text.replace(sid, "<id>")


def _assert_untouched(o: Owned) -> None:
    c, s = o.client, f"/sandboxes/{o.sid}"
    info = c.get(s)
    assert info.status_code == 200 and info.json()["end_at"] == o.end_at, info.text
    assert c.get(f"{s}/files", params={"path": "/home/user/owned"}).text == SECRET_TEXT
    assert o.pid in [p["pid"] for p in c.get(f"{s}/commands").json()]
    assert c.get(f"{s}/watchers/{o.watcher}/events").status_code == 200
    assert o.context in [x["id"] for x in c.get(f"{s}/contexts").json()]
    listing = {e["name"] for e in c.get(f"{s}/files/list", params={"path": "/home/user"}).json()}
    assert "theirs" not in listing and "owned" in listing, listing


FAMILIES = ["sandboxes", "commands", "files", "watchers", "code"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("other", ["tenant", "admin"])
def test_another_key_gets_the_404_of_a_missing_sandbox(
    daemon: Daemon, owned: Owned, family: str, other: str
) -> None:
    key = daemon.new_key("other") if other == "tenant" else daemon.key
    missing = "sbx_" + secrets.token_hex(8)
    with daemon.client(key) as c:
        for (method, path, kw), (_, missing_path, missing_kw) in zip(
            _requests(owned, owned.sid)[family],
            _requests(owned, missing)[family],
            strict=True,
        ):
            r = c.request(method, path, **kw)
            expected = _scrub(c.request(method, missing_path, **missing_kw), missing)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert _scrub(r, owned.sid) == expected, (method, path)
            assert SECRET_TEXT not in r.text
    _assert_untouched(owned)


def test_listing_and_connecting_never_reach_another_keys_sandbox(
    daemon: Daemon, owned: Owned
) -> None:
    other = daemon.new_key("other")
    for key in (other, daemon.key):
        with daemon.client(key) as c:
            for params in ({}, {"metadata": "tenant=owner"}):
                r = c.get("/sandboxes", params=params)
                assert r.status_code == 200
                assert owned.sid not in r.text, (params, r.text)
        ids = [s.sandbox_id for s in Sandbox.list(api_key=key, api_url=daemon.url)]
        assert owned.sid not in ids
        with pytest.raises(NotFoundException):
            Sandbox.connect(owned.sid, api_key=key, api_url=daemon.url)
    _assert_untouched(owned)


def test_an_ended_sandbox_tells_nobody_else_why(daemon: Daemon) -> None:
    owner, other = daemon.new_key("owner"), daemon.new_key("other")
    with daemon.client(owner) as c:
        sid = c.post("/sandboxes", json={}).json()["sandbox_id"]
        assert c.delete(f"/sandboxes/{sid}").status_code == 204
        mine = c.get(f"/sandboxes/{sid}")
        assert mine.status_code == 404 and "ended" in mine.text
    missing = "sbx_" + secrets.token_hex(8)
    with daemon.client(other) as c:
        theirs = _scrub(c.get(f"/sandboxes/{sid}"), sid)
        assert theirs == _scrub(c.get(f"/sandboxes/{missing}"), missing)


def test_ids_of_one_sandbox_mean_nothing_in_another(daemon: Daemon, owned: Owned) -> None:
    # the other key's own sandbox, addressed with the owner's watcher, context and pid
    other = daemon.new_key("other")
    with daemon.client(other) as c:
        sid = c.post("/sandboxes", json={}).json()["sandbox_id"]
        try:
            s = f"/sandboxes/{sid}"
            assert c.get(f"{s}/watchers/{owned.watcher}/events").status_code == 404
            assert c.delete(f"{s}/watchers/{owned.watcher}").status_code == 404
            assert 400 <= c.post(f"{s}/contexts/{owned.context}/restart").status_code < 500
            assert 400 <= c.delete(f"{s}/contexts/{owned.context}").status_code < 500
            # a signal to the owner's pid lands in the other sandbox's own pid namespace
            c.post(f"{s}/commands/{owned.pid}/signal", json={"signal": "SIGKILL"})
            c.delete(f"{s}/commands/{owned.pid}")
            with c.stream(
                "POST",
                f"{s}/commands",
                json={"cmd": f"kill -9 {owned.pid} -1; true", "user": "root"},
            ) as stream:
                for _ in stream.iter_lines():
                    pass
        finally:
            c.delete(f"/sandboxes/{sid}")
    _assert_untouched(owned)


def test_only_the_admin_key_mints_keys(daemon: Daemon, owned: Owned) -> None:
    with daemon.client(owned.owner_key) as c:
        for body in ({"name": "x"}, {"name": "x", "admin": True}):
            r = c.post("/keys", json=body)
            assert r.status_code in (400, 403), r.text
            assert "e2b_" not in r.text and "fbx_" not in r.text


# -- malformed and oversized input ---------------------------------------------------------------

JSON = {"content-type": "application/json"}


def _malformed(sid: str) -> list[tuple[str, str, dict[str, Any]]]:
    s = f"/sandboxes/{sid}"
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        ("POST", "/sandboxes", {"content": b"{not json", "headers": JSON}),
        ("POST", "/sandboxes", {"content": b"[1, 2]", "headers": JSON}),
        ("POST", "/sandboxes", {"content": deep, "headers": JSON}),
        ("POST", "/sandboxes", {"content": b'{"metadata": {"a": "\xff\xfe"}}', "headers": JSON}),
        ("POST", "/sandboxes", {"content": b'{"timeout": 1e999}', "headers": JSON}),
        ("POST", "/sandboxes", {"content": b'{"timeout": ' + b"9" * 5000 + b"}", "headers": JSON}),
        ("POST", "/sandboxes", {"content": b'{"timeout": NaN}', "headers": JSON}),
        ("POST", "/sandboxes", {"json": {"metadata": {str(i): "v" for i in range(10_000)}}}),
        ("POST", f"{s}/commands", {"content": deep, "headers": JSON}),
        ("POST", f"{s}/commands", {"json": {"cmd": "id", "user": "../../root"}}),
        ("POST", f"{s}/commands", {"json": {"cmd": "id", "cwd": "/tmp\0"}}),
        ("POST", f"{s}/commands", {"json": {"cmd": ["id"]}}),
        ("POST", f"{s}/code", {"json": {"code": "1", "language": "../../bin/sh"}}),
        ("POST", f"{s}/code", {"json": {"code": "1", "context_id": "../" * 100}}),
        ("POST", f"{s}/code", {"content": deep, "headers": JSON}),
        ("GET", f"{s}/files", {"params": {"path": "/" + "a" * 60_000}}),
        ("GET", f"{s}/files", {"params": {"path": "a\0b"}}),
        ("GET", f"{s}/files", {"params": {"path": "/etc/passwd", "user": "nobody"}}),
        ("GET", f"{s}/files/list", {"params": {"path": "/", "depth": 10**9}}),
        ("POST", f"{s}/files/rename", {"json": {"old_path": "a\0", "new_path": "b"}}),
        ("POST", f"{s}/watchers", {"json": {"path": "/tmp", "recursive": "very"}}),
        ("POST", f"{s}/commands/notapid/signal", {"json": {"signal": "SIGKILL"}}),
        ("POST", f"{s}/commands/{2**70}/signal", {"json": {"signal": "SIGKILL"}}),
        ("POST", f"{s}/timeout", {"json": {"timeout": -1}}),
        ("POST", f"{s}/timeout", {"json": {"timeout": 10**30}}),
        ("GET", "/sandboxes/..%2F..%2Fkeys", {}),
        ("GET", "/sandboxes/" + "a" * 10_000, {}),
        ("GET", "/sandboxes/sbx_%00", {}),
        ("POST", "/keys", {"json": {"name": "x" * 100_000}}),
        ("PATCH", "/sandboxes", {}),
    ]


def test_malformed_requests_get_a_4xx(daemon: Daemon, api: tuple[httpx.Client, str]) -> None:
    c, sid = api
    before = len(c.get("/sandboxes").json())
    for method, path, kw in _malformed(sid):
        r = c.request(method, path, **kw)
        assert 400 <= r.status_code < 500, (method, path[:80], r.status_code, r.text[:300])
        assert r.json()["error"]["code"], (method, path[:80], r.text[:300])
    # nothing was started by any of them, and the sandbox works
    assert len(c.get("/sandboxes").json()) == before
    r = c.post(f"/sandboxes/{sid}/commands", json={"cmd": "echo ok"})
    assert r.status_code == 200 and "ok" in r.text
    assert c.get("/health").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-API-Key": "x" * 200_000}, id="huge-key"),
        pytest.param({"X-API-Key": "fbx_\u00e4".encode()}, id="non-ascii-key"),
        pytest.param({"X-API-Key": ""}, id="empty-key"),
        pytest.param({f"X-Filler-{i}": "x" * 100 for i in range(2000)}, id="many-headers"),
    ],
)
def test_odd_headers_get_a_4xx_or_are_cut_off(daemon: Daemon, headers: dict[str, Any]) -> None:
    r = None
    with contextlib.suppress(httpx.HTTPError):  # the daemon may close such a connection
        r = httpx.get(daemon.url + "/sandboxes", headers=headers, timeout=30)
    if r is not None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert httpx.get(daemon.url + "/health", timeout=10).status_code == 200


OVERSIZED = 17 * 1024 * 1024  # over the daemon's 16 MiB cap on request bodies


def _oversized(sid: str) -> list[tuple[str, str, bytes]]:
    pad = b"x" * OVERSIZED
    s = f"/sandboxes/{sid}"
    return [
        ("POST", "/sandboxes", b'{"metadata": {"k": "' + pad + b'"}}'),
        ("POST", f"{s}/commands", b'{"cmd": "' + pad + b'"}'),
        ("POST", f"{s}/code", b'{"code": "' + pad + b'"}'),
        ("POST", f"{s}/contexts", b'{"language": "' + pad + b'"}'),
        ("POST", f"{s}/files/rename", b'{"old_path": "' + pad + b'", "new_path": "x"}'),
        ("POST", f"{s}/files/mkdir", b'{"path": "' + pad + b'"}'),
        ("POST", f"{s}/watchers", b'{"path": "' + pad + b'"}'),
        ("POST", f"{s}/timeout", b'{"timeout": 1, "x": "' + pad + b'"}'),
        ("POST", "/keys", b'{"name": "' + pad + b'"}'),
    ]


def test_oversized_bodies_are_413_for_every_family(
    daemon: Daemon, api: tuple[httpx.Client, str]
) -> None:
    c, sid = api
    before = daemon.peak_rss_mb()
    for method, path, body in _oversized(sid):
        r = c.request(method, path, content=body, headers=JSON)
        assert r.status_code == 413, (path, r.status_code, r.text[:200])
    # and without a Content-Length: counted as it arrives
    for method, path, body in _oversized(sid)[:3]:

        def chunks(body: bytes = body) -> Iterator[bytes]:
            for i in range(0, len(body), 1 << 20):
                yield body[i : i + (1 << 20)]

        try:
            r = c.request(method, path, content=chunks(), headers=JSON)
            assert r.status_code == 413, (path, r.status_code, r.text[:200])
        except httpx.HTTPError:
            pass  # the daemon may close the connection while the client still sends
    assert daemon.peak_rss_mb() - before < 50
    assert c.get("/health").status_code == 200
    assert c.post(f"/sandboxes/{sid}/commands", json={"cmd": "true"}).status_code == 200


def test_anonymous_huge_bodies_are_refused_before_they_are_read(daemon: Daemon) -> None:
    before = daemon.peak_rss_mb()
    big = b'{"metadata": {"k": "' + b"x" * (200 * 1024 * 1024) + b'"}}'
    r = httpx.post(daemon.url + "/sandboxes", content=big, timeout=60)
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    try:
        r = httpx.post(daemon.url + "/sandboxes", content=chunks(), timeout=60)
        assert r.status_code == 413
    except httpx.HTTPError:
        pass  # the daemon may close the connection while the client still sends
    assert daemon.peak_rss_mb() - before < 50
