"""Templates across nodes without a registry (server/templates/distribute.py, tree_image.py):
where a build is pushed, the layer and layout written from its tree (read back here), the
record's new fields read from rows stored before them, a node's pulls (one per tree, however
many wait), and who may warm a template. Through a real registry:
tests/integration/test_template_push_pull.py."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from firebox.images import cache
from firebox.images.errors import ImageBuildError
from firebox.images.oci_ref import read_layout
from firebox.server.errors import ApiError
from firebox.server.templates import catalog, distribute, tree_image
from firebox.server.templates.catalog import TemplateRecord
from firebox.settings import StartConfig

TREE = "tree-0123456789abcdef0123"


def record(root: Path, **kw: object) -> TemplateRecord:
    base = TemplateRecord(
        build_id="bld_00ff00ff00ff00ff",
        owner="key_1",
        name="app",
        tags=("v2", "latest"),
        rootfs=str(root / "templates" / TREE / "rootfs"),
        base="template python",
        base_tree="/images/python-x/rootfs",
        layers=("l1",),
        start=StartConfig("python3 app.py", None, {"GREETING": "hi"}, "/home/user", "user"),
        steps=3,
        size_bytes=1,
        build_seconds=1.0,
        built_at=1_700_000_000.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def image_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "images"))
    return tmp_path / "images"


# -- names ------------------------------------------------------------------------------------


def test_a_build_is_pushed_to_a_repository_of_its_own_under_its_first_tag(tmp_path: Path) -> None:
    ref = distribute.image_ref("127.0.0.1:5000/firebox-templates", record(tmp_path))
    assert ref == "127.0.0.1:5000/firebox-templates/bld-00ff00ff00ff00ff:v2"
    odd = record(tmp_path, build_id="Build__9/..x", tags=())
    assert distribute.image_ref("r.example/t", odd) == "r.example/t/build-9-x:latest"


@pytest.mark.parametrize(
    "prefix", ["127.0.0.1:5000/firebox-templates", "registry.internal/a/b", "localhost:5000"]
)
def test_a_registry_prefix_names_its_host(prefix: str) -> None:
    assert distribute.parse_prefix(prefix).registry == prefix.split("/")[0]


@pytest.mark.parametrize("prefix", ["firebox-templates", "team/templates", "Bad Host:1/x"])
def test_a_prefix_without_a_registry_host_is_refused(prefix: str) -> None:
    with pytest.raises(ImageBuildError, match="HOST\\[:PORT\\]"):
        distribute.Distribution(prefix)


def test_a_tree_is_found_on_this_node_by_its_name(tmp_path: Path, image_dir: Path) -> None:
    elsewhere = record(Path("/srv/other-node/images"))
    assert distribute.local_rootfs(elsewhere) == image_dir / "templates" / TREE / "rootfs"


# -- the record -------------------------------------------------------------------------------


def test_records_stored_before_image_ref_read_as_never_pushed(tmp_path: Path) -> None:
    body = asdict(record(tmp_path))
    for key in ("public", "image_ref", "image_digest"):
        body.pop(key)
    old = catalog._record((json.dumps(body), 1))
    assert old.image_ref is None and old.image_digest is None and old.public
    # and a field a newer node adds is ignored, not a failure
    newer = catalog._record((json.dumps({**body, "image_ref": "r/x:y", "later": 1}), 0))
    assert newer.image_ref == "r/x:y"


# -- the layer and the layout -----------------------------------------------------------------


def _tree(root: Path) -> Path:
    (root / "etc" / "app").mkdir(parents=True)
    (root / "etc" / "app" / "conf").write_text("x = 1\n")
    (root / "etc" / "app" / "conf").chmod(0o640)
    os.link(root / "etc" / "app" / "conf", root / "etc" / "conf-again")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(100))
    (root / "bin" / "tool").chmod(0o4755)
    (root / "link").symlink_to("/etc/app/conf")
    os.mkfifo(root / "pipe")
    os.utime(root / "bin" / "tool", (1_600_000_000.7, 1_600_000_000.7))
    return root


def _xattr(path: Path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value)
        return True
    except OSError:  # a file system without user xattrs
        return False


def test_the_layer_keeps_types_links_modes_owners_and_xattrs(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    has_xattrs = _xattr(tree / "etc" / "app" / "conf", "user.origin", b"build\xff")
    out = io.BytesIO()
    digest, diff_id, size = tree_image.write_layer(tree, out)
    blob = out.getvalue()
    assert size == len(blob) and digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    raw = gzip.decompress(blob)
    assert diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = [m.name for m in tar.getmembers()]
    # each directory before what it holds, names in order: the same tree, the same layer
    assert names == [
        "bin",
        "etc",
        "link",
        "pipe",
        "bin/tool",
        "etc/app",
        "etc/conf-again",
        "etc/app/conf",
    ]
    first, second = members["etc/conf-again"], members["etc/app/conf"]
    assert first.isreg() and second.islnk() and second.linkname == "etc/conf-again"
    assert members["link"].issym() and members["link"].linkname == "/etc/app/conf"
    assert members["pipe"].isfifo() and members["etc/app"].isdir()
    assert first.mode == 0o640 and members["bin/tool"].mode == 0o4755
    st = os.lstat(tree / "bin" / "tool")
    tool = members["bin/tool"]
    assert (tool.uid, tool.gid, tool.uname, tool.gname) == (st.st_uid, st.st_gid, "", "")
    assert tool.mtime == 1_600_000_000
    if has_xattrs:
        assert first.pax_headers["SCHILY.xattr.user.origin"].encode("utf-8", "surrogateescape") == (
            b"build\xff"
        )
    again = io.BytesIO()
    assert tree_image.write_layer(tree, again)[0] == digest


def test_the_layout_is_one_image_whose_config_repeats_the_start(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    rec = record(tmp_path)
    tree_image.write_layout(tree, tmp_path / "layout", rec, "amd64")
    manifest_digest, config = read_layout(tmp_path / "layout")
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.split(":")[1]).read_text())
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == tree_image.LAYER
    data = (blobs / layer["digest"].split(":")[1]).read_bytes()
    assert len(data) == layer["size"]
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    ]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["created"] == "2023-11-14T22:13:20Z"
    inner = config["config"]
    assert inner["Env"] == ["GREETING=hi"] and inner["WorkingDir"] == "/home/user"
    assert inner["Cmd"] == ["/bin/sh", "-c", "python3 app.py"] and inner["User"] == "user"
    assert inner["Labels"]["io.firebox.template.tree"] == TREE
    assert inner["Labels"]["io.firebox.template.build-id"] == rec.build_id


# -- a node's pulls ---------------------------------------------------------------------------


def _made(path: Path) -> Path:
    path.mkdir(parents=True)
    (path.parent / "image.json").write_text(json.dumps({"key": path.parent.name}))
    return path


async def test_a_tree_here_is_used_as_it_is(image_dir: Path) -> None:
    rec = record(Path("/elsewhere"), image_ref="r.example/t/b:v", image_digest="sha256:" + "0" * 64)
    rootfs = _made(distribute.local_rootfs(rec))
    held: list[TemplateRecord] = []
    node = distribute.Distribution()
    node.hold = held.append
    assert await node.ensure(rec, "app:v2") == (rootfs, False)
    assert held == [rec]


async def test_a_tree_neither_here_nor_pushed_says_to_give_a_template_registry(
    image_dir: Path,
) -> None:
    with pytest.raises(ApiError) as caught:
        await distribute.Distribution().ensure(record(Path("/elsewhere")), "app:v2")
    assert caught.value.code == "unavailable"
    assert "another node" in caught.value.message
    assert "--template-registry" in caught.value.message


async def test_creates_at_once_wait_for_one_pull(
    image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(Path("/elsewhere"), image_ref="r.example/t/b:v", image_digest="sha256:" + "1" * 64)
    pulls: list[str] = []
    release = threading.Event()

    def fake_pull(record: TemplateRecord, insecure: bool, report: object) -> Path:
        pulls.append(record.build_id)
        release.wait(10)
        return _made(distribute.local_rootfs(record))

    monkeypatch.setattr(distribute, "pull_tree", fake_pull)
    node = distribute.Distribution()
    waiting = [asyncio.create_task(node.ensure(rec, "app:v2")) for _ in range(3)]
    await asyncio.sleep(0)  # each has asked, and waits
    waiting[0].cancel()  # a create given up on: the pull goes on for the others
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [(distribute.local_rootfs(rec), True)] * 2
    assert pulls == [rec.build_id]
    assert await node.ensure(rec, "app:v2") == (distribute.local_rootfs(rec), False)


async def test_a_failed_pull_is_an_error_each_waiter_sees_and_the_next_create_retries(
    image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(Path("/elsewhere"), image_ref="r.example/t/b:v", image_digest="sha256:" + "2" * 64)
    calls = []

    def failing(record: TemplateRecord, insecure: bool, report: object) -> Path:
        calls.append(insecure)
        raise ImageBuildError("pulling r.example/t/b failed: r.example could not be reached")

    monkeypatch.setattr(distribute, "pull_tree", failing)
    node = distribute.Distribution("r.example/t", insecure=True)
    results = await asyncio.gather(
        node.ensure(rec, "app:v2"), node.ensure(rec, "app:v2"), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, ApiError) and "could not be reached" in result.message
    with pytest.raises(ApiError):
        await node.ensure(rec, "app:v2")
    # plain HTTP to the registry this node was told is plain HTTP, and to no other
    other = replace(rec, image_ref="elsewhere.example/t/b:v")
    with pytest.raises(ApiError):
        await node.ensure(other, "app:v2")
    assert calls == [True, True, False]


# -- warm: who may ----------------------------------------------------------------------------


class _Catalog:
    """What warm asks of the catalog: the keys' templates by (owner, name)."""

    def __init__(self, records: dict[tuple[str, str], TemplateRecord]) -> None:
        self.records = records
        self.distribution = distribute.Distribution()
        self.warmed: list[str] = []

        async def ensure(record: TemplateRecord, label: str) -> tuple[Path, bool]:
            self.warmed.append(record.build_id)
            return Path("/t"), True

        self.distribution.ensure = ensure  # type: ignore[method-assign]

    def find(self, owner: str, ref: str) -> TemplateRecord | None:
        return self.records.get((owner, ref))

    def named(self, ref: str) -> list[TemplateRecord]:
        return [r for (_, name), r in sorted(self.records.items()) if name == ref]


