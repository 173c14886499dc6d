"""Custom templates through the real daemon, on every backend: built from code and from a
Dockerfile (an apt package and a pip package from the tests' loopback sources, copied files,
env, workdir, user, a start command with a port ready check), cached per step, failing with
the step that failed, owned by their key, and confined like any sandbox while they build."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from firebox import Sandbox, Template, TemplateBuildError, images, wait_for_port
from firebox.exceptions import FireboxException
from firebox.images.apt_sources import host_codename
from tests.conftest import EGRESS_ORIGIN, Daemon
from tests.packages import PackageServer, deb, serve, wheel
from tests.registry import Registry, push_tree

pytestmark = pytest.mark.slow

APP = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("app says " + os.environ.get("GREETING", "?")).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


@pytest.fixture(scope="module")
def packages() -> Iterator[PackageServer]:
    debs = {"fbx-hello": deb("fbx-hello", {"/usr/bin/fbx-hello": "#!/bin/sh\necho hello deb\n"})}
    wheels = {"fbx-hello-py": wheel("fbx-hello-py", "fbx_hello", "VALUE = 'hello wheel'\n")}
    with serve(EGRESS_ORIGIN, wheels, debs) as server:
        yield server


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(APP)
    (tmp_path / "app" / "data.txt").write_text("copied data\n")
    return tmp_path


def _sources(packages: PackageServer) -> str:
    port = packages.server_address[1]
    return (
        "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* && echo "
        f"'deb [trusted=yes] http://pkgs.test:{port}/apt/ ./' > /etc/apt/sources.list.d/t.list"
    )


def _template(packages: PackageServer, context: Path) -> Template:
    port = packages.server_address[1]
    return (
        Template(file_context_path=context)
        .from_template("python")
        .run_cmd(_sources(packages), user="root")
        .apt_install(["fbx-hello"])
        .set_envs(
            {
                "PIP_INDEX_URL": f"http://pkgs.test:{port}/simple/",
                "PIP_TRUSTED_HOST": "pkgs.test",
                "GREETING": "hi",
            }
        )
        .pip_install(["fbx-hello-py"])
        .copy("app", "/home/user/app/", user="user")
        .set_workdir("/home/user/app")
        .set_user("user")
        .set_start_cmd("python3 server.py", wait_for_port(8080))
    )


def _check_sandbox(name: str) -> None:
    with Sandbox.create(template=name) as sbx:
        # the server is up the moment the create returns
        r = sbx.commands.run("curl -s http://127.0.0.1:8080/")
        assert r.stdout == "app says hi"
        assert sbx.commands.run("fbx-hello").stdout == "hello deb\n"
        r = sbx.commands.run("python3 -c 'import fbx_hello; print(fbx_hello.VALUE)'")
        assert r.stdout == "hello wheel\n"
        assert sbx.files.read("/home/user/app/data.txt") == "copied data\n"
        r = sbx.commands.run("stat -c %U /home/user/app/server.py; echo $GREETING")
        assert r.stdout == "user\nhi\n"


def test_a_template_from_code_starts_with_its_server_up(
    daemon: Daemon, packages: PackageServer, context: Path
) -> None:
    logs: list[str] = []
    Template.build(
        _template(packages, context),
        "fbx-code",
        on_build_logs=lambda e: logs.append(e.message),
        build_timeout=900,
    )
    assert any("fbx-hello" in line for line in logs)
    _check_sandbox("fbx-code")
    info = Template.get("fbx-code")
    assert info.start_cmd == "python3 server.py"


def test_a_template_from_a_dockerfile(
    daemon: Daemon, packages: PackageServer, context: Path
) -> None:
    port = packages.server_address[1]
    dockerfile = f"""\
