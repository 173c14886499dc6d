"""The REST edge: keys, ownership, bad input, and the OpenAPI document."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Daemon


def test_requests_without_or_with_a_wrong_key_are_401(daemon: Daemon) -> None:
    assert httpx.get(daemon.url + "/sandboxes", timeout=60).status_code == 401
    with daemon.client("fbx_wrong") as c:
        r = c.get("/sandboxes")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"


def test_a_key_never_sees_or_touches_another_keys_sandbox(daemon: Daemon) -> None:
    other = daemon.new_key("other")
    with daemon.client() as admin, daemon.client(other) as c:
        created = admin.post("/sandboxes", json={})
        assert created.status_code == 201, created.text
        sid = created.json()["sandbox_id"]
        try:
            assert sid not in [s["sandbox_id"] for s in c.get("/sandboxes").json()]
            for method, path, kw in [
                ("GET", f"/sandboxes/{sid}", {}),
                ("DELETE", f"/sandboxes/{sid}", {}),
                ("POST", f"/sandboxes/{sid}/timeout", {"json": {"timeout": 5}}),
                ("POST", f"/sandboxes/{sid}/commands", {"json": {"cmd": "id"}}),
                ("GET", f"/sandboxes/{sid}/commands", {}),
                ("GET", f"/sandboxes/{sid}/files", {"params": {"path": "/etc/passwd"}}),
                ("PUT", f"/sandboxes/{sid}/files", {"params": {"path": "x"}, "content": b"x"}),
                ("GET", f"/sandboxes/{sid}/files/list", {"params": {"path": "/"}}),
            ]:
                r = c.request(method, path, **kw)
                assert r.status_code == 404, (method, path, r.status_code)
            # and the owner still has it
            assert admin.get(f"/sandboxes/{sid}").status_code == 200
        finally:
            admin.delete(f"/sandboxes/{sid}")
    # a non-admin key cannot mint keys
    with daemon.client(other) as c:
        assert c.post("/keys", json={"name": "x"}).status_code == 403


@pytest.mark.parametrize(
    "method,path,kw",
    [
        ("POST", "/sandboxes", {"json": {"timeout": -1}}),
        ("POST", "/sandboxes", {"json": {"timeout": "soon"}}),
        ("POST", "/sandboxes", {"json": {"template": "../../etc"}}),
        ("POST", "/sandboxes", {"json": {"template": "nosuchtemplate"}}),
        ("POST", "/sandboxes", {"json": {"unknown": 1}}),
        (
            "POST",
            "/sandboxes",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("GET", "/sandboxes", {"params": {"metadata": "=&&="}}),
        ("GET", "/sandboxes/nope", {}),
        ("DELETE", "/sandboxes/nope", {}),
        ("GET", "/no/such/route", {}),
    ],
)
def test_bad_input_gets_a_clear_4xx(daemon: Daemon, method: str, path: str, kw: dict) -> None:
    with daemon.client() as c:
        r = c.request(method, path, **kw)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["code"] and len(err["message"]) > 10


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"cmd": "x", "argv": ["x"]},
        {"cmd": "x", "user": "admin"},
        {"cmd": "x", "timeout": -5},
        {"argv": []},
    ],
)
def test_bad_command_requests_are_400(daemon: Daemon, body: dict) -> None:
    with daemon.client() as c:
        sid = c.post("/sandboxes", json={}).json()["sandbox_id"]
        try:
            r = c.post(f"/sandboxes/{sid}/commands", json=body)
            assert r.status_code == 400, r.text
            bad_signal = c.post(f"/sandboxes/{sid}/commands/1/signal", json={"signal": "SIGNOPE"})
            assert bad_signal.status_code == 400
            bad_path = c.get(f"/sandboxes/{sid}/files", params={"path": "a\0b"})
            assert bad_path.status_code == 400
        finally:
            c.delete(f"/sandboxes/{sid}")


def test_openapi_document_is_valid_and_complete(daemon: Daemon) -> None:
    from openapi_spec_validator import validate

    with daemon.client() as c:
        doc = c.get("/openapi.json").json()
    validate(doc)
    paths = doc["paths"]
    for path in [
        "/sandboxes",
        "/sandboxes/{sandbox_id}",
        "/sandboxes/{sandbox_id}/timeout",
        "/sandboxes/{sandbox_id}/commands",
        "/sandboxes/{sandbox_id}/commands/{pid}/stdin",
        "/sandboxes/{sandbox_id}/files",
        "/sandboxes/{sandbox_id}/files/list",
        "/sandboxes/{sandbox_id}/watchers",
        "/keys",
        "/health",
    ]:
        assert path in paths, path


def test_responses_match_the_openapi_schemas(daemon: Daemon) -> None:
    """Validate real responses against the document's own response schemas."""
    from openapi_schema_validator import OAS31Validator

    with daemon.client() as c:
        doc = c.get("/openapi.json").json()
        created = c.post("/sandboxes", json={"metadata": {"a": "b"}})
        sid = created.json()["sandbox_id"]
        try:
            checks = [
                ("/sandboxes", "post", "201", created.json()),
                ("/sandboxes", "get", "200", c.get("/sandboxes").json()),
                ("/sandboxes/{sandbox_id}", "get", "200", c.get(f"/sandboxes/{sid}").json()),
                (
                    "/sandboxes/{sandbox_id}/files/stat",
                    "get",
                    "200",
                    c.get(f"/sandboxes/{sid}/files/stat", params={"path": "/etc"}).json(),
                ),
                (
                    "/sandboxes/{sandbox_id}",
                    "get",
                    "404",
                    c.get("/sandboxes/sbx_missing").json(),
                ),
            ]
        finally:
            c.delete(f"/sandboxes/{sid}")
    for path, method, status, body in checks:
        schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
            "schema"
        ]
        resolver_doc = {**schema, "components": doc.get("components", {})}
        OAS31Validator(resolver_doc).validate(body)


def test_every_answer_says_how_long_the_daemon_and_the_agent_took(
    api: tuple[httpx.Client, str],
) -> None:
    c, sid = api
    for method, path, kw in (
        ("GET", "/health", {}),
        ("GET", f"/sandboxes/{sid}", {}),
        ("POST", f"/sandboxes/{sid}/commands", {"json": {"cmd": "true"}}),
        ("GET", "/sandboxes/sbx_missing", {}),
    ):
        r = c.request(method, path, **kw)
        parts = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
        app, agent = float(parts["app"]), float(parts["agent"])
        assert app > 0 and 0 <= agent <= app, (path, r.headers["server-timing"])
        if path.endswith("/commands"):
            assert agent > 0  # the process start waited for the agent
