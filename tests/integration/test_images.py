"""firebox.images for real: its subprocess runner (deadline, exit status), the post steps on a
tree as root, and a real debootstrap build of the base image (cached by content across runs).
The logic without processes or root is tests/unit/test_images.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from firebox import images
from firebox.images import cache, post, rootfs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, debootstrap)")


# --- the build's subprocess runner -------------------------------------------------------


def test_run_logged_deadline_kills_and_keeps_tail(tmp_path: Path) -> None:
    log = tmp_path / "log"
    seen: list[str] = []
    script = "echo one; echo two; sleep 60 & wait"
    started = time.monotonic()
    result = rootfs.run_logged(["sh", "-c", script], log, seen.append, timeout=5.0)
    # the deadline holds (the sleep, holding the pipe, was killed too), with a loaded host's
    # slack; both lines came long before it
    assert time.monotonic() - started < 20
    assert result.returncode is None
    assert result.tail == ("one", "two") == tuple(seen)
    assert "one\ntwo\n" in log.read_text()


def test_run_logged_exit_status(tmp_path: Path) -> None:
    result = rootfs.run_logged(["sh", "-c", "echo bad >&2; exit 3"], tmp_path / "l", print, 30)
    assert result.returncode == 3 and result.tail == ("bad",)


# --- post steps on a tree, as root --------------------------------------------------------


@needs_root
def test_post_steps_on_a_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("etc/skel", "var/cache/apt/archives", "var/lib/apt/lists/partial"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:")  # no trailing newline
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/skel/.bashrc").write_text("# bashrc\n")
    (root / "var/cache/apt/archives/x.deb").write_text("")
    (root / "var/lib/apt/lists/idx_Packages").write_text("")
    (root / "var/lib/apt/lists/lock").write_text("")
    post.apply(root)
    post.apply(root)  # idempotent
    assert (root / "etc/passwd").read_text().count("user:x:1000:1000::/home/user:/bin/bash") == 1
    assert (root / "etc/group").read_text() == "root:x:0:\nuser:x:1000:\n"
    assert "user:!:" in (root / "etc/shadow").read_text()
    home = root / "home/user"
    assert home.stat().st_uid == 1000 and oct(home.stat().st_mode & 0o7777) == "0o755"
    assert (home / ".bashrc").stat().st_uid == 1000
    assert (root / "opt/firebox/lib").is_dir() and not any((root / "opt/firebox/lib").iterdir())
    assert (root / "etc/hostname").read_text() == "sandbox\n"
    rc = root / "etc/matplotlibrc"
    assert "backend: Agg" in rc.read_text().splitlines()
    assert oct(rc.stat().st_mode & 0o7777) == "0o644"
    assert oct((root / "tmp").stat().st_mode & 0o7777) == "0o1777"
    assert not (root / "var/cache/apt/archives/x.deb").exists()
    assert sorted(p.name for p in (root / "var/lib/apt/lists").iterdir()) == ["lock", "partial"]


# --- real build --------------------------------------------------------------------------


@pytest.mark.slow
@needs_root
def test_real_build_of_base_image() -> None:
    if shutil.which("debootstrap", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip("needs debootstrap")
    messages: list[str] = []
    rootfs_path = images.build_image("base", progress=messages.append)
    assert (rootfs_path / "usr/bin/python3").exists()
    assert "user:x:1000" in (rootfs_path / "etc/passwd").read_text()
    assert images.image_path("base") == rootfs_path
    # a second ask is a cache hit: nothing is built, not even a lock waited for
    marker = rootfs_path.parent / cache.MARKER
    stamp = marker.stat().st_mtime_ns
    again: list[str] = []
    assert images.ensure_image("base", progress=again.append) == rootfs_path
    assert again == [] and marker.stat().st_mtime_ns == stamp