FROM python
RUN {_sources(packages)}
RUN apt-get update && apt-get install -y fbx-hello
ENV PIP_INDEX_URL=http://pkgs.test:{port}/simple/ PIP_TRUSTED_HOST=pkgs.test GREETING=hi
RUN pip install fbx-hello-py
COPY --chown=user app /home/user/app/
WORKDIR /home/user/app
USER user
CMD ["python3", "server.py"]
"""
    (context / "Dockerfile").write_text(dockerfile)
    template = (
        Template(file_context_path=context)
        .from_dockerfile("Dockerfile")
        .set_ready_cmd(wait_for_port(8080))
    )
    Template.build(template, "fbx-docker", build_timeout=900)
    _check_sandbox("fbx-docker")


def test_a_rebuild_after_changing_the_last_step_redoes_only_that_step(
    daemon: Daemon, packages: PackageServer
) -> None:
    def build(last: str) -> list[str]:
        logs: list[str] = []
        template = (
            Template()
            .from_template("python")
            .run_cmd("sleep 2 && echo one > /opt/one", user="root")
            .run_cmd("echo two > /opt/two", user="root")
            .run_cmd(last, user="root")
        )
        Template.build(template, "fbx-cache", on_build_logs=lambda e: logs.append(e.message))
        return logs

    # layers are kept host-wide: a last step of this run's own is made anew
    token = uuid.uuid4().hex[:8]
    build(f"echo three > /opt/three # {token}")
    logs = build(f"echo four > /opt/four # {token}")
    cached = [line for line in logs if "CACHED" in line]
    assert len(cached) == 2, logs
    assert any("step 3: RUN echo four" in line for line in logs)
    # (the time it saves is bench/templates.py's to measure, not a test's)
    with Sandbox.create(template="fbx-cache") as sbx:
        r = sbx.commands.run("cat /opt/one /opt/two /opt/four; test -e /opt/three || echo gone")
        assert r.stdout == "one\ntwo\nfour\ngone\n"


def test_a_failing_run_names_its_step_exit_code_and_output(daemon: Daemon) -> None:
    template = (
        Template()
        .from_template("python")
        .run_cmd("echo fine")
        .run_cmd("echo about to fail; echo oops >&2; exit 3")
    )
    with pytest.raises(TemplateBuildError) as caught:
        Template.build(template, "fbx-fails")
    e = caught.value
    assert e.step == 2 and e.exit_code == 3
    assert "exit 3" in (e.command or "")
    assert "oops" in (e.output or "") and "about to fail" in (e.output or "")
    assert not Template.exists("fbx-fails")


def test_an_unsupported_dockerfile_instruction_is_a_400_with_its_line(daemon: Daemon) -> None:
    text = "FROM python\nRUN true\nHEALTHCHECK CMD true\n"
    with daemon.client() as c:
        r = c.post("/templates/builds", json={"name": "fbx-bad", "dockerfile": text})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "HEALTHCHECK" in message and "line 3" in message


def test_another_key_neither_sees_nor_uses_a_template(daemon: Daemon) -> None:
    Template.build(Template().from_template("python").run_cmd("true"), "fbx-mine")
    other = daemon.new_key("template-tenant")
    with pytest.raises(FireboxException) as caught:
        Sandbox.create(template="fbx-mine", api_key=other)
    assert "unknown template" in str(caught.value)
    assert "fbx-mine" not in [t.name for t in Template.list(api_key=other)]
    with httpx.Client(base_url=daemon.url, headers={"X-API-Key": other}) as c:
        assert c.get("/templates/fbx-mine").status_code == 404
        assert c.delete("/templates/fbx-mine").status_code == 404


def test_a_template_in_use_is_not_deleted(daemon: Daemon) -> None:
    Template.build(
        Template().from_template("python").run_cmd("touch /opt/x", user="root"), "fbx-used"
    )
    sbx = Sandbox.create(template="fbx-used")
    try:
        with pytest.raises(FireboxException) as caught:
            Template.delete("fbx-used")
        assert "running sandbox" in str(caught.value)
    finally:
        sbx.kill()
    Template.delete("fbx-used")
    assert not Template.exists("fbx-used")


def test_a_build_step_is_confined_like_any_sandbox(daemon: Daemon) -> None:
    port = httpx.URL(daemon.url).port
    hostile = (
        Template()
        .from_template("python")
        # the daemon on the host's loopback: no route from the build's network namespace
        .run_cmd(
            f"curl -s -m 5 http://127.0.0.1:{port}/health && echo REACHED || echo refused",
            user="root",
        )
        # the host's files: the daemon's key is nowhere in the build's root
        .run_cmd(f"cat {daemon.home}/admin.key 2>&1 || echo no-key", user="root")
    )
    logs: list[str] = []
    Template.build(hostile, "fbx-hostile", on_build_logs=lambda e: logs.append(e.message))
    assert "refused" in logs and "REACHED" not in logs
    assert any("No such file" in line for line in logs)
    full = Template().from_template("python").run_cmd("head -c 2G /dev/zero > /big", user="root")
    with pytest.raises(TemplateBuildError) as caught:
        Template.build(full, "fbx-full")
    assert "disk" in str(caught.value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # on the loopback address the test daemon lifts off the floor: a registry anywhere else
    # on the host's loopback is refused (test_a_registry_on_the_floor_is_refused)
    reg = Registry(tmp_path_factory.mktemp("registry"), host=EGRESS_ORIGIN).start()
    try:
        yield reg
    finally:
        reg.stop()


def test_a_template_from_an_oci_image(daemon: Daemon, registry: Registry, tmp_path: Path) -> None:
    # the small image, made once from the host's own mirror (as the guest image is)
    base = images.build_image("base")
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", "-l", f"{base}/.", str(tree)], check=True)
    token = uuid.uuid4().hex
    (tree / "etc" / "fbx-marker").write_text(token + "\n")
    push_tree(tree, registry.addr, "fbx/app", "v1")
    template = (
        Template()
        .from_image(f"{registry.addr}/fbx/app:v1")
        .run_cmd("cp /etc/fbx-marker /opt/seen", user="root")
    )
    Template.build(template, "fbx-oci", build_timeout=900)
    with Sandbox.create(template="fbx-oci") as sbx:
        assert sbx.commands.run("cat /opt/seen").stdout == token + "\n"
        assert sbx.commands.run("id -un").stdout == "user\n"


def test_a_registry_on_the_floor_is_refused(daemon: Daemon) -> None:
    spec = {"fromImage": "127.0.0.1:5000/fbx/app:v1", "steps": [], "force": False}
    with daemon.client() as c:
        r = c.post("/templates/builds", json={"name": "fbx-floor", "template": spec})
        assert r.status_code == 201
        status = c.get(f"/templates/builds/{r.json()['build_id']}/logs").text
    assert "loopback" in status and "does not pull from there" in status


def test_a_build_is_cancelled_and_frees_its_slot(daemon: Daemon) -> None:
    slow = Template().from_template("python").run_cmd(f"sleep 300 # {uuid.uuid4().hex}")
    info = Template.build_in_background(slow, "fbx-slow")
    deadline = time.monotonic() + 60
    while "sleep 300" not in " ".join(
        e.message for e in Template.get_build_status(info).log_entries
    ):
        assert time.monotonic() < deadline, "the build never reached its step"
        time.sleep(0.2)
    Template.cancel_build(info)
    status = Template.get_build_status(info)
    assert status.status == "cancelled"
    # the build's slot (--max-builds 1) is free again: another build runs at once
    started = time.monotonic()
    Template.build(Template().from_template("python").run_cmd("true"), "fbx-after")
    assert time.monotonic() - started < 60


def test_a_template_from_the_hosts_debian_release(daemon: Daemon) -> None:
    codename = host_codename()
    template = (
        Template()
        .from_debian_image(codename)
        .run_cmd("grep VERSION_CODENAME /etc/os-release > /opt/release", user="root")
    )
    Template.build(template, "fbx-debian", build_timeout=900)
    with Sandbox.create(template="fbx-debian") as sbx:
        assert sbx.commands.run("cat /opt/release").stdout == f"VERSION_CODENAME={codename}\n"
        assert sbx.commands.run("whoami").stdout == "user\n"


def test_a_template_cannot_point_its_home_at_the_hosts_files(
    daemon: Daemon, tmp_path: Path
) -> None:
    # a file of the host's, at a path the template then names as its home: sandboxes mount
    # their own disk there, and a link would name a path outside the image
    (tmp_path / "secret.txt").write_text("host secret\n")
    template = (
        Template()
        .from_template("python")
        .run_cmd(f"rm -rf /home/user && ln -s {tmp_path} /home/user", user="root")
    )
    with pytest.raises(TemplateBuildError) as caught:
        Template.build(template, "fbx-home-link")
    assert "/home/user is not a directory" in str(caught.value)