def _warm(cat: _Catalog, caller: str, ref: str, **kw: object) -> dict[str, object]:
    return asyncio.run(distribute.warm(cat, caller, ref, **kw))  # type: ignore[arg-type]


def test_warm_is_for_whoever_may_read_the_template(tmp_path: Path) -> None:
    mine = record(tmp_path, build_id="bld_mine", owner="k1")
    theirs = record(tmp_path, build_id="bld_theirs", owner="k2")
    cat = _Catalog({("k1", "app"): mine, ("k2", "app"): theirs, ("k2", "solo"): theirs})
    assert _warm(cat, "k1", "app") == {"template_id": "bld_mine", "pulled": True}
    with pytest.raises(ApiError) as caught:
        _warm(cat, "k1", "solo")
    assert caught.value.code == "not_found"
    with pytest.raises(ApiError) as caught:
        _warm(cat, "k1", "solo", owner="k2")
    assert caught.value.code == "forbidden"
    # the admin: any key's, named by its owner where several keys have one of that name
    assert _warm(cat, "admin", "solo", admin=True)["template_id"] == "bld_theirs"
    assert _warm(cat, "admin", "app", admin=True, owner="k2")["template_id"] == "bld_theirs"
    with pytest.raises(ApiError) as caught:
        _warm(cat, "admin", "app", admin=True)
    assert caught.value.code == "conflict" and "?owner=" in caught.value.message
    assert cat.warmed == ["bld_mine", "bld_theirs", "bld_theirs"]
