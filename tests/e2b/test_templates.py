"""E2B's own Template SDK, unchanged, against firebox's template service through E2B's control
API: a template built with E2B's calls (COPY of uploaded files, gzip'd and plain, RUN, ENV,
WORKDIR, a start command with E2B's port check) starts with E2B's ``Sandbox.create``; a
failing step is E2B's ``BuildException`` with firebox's reason; names, tags and the signed
upload URL behave as E2B's, and one key's templates stay its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import (
    BuildException,
    BuildInfo,
    LogEntry,
    Sandbox,
    Template,
    TemplateException,
    wait_for_port,
)

from tests.conftest import Daemon

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = [pytest.mark.slow, pytest.mark.daemon_only]

NAME = "fbx-e2b-site"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2b-context")
    (root / "site").mkdir()
    (root / "site" / "index.html").write_text("served by firebox\n")
    (root / "site" / "tool.sh").write_text("#!/bin/sh\necho tool ran\n")
    (root / "site" / "tool.sh").chmod(0o755)
    (root / "note.txt").write_text("copied from a plain tar\n")
    return root


@pytest.fixture(scope="module")
def built(e2b_env: dict[str, str], context: Path) -> Iterator[tuple[BuildInfo, list[LogEntry]]]:
    template = (
        Template(file_context_path=str(context))
        .from_base_image()  # E2B's e2bdev/base: firebox's python template
        .copy("site", "/home/user/site/")
        .copy("note.txt", "/home/user/note.txt", gzip=False)
        .run_cmd("echo built > /home/user/built.txt")
        .set_envs({"GREETING": "hi from e2b"})
        .set_workdir("/home/user/site")
        .set_start_cmd("python3 -m http.server 8000", wait_for_port(8000))
    )
    logs: list[LogEntry] = []
    info = Template.build(template, NAME, on_build_logs=logs.append)
    yield info, logs
    # E2B's SDK has no delete (its CLI does): the call as E2B's API has it; it drains the
    # template's warm pool, a while on a microVM
    with httpx.Client(headers={"X-API-Key": e2b_env["E2B_API_KEY"]}, timeout=120) as c:
        assert c.delete(f"{e2b_env['E2B_API_URL']}/templates/{NAME}").status_code == 204


def test_a_template_built_with_e2b_starts_with_e2b(built: tuple[BuildInfo, list[LogEntry]]) -> None:
    info, logs = built
    assert (info.template_id, info.name, info.tags) == (NAME, NAME, ["latest"])
    uuid.UUID(info.build_id)  # E2B's SDKs parse build ids as UUIDs in places
    messages = [str(e.message) for e in logs]
    assert any("RUN echo built" in m for m in messages), messages
    assert any("is ready" in m for m in messages), messages
    sbx = Sandbox.create(template=NAME, timeout=600)
    try:
        assert sbx.files.read("/home/user/site/index.html") == "served by firebox\n"
        assert sbx.files.read("/home/user/note.txt") == "copied from a plain tar\n"
        assert sbx.commands.run("/home/user/site/tool.sh").stdout == "tool ran\n"  # mode kept
        assert sbx.commands.run("stat -c %U /home/user/site/index.html").stdout == "user\n"
        assert sbx.commands.run("cat /home/user/built.txt").stdout == "built\n"
        assert sbx.commands.run("echo $GREETING").stdout == "hi from e2b\n"
        page = sbx.commands.run("curl -s localhost:8000/index.html").stdout
        assert page == "served by firebox\n"  # the start command serves its WORKDIR
    finally:
        sbx.kill()


def test_names_and_tags(built: tuple[BuildInfo, list[LogEntry]], daemon: Daemon) -> None:
    info, _ = built
    assert Template.exists(NAME)
    assert Template.exists("python")  # firebox's own, and E2B's names for it
    assert Template.exists("code-interpreter-v1")
    assert not Template.exists("fbx-e2b-nobody-built-this")
    assert not Template.exists("Not A Name!")

    assigned = Template.assign_tags(f"{NAME}:latest", ["stable", "v1"])
    assert sorted(assigned.tags) == ["stable", "v1"]
    assert assigned.build_id == info.build_id
    tags = Template.get_tags(NAME)
    assert sorted(t.tag for t in tags) == ["latest", "stable", "v1"]
    assert {t.build_id for t in tags} == {info.build_id}
    Sandbox.create(template=f"{NAME}:v1", timeout=300).kill()  # a tag E2B's SDK assigned
    Template.remove_tags(NAME, ["v1", "stable"])
    assert [t.tag for t in Template.get_tags(NAME)] == ["latest"]
    with pytest.raises(TemplateException):
        Template.remove_tags(NAME, "never-assigned")

    other = daemon.new_key("e2b-templates-other")
    assert not Template.exists(NAME, api_key=other)  # no oracle for another key's names
    with pytest.raises(TemplateException):
        Template.get_tags(NAME, api_key=other)
    with pytest.raises(TemplateException):
        Template.assign_tags(f"{NAME}:latest", "theirs", api_key=other)


def test_list_and_get_in_e2b_shapes(
    built: tuple[BuildInfo, list[LogEntry]], e2b_env: dict[str, str]
) -> None:
    info, _ = built
    with httpx.Client(
        base_url=e2b_env["E2B_API_URL"], headers={"X-API-Key": e2b_env["E2B_API_KEY"]}
    ) as c:
        listed = {t["templateID"]: t for t in c.get("/v2/templates").json()}
        assert listed[NAME]["buildID"] == info.build_id
        assert listed[NAME]["names"] == [NAME] and listed[NAME]["buildStatus"] == "ready"
        one = c.get(f"/templates/{NAME}").json()
        assert [b["buildID"] for b in one["builds"]] == [info.build_id]
        status = c.get(f"/templates/{NAME}/builds/{info.build_id}/status").json()
        assert status["status"] == "ready" and status["logEntries"]
        assert c.get("/templates/fbx-e2b-nobody/tags").json()["code"] == 404
        published = c.patch(f"/v2/templates/{NAME}", json={"public": True})  # the admin key
        assert published.json() == {"names": [NAME]}
        assert {t["templateID"]: t for t in c.get("/templates").json()}[NAME]["public"] is True
        c.patch(f"/templates/{NAME}", json={"public": False}).raise_for_status()
        legacy = c.post("/templates", json={"dockerfile": "FROM e2bdev/base"})
        assert legacy.status_code == 400 and "not available in firebox" in legacy.json()["message"]


def test_a_failing_step_is_e2b_build_exception(e2b_env: dict[str, str]) -> None:
    template = (
        Template()
        .from_template("python")
        .run_cmd("echo fine")
        .run_cmd("echo about to fail >&2; exit 3")
    )
    logs: list[LogEntry] = []
    with pytest.raises(BuildException) as failed:
        Template.build(template, "fbx-e2b-fails", on_build_logs=logs.append)
    message = str(failed.value)
    assert "step 2" in message and "exit" in message and "3" in message, message
    assert any("about to fail" in str(e.message) for e in logs)
    assert not Template.exists("fbx-e2b-fails")


def test_a_build_of_firebox_own_name_is_refused(e2b_env: dict[str, str]) -> None:
    with pytest.raises(BuildException, match="firebox's own templates"):
        Template.build(Template().from_template("python").run_cmd("true"), "python")


def test_the_upload_url_is_signed(e2b_env: dict[str, str], daemon: Daemon) -> None:
    files_hash = "ab" * 32
    api = e2b_env["E2B_API_URL"]
    with httpx.Client(headers={"X-API-Key": e2b_env["E2B_API_KEY"]}) as c:
        link = c.get(f"{api}/templates/{NAME}/files/{files_hash}")
        assert link.status_code == 201 and link.json()["present"] is False
        url = link.json()["url"]
        assert url.startswith(f"{api}/templates/{NAME}/files/{files_hash}?")
    with httpx.Client() as anonymous:  # as E2B's SDKs send it: no API key
        tampered = url.replace("signature=", "signature=0")
        assert anonymous.put(tampered, content=b"x").status_code == 403
        other_hash = url.replace(files_hash, "cd" * 32)
        assert anonymous.put(other_hash, content=b"x").status_code == 403
        assert anonymous.put(url, content=b"not really a tar").status_code == 200
    with httpx.Client(headers={"X-API-Key": e2b_env["E2B_API_KEY"]}) as c:
        assert c.get(f"{api}/templates/{NAME}/files/{files_hash}").json()["present"] is True
    with httpx.Client(headers={"X-API-Key": daemon.new_key("e2b-upload-other")}) as c:
        assert c.get(f"{api}/templates/x/files/{files_hash}").json()["present"] is False
