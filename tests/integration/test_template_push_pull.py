"""A template's tree through a real registry (Debian's docker-registry on loopback, started
and stopped by PID: tests/registry.py): pushed with skopeo as distribute.py writes it, pulled
and unpacked with umoci into another image directory, as another node would. What the layer
keeps comes back; what firebox never keeps in an image tree does not; a pull is of exactly
the image pushed for that tree; a deleted template's image goes from a registry that allows it.
(The daemon doing it: tests/functional/test_template_registry.py.)
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from firebox.images import cache
from firebox.images.errors import ImageBuildError
from firebox.server.templates import distribute
from firebox.server.templates.catalog import TemplateRecord
from firebox.settings import StartConfig
from tests.registry import Registry, missing_tools, running

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unpacked files keep their owners)"),
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]

TREE = "tree-00000000000000test"
PREFIX_PATH = "firebox-templates"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def deleting_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One that allows deletes (off by default in distribution)."""
    with running(tmp_path_factory.mktemp("deleting-registry"), deletes=True) as reg:
        yield reg


def _built(images: Path) -> TemplateRecord:
    """A tree as a build leaves it on the node that built it, and its record."""
    rootfs = images / "templates" / TREE / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "owned").write_text("owned\n")
    os.chown(rootfs / "etc" / "owned", 1000, 1001)
    (rootfs / "etc" / "owned").chmod(0o640)
    os.link(rootfs / "etc" / "owned", rootfs / "etc" / "owned-too")
    (rootfs / "etc" / "link").symlink_to("owned")
    os.mkfifo(rootfs / "run-pipe")
    (rootfs / "setuid").write_text("#!/bin/sh\n")
    (rootfs / "setuid").chmod(0o4755)
    os.setxattr(rootfs / "etc" / "owned", "user.firebox", b"kept")
    os.setxattr(rootfs / "etc", "trusted.overlay.opaque", b"y")  # spent by flattening
    os.mknod(rootfs / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (rootfs.parent / "image.json").write_text(json.dumps({"key": TREE, "size_bytes": 1}))
    return TemplateRecord(
        build_id="bld_70d0c0ffee000001",
        owner="key_1",
        name="app",
        tags=("v1",),
        rootfs=str(rootfs),
        base="base",
        base_tree="/nowhere",
        layers=(),
        start=StartConfig(envs={"A": "b"}),
        steps=1,
        size_bytes=1,
        build_seconds=1.0,
        built_at=1_700_000_000.0,
    )


@pytest.fixture
def pushed(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[TemplateRecord, Path]:
    """A tree built on node A and pushed; the test then runs as node B (its own images)."""
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "node-a"))
    record = _built(tmp_path / "node-a")
    ref = distribute.image_ref(f"{registry.addr}/{PREFIX_PATH}", record)
    digest = distribute.push_tree(Path(record.rootfs), record, ref, insecure=True)
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "node-b"))
    return replace(record, image_ref=ref, image_digest=digest), tmp_path / "node-b"


def test_a_pulled_tree_is_the_built_one_on_this_nodes_disk(
    pushed: tuple[TemplateRecord, Path],
) -> None:
    record, node_b = pushed
    rootfs = distribute.pull_tree(record, True, lambda message: None)
    assert rootfs == node_b / "templates" / TREE / "rootfs" == distribute.local_rootfs(record)
    assert distribute.present(rootfs)
    owned = os.lstat(rootfs / "etc" / "owned")
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1000, 1001, 0o640)
    assert owned.st_nlink == 2 and os.lstat(rootfs / "etc" / "owned-too").st_ino == owned.st_ino
    assert os.readlink(rootfs / "etc" / "link") == "owned"
    assert stat.S_ISFIFO(os.lstat(rootfs / "run-pipe").st_mode)
    assert os.getxattr(rootfs / "etc" / "owned", "user.firebox") == b"kept"
    assert "trusted.overlay.opaque" not in os.listxattr(rootfs / "etc")
    # what no image tree keeps on the host: device nodes, set-id bits
    assert not (rootfs / "null").exists()
    assert stat.S_IMODE(os.lstat(rootfs / "setuid").st_mode) == 0o755
    # a second pull finds it, and pulls nothing
    assert distribute.pull_tree(record, True, lambda message: None) == rootfs


def test_the_same_tree_pushed_again_is_the_same_image(
    pushed: tuple[TemplateRecord, Path], registry: Registry, tmp_path: Path
) -> None:
    record, _ = pushed
    source = tmp_path / "node-a" / "templates" / TREE / "rootfs"
    assert record.image_ref is not None
    again = distribute.push_tree(source, record, record.image_ref, insecure=True)
    assert again == record.image_digest


def test_a_pull_is_of_the_image_pushed_for_that_tree(pushed: tuple[TemplateRecord, Path]) -> None:
    record, _ = pushed
    other = replace(record, rootfs="/elsewhere/templates/tree-someotherbuild/rootfs")
    with pytest.raises(ImageBuildError, match="is not the image pushed for tree-someotherbuild"):
        distribute.pull_tree(other, True, lambda message: None)
    missing = replace(record, image_digest="sha256:" + "0" * 64)
    with pytest.raises(ImageBuildError, match="does not exist there"):
        distribute.pull_tree(missing, True, lambda message: None)


def test_a_plain_http_registry_needs_the_insecure_flag(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "node-a"))
    record = _built(tmp_path / "node-a")
    ref = distribute.image_ref(f"{registry.addr}/{PREFIX_PATH}", record)
    with pytest.raises(ImageBuildError, match="--template-registry-insecure"):
        distribute.push_tree(Path(record.rootfs), record, ref, insecure=False)


def test_a_deleted_templates_image_goes_where_the_registry_allows_it(
    registry: Registry,
    deleting_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "node-a"))
    record = _built(tmp_path / "node-a")
    for reg, allowed in ((registry, False), (deleting_registry, True)):
        ref = distribute.image_ref(f"{reg.addr}/{PREFIX_PATH}", record)
        digest = distribute.push_tree(Path(record.rootfs), record, ref, insecure=True)
        if not allowed:
            with pytest.raises(ImageBuildError, match="does not allow deletes"):
                distribute.delete_image(ref, digest, insecure=True)
            continue
        distribute.delete_image(ref, digest, insecure=True)
        monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(tmp_path / "node-b"))
        gone = replace(record, image_ref=ref, image_digest=digest)
        with pytest.raises(ImageBuildError, match="does not exist there"):
            distribute.pull_tree(gone, True, lambda message: None)
