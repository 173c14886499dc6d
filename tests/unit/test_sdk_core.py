"""The SDK's sans-I/O core: config discovery, error mapping, NDJSON events, request building.

httpx.MockTransport appears only to check that the HTTP layer applies the error mapping; the
SDK's behaviour against a real daemon is tested in tests/functional.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from firebox import (
    AuthenticationException,
    CommandExitException,
    ConflictException,
    FilesystemEventType,
    FileType,
    FireboxException,
    InvalidArgumentException,
    MemoryLimitExceeded,
    NotEnoughSpaceException,
    NotFoundException,
    PermissionDeniedException,
    RateLimitException,
    SandboxException,
    SandboxLostException,
    SandboxNotFoundException,
    TimeoutException,
    TooLargeException,
    UnavailableException,
)
from firebox._core import config
from firebox._core.errors import ERROR_CODES, error_from_response, error_from_transport
from firebox._core.models import CommandEnd, CommandOutput, CommandStart
from firebox._core.requests import (
    STREAM_SLACK,
    command_timeout,
    metadata_query,
    run_body,
    sandbox_path,
    stdin_body,
    upload_length,
)
from firebox._core.responses import (
    command_result,
    parse_command_event,
    parse_entry_info,
    parse_fs_events,
    parse_process_info,
    parse_sandbox_info,
)

# --- config discovery -------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "admin.key").write_text("file-key\n")
    return tmp_path


def test_key_argument_beats_env_beats_file(home: Path) -> None:
    env = {"FIREBOX_HOME": str(home), "FIREBOX_API_KEY": "env-key"}
    assert config.resolve_config(api_key="arg-key", env=env).api_key == "arg-key"
    assert config.resolve_config(env=env).api_key == "env-key"
    assert config.resolve_config(env={"FIREBOX_HOME": str(home)}).api_key == "file-key"


def test_empty_env_key_counts_as_unset(home: Path) -> None:
    env = {"FIREBOX_HOME": str(home), "FIREBOX_API_KEY": ""}
    assert config.resolve_config(env=env).api_key == "file-key"


def test_key_file_defaults_to_var_lib_firebox() -> None:
    assert config.key_file({}) == Path("/var/lib/firebox/admin.key")


@pytest.mark.parametrize("state", ["missing", "empty", "directory"])
def test_no_key_says_how_to_set_one(tmp_path: Path, state: str) -> None:
    key = tmp_path / "admin.key"
    if state == "empty":
        key.write_text("\n")
    elif state == "directory":
        key.mkdir()  # unreadable as a file, even for root
    with pytest.raises(AuthenticationException) as info:
        config.resolve_config(env={"FIREBOX_HOME": str(tmp_path)})
    message = str(info.value)
    assert "FIREBOX_API_KEY" in message and "api_key=" in message and str(key) in message


def test_url_argument_beats_env_beats_default() -> None:
    env = {"FIREBOX_API_KEY": "k", "FIREBOX_URL": "http://env:1/"}
    assert config.resolve_config(api_url="http://arg:2", env=env).api_url == "http://arg:2"
    assert config.resolve_config(env=env).api_url == "http://env:1"  # trailing / dropped
    assert config.resolve_config(env={"FIREBOX_API_KEY": "k"}).api_url == "http://127.0.0.1:7070"


def test_request_timeout_and_headers() -> None:
    cfg = config.resolve_config(env={"FIREBOX_API_KEY": "secret"})
    assert cfg.request_timeout == config.DEFAULT_REQUEST_TIMEOUT
    assert (
        config.resolve_config(request_timeout=5, env={"FIREBOX_API_KEY": "k"}).request_timeout == 5
    )
    assert cfg.headers()["X-API-Key"] == "secret"
    assert "secret" not in repr(cfg)


# --- error mapping ----------------------------------------------------------------------------

# docs/API.md, "Errors": status, code, and the class each must raise.
API_ERRORS = [
    (400, "invalid_argument", InvalidArgumentException),
    (401, "unauthenticated", AuthenticationException),
    (403, "forbidden", PermissionDeniedException),
    (404, "not_found", NotFoundException),
    (404, "sandbox_not_found", SandboxNotFoundException),
    (409, "conflict", ConflictException),
    (410, "sandbox_lost", SandboxLostException),
    (413, "too_large", TooLargeException),
    (429, "rate_limited", RateLimitException),
    (500, "internal", SandboxException),  # sent by the daemon, not (yet) in docs/API.md
    (502, "sandbox_error", SandboxException),
    (503, "unavailable", UnavailableException),
    (504, "timeout", TimeoutException),
    (507, "no_space", NotEnoughSpaceException),
]


def _body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(("status", "code", "cls"), API_ERRORS)
def test_every_api_error_code_maps_to_its_exception(
    status: int, code: str, cls: type[FireboxException]
) -> None:
    exc = error_from_response(status, _body(code, "what happened; what to do"))
    assert type(exc) is cls
    assert "what happened; what to do" in str(exc)
    assert (exc.code, exc.status) == (code, status)


def test_table_covers_exactly_the_documented_codes() -> None:
    assert set(ERROR_CODES) == {code for _, code, _ in API_ERRORS}


def test_table_covers_exactly_the_codes_the_daemon_sends() -> None:
    from firebox.server.errors import STATUS

    assert set(ERROR_CODES) == set(STATUS)
    assert {code: STATUS[code] for _, code, _ in API_ERRORS} == {
        code: status for status, code, _ in API_ERRORS
    }


def test_code_wins_over_status() -> None:
    assert type(error_from_response(400, _body("not_found", "x"))) is NotFoundException


def test_unknown_code_falls_back_to_status_then_root() -> None:
    assert type(error_from_response(404, _body("brand_new", "x"))) is NotFoundException
    exc = error_from_response(418, _body("brand_new", "x"))
    assert type(exc) is FireboxException and "x" in str(exc)


def test_non_json_error_body_keeps_its_text() -> None:
    exc = error_from_response(502, b"<html>Bad Gateway</html>")
    assert type(exc) is SandboxException
    assert "502" in str(exc) and "Bad Gateway" in str(exc)


def test_transport_failures() -> None:
    url = "http://127.0.0.1:7070"
    refused = error_from_transport(httpx.ConnectError("refused"), url)
    assert type(refused) is UnavailableException and "FIREBOX_URL" in str(refused)
    slow = error_from_transport(httpx.ReadTimeout("slow"), url)
    assert type(slow) is TimeoutException and "request_timeout" in str(slow)
    broken = error_from_transport(httpx.RemoteProtocolError("cut"), url)
    assert type(broken) is UnavailableException


def test_http_layer_applies_the_mapping() -> None:
    from firebox._sync._http import ApiClient

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["X-API-Key"] == "k"
        return httpx.Response(404, content=_body("not_found", "no sandbox sbx_x"))

    cfg = config.resolve_config(env={"FIREBOX_API_KEY": "k"})
    with ApiClient(cfg, transport=httpx.MockTransport(answer)) as api:
        with pytest.raises(NotFoundException, match="no sandbox sbx_x"):
            api.request("GET", "/sandboxes/sbx_x")
        with pytest.raises(NotFoundException, match="no sandbox sbx_x"):
            api.open_stream("GET", "/sandboxes/sbx_x/files")


# --- NDJSON command events --------------------------------------------------------------------


def test_command_events() -> None:
    assert parse_command_event('{"type": "start", "pid": 12}') == CommandStart(pid=12)
    assert parse_command_event('{"type": "stdout", "text": "hi\\n"}') == CommandOutput(
        "stdout", "hi\n"
    )
    assert parse_command_event('{"type": "stderr", "text": "x"}') == CommandOutput("stderr", "x")
    assert parse_command_event('{"type": "end", "exit_code": 0, "error": null}') == CommandEnd(0)
    assert parse_command_event('{"type": "end", "exit_code": -9, "error": "timeout"}') == (
        CommandEnd(-9, "timeout")
    )


def test_readers_ignore_what_they_do_not_know() -> None:
    assert parse_command_event("") is None
    assert parse_command_event("   ") is None
    assert parse_command_event('{"type": "progress", "pct": 5}') is None
    assert parse_command_event('{"type": "start", "pid": 1, "new": true}') == CommandStart(1)


@pytest.mark.parametrize("line", ["not json", "[1]", '{"type": "start"}', '{"pid": 1}'])
def test_malformed_events_raise(line: str) -> None:
    with pytest.raises(SandboxException, match="unexpected answer"):
        parse_command_event(line)


def test_command_result_raises_as_e2b_does() -> None:
    ok = command_result("out", "", CommandEnd(0), 60)
    assert (ok.stdout, ok.exit_code, ok.error) == ("out", 0, None)
    with pytest.raises(CommandExitException) as info:
        command_result("out", "boom", CommandEnd(2), 60)
    assert (info.value.stdout, info.value.stderr, info.value.exit_code) == ("out", "boom", 2)
    with pytest.raises(TimeoutException, match="60 s"):
        command_result("", "", CommandEnd(-9, "timeout"), 60)
    # no exit of its own (-1): the daemon stopped listening, and says why
    with pytest.raises(TimeoutException, match="stopped listening"):
        command_result("", "", CommandEnd(-1, "timeout", "stopped listening; it runs on"), 60)


def test_command_end_reasons() -> None:
    end = CommandEnd(137, "memory_limit", "the sandbox reached its memory limit of 512 MB")
    with pytest.raises(MemoryLimitExceeded, match="memory limit of 512 MB") as info:
        command_result("", "", end, 60)
    assert isinstance(info.value, CommandExitException)  # E2B code catching that still does
    assert (info.value.error, info.value.reason) == ("memory_limit", end.message)
    # An agent failure ends the stream with an API error code instead of an exit code.
    with pytest.raises(NotEnoughSpaceException, match="disk is full"):
        command_result("", "", CommandEnd(-1, "no_space", "disk is full"), 60)
    ended = parse_command_event('{"type": "end", "exit_code": 1, "error": null, "message": "m"}')
    assert ended == CommandEnd(1, None, "m")


# --- request building -------------------------------------------------------------------------


def test_metadata_query_survives_double_encoding() -> None:
    metadata = {"user": "a b", "tricky": "x=1&y=2", "ü": "✓"}
    url = httpx.URL("http://d/sandboxes", params=metadata_query(metadata))
    (inner,) = parse_qs(url.query.decode())["metadata"]
    assert {k: v for k, (v,) in parse_qs(inner).items()} == metadata
    assert metadata_query(None) == {} and metadata_query({}) == {}


def test_sandbox_path_escapes_the_id() -> None:
    assert sandbox_path("sbx_1", "files", "stat") == "/sandboxes/sbx_1/files/stat"
    assert sandbox_path("../keys") == "/sandboxes/..%2Fkeys"


@pytest.mark.parametrize(
    ("stdin", "keep_open", "data"),
    [
        (None, False, None),
        (False, False, None),
        (True, True, None),
        ("in", False, "in"),
        (b"in", False, "in"),
    ],
)
def test_run_body_stdin(stdin: bool | str | bytes | None, keep_open: bool, data: str) -> None:
    body = run_body("cat", None, "user", None, 60, stdin, None)
    assert (body["stdin"], body["stdin_data"]) == (keep_open, data)
    assert body["cmd"] == "cat" and body["envs"] == {} and body["user"] == "user"


def test_stdin_must_be_utf8() -> None:
    with pytest.raises(InvalidArgumentException, match="UTF-8"):
        run_body("cat", None, "user", None, 60, b"\xff", None)
    assert stdin_body(b"x", eof=True) == {"data": "x", "eof": True}


def test_command_stream_timeouts() -> None:
    t = command_timeout(60, 30)
    assert (t.connect, t.read) == (30, 60 + STREAM_SLACK)
    assert command_timeout(0, 30).read is None and command_timeout(None, 30).read is None
    assert run_body("x", None, "user", None, None, None, None)["timeout"] == 0


def test_upload_length(tmp_path: Path) -> None:
    assert upload_length(b"abc") == 3
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with path.open("rb") as f:
        f.seek(40)
        assert upload_length(f) == 60
    with path.open("r") as text:
        assert upload_length(text) is None  # characters are not bytes
    assert upload_length(io.BytesIO(b"abc")) is None
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe, os.fdopen(w, "wb"):
        assert upload_length(pipe) is None


# --- answers into models ----------------------------------------------------------------------


def test_parse_sandbox_info() -> None:
    info = parse_sandbox_info(
        {
            "sandbox_id": "sbx_1",
            "template": "base",
            "metadata": {"k": "v"},
            "started_at": "2026-01-01T00:00:00Z",
            "end_at": "2026-01-01T00:05:00Z",
            "state": "running",
            "backend": "jail",
            "cpu_count": 1,
            "memory_mb": 512,
            "added_later": True,
        }
    )
    assert info.end_at == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    assert (info.sandbox_id, info.metadata, info.memory_mb) == ("sbx_1", {"k": "v"}, 512)
    with pytest.raises(SandboxException, match="started_at"):
        parse_sandbox_info({"sandbox_id": "x", "template": "t", "state": "running"})


def test_parse_entry_info_and_unknown_type() -> None:
    entry = {
        "name": "a",
        "path": "/home/user/a",
        "type": "dir",
        "size": 4096,
        "mode": 0o755,
        "permissions": "rwxr-xr-x",
        "owner": "user",
        "group": "user",
        "modified_time": "2026-01-01T00:00:00+00:00",
        "symlink_target": None,
    }
    assert parse_entry_info(entry).type is FileType.DIR
    assert parse_entry_info({**entry, "type": "socket"}).type is FileType.OTHER


def test_parse_process_info_maps_argv_to_args() -> None:
    p = parse_process_info(
        {
            "pid": 7,
            "cmd": None,
            "argv": ["ls", "-l"],
            "cwd": "/",
            "tag": "t",
            "user": "root",
            "envs": {"A": "1"},
        }
    )
    assert (p.pid, p.cmd, p.args, p.envs, p.user) == (7, None, ["ls", "-l"], {"A": "1"}, "root")


def test_parse_fs_events_skips_unknown_types() -> None:
    events = parse_fs_events([{"type": "write", "name": "f"}, {"type": "attrib", "name": "g"}])
    assert [(e.type, e.name) for e in events] == [(FilesystemEventType.WRITE, "f")]


def test_a_context_call_waits_as_long_as_the_daemon_lets_an_interpreter_start() -> None:
    from firebox._core.requests import CONTEXT_START_ANSWER, context_start_timeout
    from firebox.protocol import CONTEXT_RESTART_WAIT
    from firebox.server.code import CONTEXT_START_TIMEOUT

    assert CONTEXT_START_ANSWER > CONTEXT_START_TIMEOUT + CONTEXT_RESTART_WAIT
    waited = context_start_timeout(None, 30.0)
    assert isinstance(waited, httpx.Timeout)
    assert waited.read == CONTEXT_START_ANSWER and waited.connect == 30.0
    assert context_start_timeout(5.0, 30.0) == 5.0  # the caller's own is kept
