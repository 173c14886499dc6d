"""The files API cannot reach the host: `..`, absolute paths and symlinks all resolve inside.

Judged from the host: a marker file outside the image must never be read, and nothing may
appear on (or change in) the host's filesystem.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import FireboxException, Sandbox
from tests.conftest import Daemon


@pytest.fixture
def marker() -> Iterator[Path]:
    path = Path("/root") / f"firebox-marker-{uuid.uuid4().hex}"
    path.write_text("host secret")
    try:
        yield path
    finally:
        path.unlink()


def _paths_to(target: Path) -> list[str]:
    rel = "../" * 12 + str(target).lstrip("/")
    return [
        str(target),
        rel,
        "/home/user/" + rel,
        "/tmp/../" + rel,
        f"/proc/self/root{target}",
        f"/proc/1/root{target}",
        "~/" + rel,
    ]


def test_reads_never_reach_host_files(sandbox: Sandbox, marker: Path, daemon: Daemon) -> None:
    host_only = [
        marker,
        daemon.home / "admin.key",
        daemon.home / "firebox.db",
        Path(__file__),  # the host's checkout
    ]
    for target in host_only:
        for path in _paths_to(target):
            for user in ("user", "root"):
                try:
                    data = sandbox.files.read(path, format="bytes", user=user)
                except FireboxException:
                    continue
                assert b"host secret" not in data and daemon.key.encode() not in data, path


def test_symlinks_pointing_out_stay_inside(sandbox: Sandbox, marker: Path, daemon: Daemon) -> None:
    sandbox.commands.run(f"ln -s {marker} /home/user/link; ln -s {daemon.home} /home/user/dlink")
    for path in ("/home/user/link", "link", "dlink/admin.key"):
        with pytest.raises(FireboxException):
            sandbox.files.read(path)
    # writing through a link that points at a host path creates nothing on the host
    escape = Path("/tmp") / f"firebox-escape-{uuid.uuid4().hex}"
    sandbox.commands.run(f"ln -s {escape} /home/user/out")
    sandbox.files.write("/home/user/out", "written through a link")
    assert not escape.exists()
    assert sandbox.files.read(str(escape)) == "written through a link"  # the sandbox's own /tmp
    with pytest.raises(FireboxException):
        sandbox.files.write(str(marker), "overwrite")
    assert marker.read_text() == "host secret"


def test_writes_with_dotdot_land_inside(sandbox: Sandbox) -> None:
    name = f"firebox-escape-{uuid.uuid4().hex}"
    info = sandbox.files.write("../../../../../../tmp/" + name, "x")
    assert info.path == f"/tmp/{name}"
    assert not Path("/tmp", name).exists()
    for target in (f"/root/{name}", f"/etc/{name}", f"/var/lib/{name}"):
        with pytest.raises(FireboxException):
            sandbox.files.write(target, "x")
        assert not os.path.exists(target)


def test_listing_the_root_shows_the_image_not_the_host(sandbox: Sandbox) -> None:
    names = {e.name for e in sandbox.files.list("/")}
    assert {"usr", "etc", "home", "tmp"} <= names
    assert "work" not in names  # the host's /work (this checkout) is not there
    with pytest.raises(FireboxException):
        sandbox.files.list("/work")
