"""Inputs found by fuzzing the API: each gets a clear 4xx, and nothing is left half-done."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Daemon

# the daemon's API layer: the same whatever backend holds the sandbox (conftest.py)
pytestmark = pytest.mark.daemon_only


def _raw(c: httpx.Client, path: str, raw_json: str) -> httpx.Response:
    # hand-written JSON: a lone surrogate cannot come out of json.dumps by accident
    return c.post(path, content=raw_json.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "raw",
    [
        '{"metadata": {"k": "\\ud800"}}',
        '{"metadata": {"\\ud800": "v"}}',
        '{"envs": {"A": "\\ud800"}}',
        '{"envs": {"A=B": "x"}}',
        '{"envs": {"A\\u0000": "x"}}',
        '{"metadata": {"k": "' + "x" * 5000 + '"}}',
    ],
)
def test_bad_strings_in_a_create_are_refused_and_start_nothing(daemon: Daemon, raw: str) -> None:
    with daemon.client() as c:
        before = len(c.get("/sandboxes").json())
        r = _raw(c, "/sandboxes", raw)
        assert r.status_code == 400, r.text
        assert len(c.get("/sandboxes").json()) == before
        assert c.get("/sandboxes").status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        '{"cmd": "sleep 1000", "stdin_data": "\\ud800"}',
        '{"cmd": "env", "envs": {"A": "\\ud800"}}',
        '{"cmd": "echo \\u0000"}',
        '{"argv": ["echo", "a\\u0000b"]}',
        '{"cmd": "true", "envs": {"A=B": "x"}}',
        '{"cmd": "true", "tag": "\\udfff"}',
    ],
)
def test_bad_strings_in_a_command_are_refused_and_run_nothing(
    api: tuple[httpx.Client, str], raw: str
) -> None:
    c, sid = api
    r = _raw(c, f"/sandboxes/{sid}/commands", raw)
    assert r.status_code == 400, r.text
    assert c.get(f"/sandboxes/{sid}/commands").json() == []


@pytest.mark.parametrize("signal", ["²", "1" * 5000, "SIGNOPE", -1, 99999])
def test_odd_signals_are_400(api: tuple[httpx.Client, str], signal: object) -> None:
    c, sid = api
    r = c.post(f"/sandboxes/{sid}/commands/1/signal", json={"signal": signal})
    assert r.status_code == 400, r.text


def test_a_request_too_large_for_the_channel_is_413(api: tuple[httpx.Client, str]) -> None:
    c, sid = api
    argv = ["echo"] + ["x" * 120_000] * 80  # ~9.6 MB: within each item's limit, not the frame's
    r = c.post(f"/sandboxes/{sid}/commands", json={"argv": argv})
    assert r.status_code == 413, r.text
    assert c.post(f"/sandboxes/{sid}/commands", json={"cmd": "echo ok"}).status_code == 200


def test_too_deep_and_too_long_paths_are_4xx(api: tuple[httpx.Client, str]) -> None:
    c, sid = api
    deep = c.post(f"/sandboxes/{sid}/files/mkdir", json={"path": "/tmp/" + "a/" * 2000})
    assert deep.status_code == 400, deep.text
    long = c.post(f"/sandboxes/{sid}/files/mkdir", json={"path": "/tmp/" + "a" * 9000})
    assert long.status_code == 400, long.text


def test_watchers_per_sandbox_are_capped(api: tuple[httpx.Client, str]) -> None:
    c, sid = api
    codes = [
        c.post(f"/sandboxes/{sid}/watchers", json={"path": "/tmp"}).status_code for _ in range(17)
    ]
    assert codes[:16] == [201] * 16 and codes[16] == 429


def test_405_names_the_allowed_methods(daemon: Daemon) -> None:
    with daemon.client() as c:
        r = c.put("/sandboxes")
    assert r.status_code == 405 and r.headers["allow"]


def test_openapi_says_400_not_422(daemon: Daemon) -> None:
    with daemon.client() as c:
        doc = c.get("/openapi.json").json()
    for item in doc["paths"].values():
        for op in item.values():
            assert "422" not in op["responses"]
    create = doc["paths"]["/sandboxes"]["post"]["responses"]
    assert {"400", "401", "429", "503"} <= set(create)
