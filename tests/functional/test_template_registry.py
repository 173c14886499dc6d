"""Templates across nodes through the real daemon: built once on a node with a template
registry (`firebox serve --template-registry`, Debian's docker-registry on loopback here), a
template is pushed there and its record says where; a node without its files (here: the same
node, its tree and layers removed while it was stopped, as on a node that never built it)
pulls it at its first create, once however many creates wait, or ahead of that when told
(POST /templates/{name}/warm), and builds templates on it; a template neither there nor
pushed is a clear error; a deleted template's image leaves the registry.

Jail only: what is tested is the daemon's and the registry's, not the sandbox backend's.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from firebox import Sandbox, Template, images
from firebox.exceptions import FireboxException
from firebox.images.cache import image_root
from tests.conftest import Daemon
from tests.registry import Registry, missing_tools, running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.backends("jail"),
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]

PREFIX_PATH = "firebox-templates"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # deletes allowed (distribution's default: off): a deleted template is deleted there
    with running(tmp_path_factory.mktemp("template-registry"), deletes=True) as reg:
        yield reg


def _registry_args(registry: Registry) -> list[str]:
    return ["--template-registry", f"{registry.addr}/{PREFIX_PATH}", "--template-registry-insecure"]


@pytest.fixture(scope="module")
def node(
    backend_name: str, image: Path, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    if backend_name != "jail":
        pytest.skip("the template registry is the daemon's; checked on the jail backend")
    images.build_image("base")  # what the templates here are built on (cached)
    d = Daemon(
        home=tmp_path_factory.mktemp("firebox-home-template-registry"),
        cgroup_parent=f"firebox-treg-{os.getpid()}",
        isolation=backend_name,
        pool_size=0,
        args=_registry_args(registry),
    )
    d.start()
    try:
        yield d
    finally:
        try:  # its templates, and what only they used, go with the module
            with d.client() as c:
                c.timeout = httpx.Timeout(300)
                for t in c.get("/templates").json()["templates"]:
                    c.delete(f"/templates/{t['name']}")
                c.post("/templates/prune")
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        d.stop()


def _restart(d: Daemon, *, args: list[str] | None = None, meanwhile: Callable[[], None]) -> None:
    d.stop()
    meanwhile()
    if args is not None:
        d.args = args
    d.start()


def _record(d: Daemon, name: str) -> dict[str, Any]:
    """The template's record as the shared registry database holds it (one host: SQLite)."""
    with sqlite3.connect(d.home / "firebox.db") as db:
        (row,) = db.execute("SELECT record FROM templates WHERE name = ?", (name,)).fetchall()
    return dict(json.loads(row[0]))


def _tree(record: dict[str, Any]) -> Path:
    """Where the template's tree is on this node."""
    return image_root() / "templates" / Path(record["rootfs"]).parent.name


def _never_built_here(record: dict[str, Any]) -> Callable[[], None]:
    """Its files gone from this node: its tree, and the layers its steps made."""

    def remove() -> None:
        shutil.rmtree(_tree(record), ignore_errors=True)
        for key in record["layers"]:
            shutil.rmtree(image_root() / "layers" / key, ignore_errors=True)

    return remove


def _registry_get(registry: Registry, path: str, accept: str = "*/*") -> Any:
    """A registry API answer (``/v2/...``), the registry's own word on what it holds."""
    request = urllib.request.Request(
        f"http://{registry.addr}/v2/{path}", headers={"Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _build(d: Daemon, name: str) -> str:
    """A small template: files the test knows, a hard link, an owner; its marker."""
    token = uuid.uuid4().hex
    template = (
        Template()
        .from_template("base")
        .run_cmd(
            f"echo {token} > /opt/marker && ln /opt/marker /opt/marker-link"
            " && chown 1000:1000 /opt/marker",
            user="root",
        )
    )
    Template.build(template, name, api_key=d.key, api_url=d.url, build_timeout=600)
    return token


def _check(d: Daemon, name: str, token: str) -> None:
    """A sandbox of the template has the build's files (one file under two names)."""
    with Sandbox.create(template=name, api_key=d.key, api_url=d.url, timeout=120) as sbx:
        r = sbx.commands.run("cat /opt/marker; stat -c %i /opt/marker /opt/marker-link")
        marker, inode, linked = r.stdout.splitlines()
        assert (marker, inode) == (token, linked)


@pytest.fixture(scope="module")
def built(node: Daemon) -> tuple[str, dict[str, Any]]:
    token = _build(node, "fbx-pushed")
    return token, _record(node, "fbx-pushed")


def test_a_build_is_pushed_to_the_template_registry_and_says_where(
    node: Daemon, registry: Registry, built: tuple[str, dict[str, Any]]
) -> None:
    _, record = built
    ref, digest = record["image_ref"], record["image_digest"]
    repository = f"{PREFIX_PATH}/{record['build_id'].replace('_', '-')}"
    assert ref == f"{registry.addr}/{repository}:latest"
    assert digest.startswith("sha256:")
    assert _registry_get(registry, f"{repository}/tags/list")["tags"] == ["latest"]
    manifest = _registry_get(registry, f"{repository}/manifests/{digest}", OCI_MANIFEST)
    config = _registry_get(registry, f"{repository}/blobs/{manifest['config']['digest']}")
    assert config["config"]["Labels"]["io.firebox.template.tree"] == _tree(record).name
    with node.client() as c:
        shown = c.get("/templates/fbx-pushed").json()
    assert (shown["image_ref"], shown["image_digest"]) == (ref, digest)


def test_a_node_without_the_files_pulls_them_once_at_the_first_creates(
    node: Daemon, built: tuple[str, dict[str, Any]]
) -> None:
    token, record = built
    _restart(node, meanwhile=_never_built_here(record))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: _check(node, "fbx-pushed", token), range(2)))
    assert node.log_path.read_text().count("pulling its tree from") == 1
    # the owner the build gave it (a jail shows the image's owners to the sandbox as nobody,
    # pulled or not: it maps only the sandbox's own ids)
    owner = os.lstat(_tree(record) / "rootfs" / "opt" / "marker")
    assert (owner.st_uid, owner.st_gid) == (1000, 1000)
    marker = json.loads((_tree(record) / "image.json").read_text())
    assert marker["recipe"] == {
        "kind": "pulled-template",
        "ref": record["image_ref"],
        "digest": record["image_digest"],
    }


