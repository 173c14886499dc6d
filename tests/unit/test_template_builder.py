"""The Template SDK without a daemon: each builder method's steps (E2B's commands), the files
a COPY takes and their hash, the upload's members, and a build's REST calls against a fake."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import firebox._sync.template as sync_template
from firebox import (
    AsyncTemplate,
    InvalidArgumentException,
    LogEntry,
    Template,
    TemplateBuildError,
    wait_for_port,
)
from firebox._core import template_files
from firebox._core.config import ConnectionConfig
from firebox._core.template import TemplateBase
from firebox._sync._http import ApiClient
from firebox.recipes import hash_tar


def wire(template: Any) -> dict[str, Any]:
    return json.loads(Template.to_json(template))


def run_steps(template: Any) -> list[list[str]]:
    return [s["args"] for s in wire(template)["steps"]]


def base() -> Any:
    return Template(file_context_path=Path(__file__).parent).from_debian_image()


# --- bases and steps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda t: t.from_debian_image(), {"fromImage": "debian:stable"}),
        (lambda t: t.from_debian_image("trixie"), {"fromImage": "debian:trixie"}),
        (lambda t: t.from_ubuntu_image("24.04"), {"fromImage": "ubuntu:24.04"}),
        (lambda t: t.from_python_image(), {"fromImage": "python:3"}),
        (lambda t: t.from_node_image(), {"fromImage": "node:lts"}),
        (lambda t: t.from_base_image(), {"fromImage": "e2bdev/base"}),
        (lambda t: t.from_template("my-base:v2"), {"fromTemplate": "my-base:v2"}),
        (
            lambda t: t.from_image("reg.example.com/a/b:1", username="u", password="p"),
            {
                "fromImage": "reg.example.com/a/b:1",
                "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"},
            },
        ),
    ],
)
def test_bases(make: Callable[[Any], Any], expected: dict[str, Any]) -> None:
    assert wire(make(Template())) == {"steps": [], "force": False, **expected}


def test_no_base_is_an_error_that_says_what_to_do() -> None:
    with pytest.raises(InvalidArgumentException, match="from_image"):
        Template.to_json(Template())
    with pytest.raises(InvalidArgumentException, match="username and password"):
        Template().from_image("a", username="u")


def test_e2b_commands() -> None:
    t = (
        base()
        .apt_install(["curl", "git"])
        .apt_install("vim", no_install_recommends=True, fix_missing=True)
        .pip_install(["numpy", "pandas"])
        .pip_install(g=False)
        .npm_install("typescript", g=True)
        .npm_install(dev=True)
        .git_clone("https://x/r.git", "/app/r", branch="main", depth=1, user="root")
        .make_dir(["/a", "/b c"], mode=0o755)
        .remove("/tmp/x y", force=True, recursive=True, user="root")
        .rename("/a", "/b", force=True)
        .make_symlink("/usr/bin/python3", "/usr/bin/python", force=True)
        .run_cmd(["echo a", "echo b"], user="user")
    )
    apt = "DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y "
    assert run_steps(t) == [
        [f"apt-get update && {apt}curl git", "root"],
        [f"apt-get update && {apt}--no-install-recommends --fix-missing vim", "root"],
        ["pip install numpy pandas", "root"],
        ["pip install --user ."],
        ["npm install -g typescript", "root"],
        ["npm install --save-dev"],
        ["git clone https://x/r.git --branch main --single-branch --depth 1 /app/r", "root"],
        ["mkdir -p -m 0755 /a '/b c'"],
        ["rm -r -f '/tmp/x y'", "root"],
        ["mv /a /b -f"],
        ["ln -s -f /usr/bin/python3 /usr/bin/python"],
        ["echo a && echo b", "user"],
    ]
    assert {s["type"] for s in wire(t)["steps"]} == {"RUN"}


def test_state_steps_and_start() -> None:
    t = (
        base()
        .set_envs({"A": "1", "PATH": "/x:$PATH"})
        .set_envs({})
        .set_workdir("/app")
        .set_user("root")
        .set_start_cmd("python -m http.server 8000", wait_for_port(8000))
    )
    data = wire(t)
    assert data["steps"] == [
        {"type": "ENV", "args": ["A", "1", "PATH", "/x:$PATH"], "force": False},
        {"type": "WORKDIR", "args": ["/app"], "force": False},
        {"type": "USER", "args": ["root"], "force": False},
    ]
    assert data["startCmd"] == "python -m http.server 8000"
    assert data["readyCmd"] == '[ -n "$(ss -Htuln sport = :8000)" ]'
    assert wire(base().set_ready_cmd("true"))["readyCmd"] == "true"


def test_skip_cache() -> None:
    later = base().run_cmd("a").skip_cache().run_cmd("b").run_cmd("c")
    assert [s["force"] for s in wire(later)["steps"]] == [False, True, True]
    assert wire(later)["force"] is False
    everything = Template().skip_cache().from_debian_image().run_cmd("a")
    assert wire(everything)["force"] is True


def test_to_json_is_e2bs_shape(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("print(1)")
    t = (
        Template(file_context_path=tmp_path)
        .from_python_image("3.12")
        .copy("app.py", "/app/", force_upload=True, user="user", mode=0o644)
        .run_cmd("python /app/app.py")
        .set_start_cmd("sleep infinity", "true")
    )
    data = json.loads(Template.to_json(t))
    assert list(data) == ["steps", "force", "fromImage", "startCmd", "readyCmd"]
    copy = data["steps"][0]
    assert list(copy) == ["type", "args", "force", "filesHash", "forceUpload"]
    assert copy["args"] == ["app.py", "/app/", "user", "0644"]
    assert copy["force"] is True and copy["forceUpload"] is True  # E2B: a forced upload
    assert len(copy["filesHash"]) == 64
    assert list(data["steps"][1]) == ["type", "args", "force"]
    assert Template.to_json(t) == json.dumps(data, indent=2)
    assert AsyncTemplate.to_json(t) == Template.to_json(t)


def test_to_dockerfile() -> None:
    t = base().run_cmd("make", user="root").set_start_cmd("./serve", "true")
    assert Template.to_dockerfile(t).startswith("FROM debian:stable\nUSER user\n")
    with pytest.raises(InvalidArgumentException, match="FROM an image"):
        Template.to_dockerfile(Template().from_template("base"))


def test_copy_sources_are_checked_at_once() -> None:
    for src in ("/etc/passwd", "../outside", "a/../../b"):
        with pytest.raises(InvalidArgumentException, match="context"):
            base().copy(src, "/x")


def test_default_context_is_the_callers_directory() -> None:
    assert Template()._file_context_path == Path(__file__).resolve().parent


# --- from_dockerfile ----------------------------------------------------------------------------


def test_from_dockerfile_path_and_text(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("x")
    (tmp_path / "Dockerfile").write_text(
        'ARG BASE=3.11\nFROM python:$BASE\nCOPY app.py /app/\nRUN nope\nCMD ["python3"]\n'
    )
    t = Template(file_context_path=tmp_path).from_dockerfile("Dockerfile", {"BASE": "3.13"})
    data = wire(t)
    assert data["fromImage"] == "python:3.13"
    assert data["steps"][2]["type"] == "COPY" and "filesHash" in data["steps"][2]
    assert (data["startCmd"], data["readyCmd"]) == ("python3", "sleep 1")
    origins = t._template._origins()
    assert origins[2:4] == ["Dockerfile line 3", "Dockerfile line 4"]

    text = Template(file_context_path=tmp_path).from_dockerfile("FROM debian\nRUN true\n")
    assert run_steps(text)[2] == ["true"]
    with pytest.raises(InvalidArgumentException, match="Dockerfile: line 2: HEALTHCHECK"):
        Template().from_dockerfile("FROM a\nHEALTHCHECK CMD true\n")
    with pytest.raises(InvalidArgumentException, match="cannot read the Dockerfile"):
        Template(file_context_path=tmp_path).from_dockerfile("Missing.dockerfile")


# --- COPY: which files, their hash and their upload ---------------------------------------------


@pytest.fixture
def context(tmp_path: Path) -> Path:
    files = {
        "app/main.py": "print('main')",
        "app/lib/util.py": "x = 1",
        "app/lib/util.pyc": "junk",
        "app/.env": "SECRET=1",
        "app/node_modules/pkg/index.js": "js",
        "app/node_modules/keep.txt": "kept",
        "top.py": "top",
        "other.txt": "other",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "app" / "empty").mkdir()
    (tmp_path / "app" / "link").symlink_to("main.py")
    return tmp_path


def members(
    context: Path, src: str, ignore: list[str] | None = None, resolve: bool = False
) -> list[str]:
    rules = template_files.IgnoreRules(ignore or [])
    return [e.name for e, _ in template_files.collect(context, src, rules, resolve)]


def test_matched_paths_are_relative_to_the_context(context: Path) -> None:
    assert members(context, "top.py") == ["top.py"]
    assert members(context, "./app/lib/") == ["app/lib", "app/lib/util.py", "app/lib/util.pyc"]
    assert members(context, "*.py") == ["top.py"]
    assert members(context, "app/**/*.py") == ["app/lib/util.py", "app/main.py"]
    assert "app/.env" in members(context, "app")  # dot files match, as in E2B
    assert "app/empty" in members(context, "app")  # empty directories travel
    everything = members(context, ".")
    assert "." not in everything and "other.txt" in everything and everything == sorted(everything)


def test_ignore_patterns_are_dockers(context: Path) -> None:
    ignore = ["**/*.pyc", "app/node_modules", "!app/node_modules/keep.txt", "/other.txt", ".env"]
    names = members(context, ".", ignore)
    assert "app/lib/util.pyc" not in names and "other.txt" not in names
    assert "app/node_modules/pkg/index.js" not in names
    assert "app/node_modules/keep.txt" in names
    assert "app/.env" in names  # ".env" is relative to the context: only the top one
    with pytest.raises(InvalidArgumentException, match="no files match"):
        members(context, "other.txt", ignore)


def test_symlinks(context: Path) -> None:
    entries = template_files.collect(context, "app/link", template_files.IgnoreRules([]), False)
    assert [(e.kind, e.target) for e, _ in entries] == [("symlink", "main.py")]
    resolved = template_files.collect(context, "app/link", template_files.IgnoreRules([]), True)
    assert [(e.kind, e.size) for e, _ in resolved] == [("file", len("print('main')"))]


def test_dockerignore_and_file_ignore_patterns(context: Path) -> None:
    (context / ".dockerignore").write_text("# comment\n\n**/*.pyc\n")
    t = Template(file_context_path=context, file_ignore_patterns=["app/node_modules"])
    _, uploads = t.from_debian_image().copy("app", "/srv/")._template._prepare()
    names = [e.name for e, _ in uploads[0].items]
    assert "app/lib/util.pyc" not in names and not any("node_modules" in n for n in names)
    assert "app/lib/util.py" in names


def files_hash(context: Path, src: str = "app", dest: str = "/srv/") -> str:
    t = Template(file_context_path=context).from_debian_image().copy(src, dest)
    return wire(t)["steps"][0]["filesHash"]


def test_files_hash_follows_the_files(context: Path) -> None:
    first = files_hash(context)
    assert files_hash(context) == first
    (context / "other.txt").write_text("not copied")
    os.utime(context / "app" / "main.py", (1, 1))  # times are not content
    assert files_hash(context) == first
    (context / "app" / "main.py").write_text("print('changed')")
    changed = files_hash(context)
    assert changed != first
    (context / "app" / "main.py").chmod(0o755)
    assert files_hash(context) != changed
    assert files_hash(context, dest="/elsewhere/") != files_hash(context)
    (context / "app" / "new.txt").write_text("")
    assert files_hash(context) != files_hash(context, "app/**/*.py")


def test_upload_members_and_hash(context: Path) -> None:
    t = Template(file_context_path=context).from_debian_image().copy("app/lib", "/srv/lib")
    data, uploads = t._template._prepare()
    (upload,) = uploads
    assert upload.files_hash == data["steps"][0]["filesHash"]
    out = io.BytesIO()
    template_files.write_upload(out, upload.src, upload.dest, upload.items, upload.files_hash)
    raw = out.getvalue()
    assert gzip.decompress(raw)  # gzip'd
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        found = [(m.name, m.type, m.uid, m.gid, m.uname) for m in tar.getmembers()]
    assert found == [
        ("app/lib", tarfile.DIRTYPE, 0, 0, ""),
        ("app/lib/util.py", tarfile.REGTYPE, 0, 0, ""),
        ("app/lib/util.pyc", tarfile.REGTYPE, 0, 0, ""),
    ]
    # the daemon can check an upload against the step's hash
    assert hash_tar(io.BytesIO(raw), "app/lib", "/srv/lib") == upload.files_hash


def test_changed_files_are_caught_at_upload(context: Path) -> None:
    t = Template(file_context_path=context).from_debian_image().copy("top.py", "/x")
    _, (upload,) = t._template._prepare()
    (context / "top.py").write_text("changed meanwhile")
    with pytest.raises(InvalidArgumentException, match="changed while"):
        template_files.write_upload(
            io.BytesIO(), upload.src, upload.dest, upload.items, upload.files_hash
        )


# --- a build against a fake daemon --------------------------------------------------------------


class FakeDaemon:
    def __init__(self, present: set[str], outcome: dict[str, Any]) -> None:
        self.present, self.outcome = present, outcome
        self.calls: list[tuple[str, str]] = []
        self.uploads: dict[str, bytes] = {}
        self.body: dict[str, Any] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((request.method, path))
        if path.startswith("/templates/files/"):
            files_hash = path.rsplit("/", 1)[1]
            if request.method == "GET":
                return httpx.Response(200, json={"present": files_hash in self.present})
            assert request.headers["content-type"] == "application/gzip"
            self.uploads[files_hash] = request.read()
            return httpx.Response(204)
        if path == "/templates/builds":
            self.body = json.loads(request.content)
            return httpx.Response(
                201,
                json={
                    "build_id": "bld_1",
                    "template_id": "tpl_1",
                    "name": self.body["name"],
                    "tags": self.body["tags"],
                    "status": "waiting",
                },
            )
        if path == "/templates/builds/bld_1/logs":
            assert request.url.params["follow"] == "true"
            lines = [
                {
                    "type": "log",
                    "offset": 0,
                    "timestamp": "2026-01-01T00:00:00Z",
                    "level": "info",
                    "step": 1,
                    "message": "\x1b[32mGet:1 http://deb.debian.org\x1b[0m",
                },
                {"type": "status", **self.outcome},
            ]
            return httpx.Response(200, content="\n".join(json.dumps(x) for x in lines) + "\n")
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDaemon]:
    def install(present: set[str] = frozenset(), **outcome: Any) -> FakeDaemon:  # type: ignore[assignment]
        daemon = FakeDaemon(set(present), outcome or {"status": "ready", "reason": None})
        config = ConnectionConfig("http://fake", "key")
        monkeypatch.setattr(
            sync_template, "_client", lambda *a: ApiClient(config, httpx.MockTransport(daemon))
        )
        return daemon

    return install


def test_build_uploads_what_is_missing_and_streams_logs(context: Path, fake: Any) -> None:
    t = (
        Template(file_context_path=context)
        .from_debian_image()
        .copy("top.py", "/x")
        .copy("app/lib", "/lib")
        .apt_install("curl")
    )
    data = wire(t)
    cached = data["steps"][0]["filesHash"]
    missing = data["steps"][1]["filesHash"]
    daemon = fake(present={cached})
    logs: list[LogEntry] = []
    info = Template.build(t, "my-app:v1", tags=["stable"], cpu_count=1, on_build_logs=logs.append)
    assert (info.build_id, info.template_id, info.name, info.alias) == (
        "bld_1",
        "tpl_1",
        "my-app",
        "my-app",
    )
    assert set(daemon.uploads) == {missing}
    assert hash_tar(io.BytesIO(daemon.uploads[missing]), "app/lib", "/lib") == missing
    assert daemon.body == {
        "name": "my-app",
        "tags": ["v1", "stable"],
        "cpu_count": 1,
        "memory_mb": 2048,
        "skip_cache": False,
        "template": data,
    }
    daemon_lines = [e for e in logs if e.step is not None]
    assert [e.message for e in daemon_lines] == ["Get:1 http://deb.debian.org"]  # no colours
    assert any("uploaded 'app/lib'" in e.message for e in logs)
    assert any("'top.py' is on the daemon already" in e.message for e in logs)


def test_failed_build_raises_with_the_reason(context: Path, fake: Any) -> None:
    reason = {
        "message": "the command exited with code 100",
        "step": 1,
        "command": "apt-get install -y nope",
        "exit_code": 100,
        "output": "E: Unable to locate package nope",
    }
    fake(status="error", reason=reason)
    t = base().apt_install("nope")
    with pytest.raises(TemplateBuildError) as caught:
        Template.build(t, "broken")
    error = caught.value
    assert (error.build_id, error.step, error.exit_code) == ("bld_1", 1, 100)
    assert error.command == "apt-get install -y nope" and error.build_status == "error"
    assert "Unable to locate package nope" in str(error)
    assert "test_template_builder.py:" in str(error)  # where the failing step was made


def test_build_needs_a_valid_name(fake: Any) -> None:
    fake()
    with pytest.raises(InvalidArgumentException, match="give the template a name"):
        Template.build(base())
    with pytest.raises(InvalidArgumentException, match="lowercase"):
        Template.build(base(), "Bad Name")


def test_sync_and_async_share_the_builder() -> None:
    assert issubclass(Template, TemplateBase) and issubclass(AsyncTemplate, TemplateBase)
    assert type(AsyncTemplate().from_debian_image()) is type(Template().from_debian_image())


async def test_async_build_awaits_coroutine_callbacks(
    context: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import firebox._async.template as async_template
    from firebox._async._http import AsyncApiClient

    daemon = FakeDaemon(set(), {"status": "ready", "reason": None})
    config = ConnectionConfig("http://fake", "key")
    monkeypatch.setattr(
        async_template,
        "_client",
        lambda *a: AsyncApiClient(config, httpx.MockTransport(daemon)),
    )
    seen: list[str] = []

    async def on_log(entry: LogEntry) -> None:
        seen.append(entry.message)

    t = AsyncTemplate(file_context_path=context).from_debian_image().copy("top.py", "/x")
    info = await AsyncTemplate.build(t, "my-app", on_build_logs=on_log)
    assert info.build_id == "bld_1" and len(daemon.uploads) == 1
    assert "Get:1 http://deb.debian.org" in seen