def test_a_template_is_built_on_one_another_node_built(
    node: Daemon, built: tuple[str, dict[str, Any]]
) -> None:
    token, record = built
    assert not any((image_root() / "layers" / key).exists() for key in record["layers"])
    child = Template().from_template("fbx-pushed").run_cmd("cp /opt/marker /opt/child", user="root")
    Template.build(child, "fbx-child", api_key=node.key, api_url=node.url, build_timeout=600)
    with Sandbox.create(template="fbx-child", api_key=node.key, api_url=node.url) as sbx:
        assert sbx.commands.run("cat /opt/marker /opt/child").stdout == f"{token}\n" * 2
    with node.client() as c:
        assert c.delete("/templates/fbx-child").status_code == 204


def test_a_template_neither_here_nor_pushed_says_what_to_do(
    node: Daemon, registry: Registry, built: tuple[str, dict[str, Any]]
) -> None:
    # built on a node without a template registry: its files are there only
    _restart(node, args=[], meanwhile=lambda: None)
    record: dict[str, Any] = {}

    def files_gone() -> None:
        if record:
            shutil.rmtree(_tree(record))
        _never_built_here(built[1])()  # the next test's too: one restart for both

    try:
        _build(node, "fbx-unpushed")
        record.update(_record(node, "fbx-unpushed"))
    finally:
        _restart(node, args=_registry_args(registry), meanwhile=files_gone)
    assert record["image_ref"] is None
    with pytest.raises(FireboxException) as caught:
        Sandbox.create(template="fbx-unpushed", api_key=node.key, api_url=node.url)
    message = str(caught.value)
    assert "another node" in message and "--template-registry" in message
    with node.client() as c:
        r = c.post("/templates/fbx-unpushed/warm")
    assert r.status_code == 503 and "--template-registry" in r.json()["error"]["message"]


def test_a_node_warms_a_template_ahead_of_its_first_use_when_told(
    node: Daemon, built: tuple[str, dict[str, Any]]
) -> None:
    token, record = built
    if _tree(record).exists():  # (the test before removed it, with the restart it needed)
        _restart(node, meanwhile=_never_built_here(record))
    other = node.new_key("warm-tenant")
    with httpx.Client(base_url=node.url, headers={"X-API-Key": other}, timeout=60) as c:
        assert c.post("/templates/fbx-pushed/warm").status_code == 404  # not its template
    assert not _tree(record).exists()
    with node.client() as c:
        first = c.post("/templates/fbx-pushed/warm")
        assert first.status_code == 200, first.text
        assert first.json() == {"template_id": record["build_id"], "pulled": True}
        assert (_tree(record) / "image.json").is_file()
        again = c.post("/templates/fbx-pushed:latest/warm").json()
        assert again == {"template_id": record["build_id"], "pulled": False}
    _check(node, "fbx-pushed", token)


def test_a_deleted_templates_image_leaves_the_registry(
    node: Daemon, registry: Registry, built: tuple[str, dict[str, Any]]
) -> None:
    _, record = built
    repository = f"{PREFIX_PATH}/{record['build_id'].replace('_', '-')}"
    with node.client() as c:
        assert c.delete("/templates/fbx-pushed").status_code == 204
    try:
        tags = _registry_get(registry, f"{repository}/tags/list").get("tags")
    except urllib.error.HTTPError as e:
        assert e.code == 404
        tags = None
    assert not tags
