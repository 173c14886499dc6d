"""firebox.images without building anything: apt sources, recipes, progress, the cache (with a
fake builder) and the post steps' refusals. What runs processes, needs root or builds for real
is tests/integration/test_images.py."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from firebox import images
from firebox.images import apt_sources, cache, post, rootfs
from firebox.images._fs import mounts_under
from firebox.images.apt_sources import (
    AptSourceError,
    SourceEntry,
    host_codename,
    host_mirror,
    parse_deb822,
    parse_one_line,
    parse_os_release,
    pick_mirror,
)
from firebox.images.cache import Recipe, build_cached, ready_rootfs
from firebox.images.errors import ImageBuildError

MIRROR = "http://archive.example/debian"

DEB822 = f"""\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


# --- apt sources -------------------------------------------------------------------------


def test_os_release_codename_quoted_and_plain() -> None:
    text = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
    parsed = parse_os_release(text)
    assert parsed["VERSION_CODENAME"] == "bookworm"
    assert parsed["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"


def test_one_line_format_with_options_and_comments() -> None:
    text = f"""\
# deb http://old.example/debian bookworm main
deb-src {MIRROR} bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] {MIRROR} bookworm main contrib # tail
deb [ arch=amd64 ] http://other.example/debian bookworm-updates main
"""
    entries = parse_one_line(text)
    assert entries[0] == SourceEntry("deb-src", MIRROR, ("bookworm",), ("main",))
    assert entries[1] == SourceEntry("deb", MIRROR, ("bookworm",), ("main", "contrib"))
    assert entries[2].uri == "http://other.example/debian"
    assert pick_mirror(entries, "bookworm") == MIRROR


def test_deb822_format_comment_inside_paragraph() -> None:
    entries = parse_deb822(DEB822)
    assert entries[0] == SourceEntry("deb", MIRROR, ("bookworm", "bookworm-updates"), ("main",))
    assert entries[1].suites == ("bookworm-security",)
    assert pick_mirror(entries, "bookworm") == MIRROR


def test_deb822_multiple_types_uris_continuation_and_disabled() -> None:
    text = """\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

types: deb-src deb
uris: http://a.example/debian
  http://b.example/debian
suites: bookworm
components: contrib main
"""
    entries = parse_deb822(text)
    assert [(e.type, e.uri) for e in entries] == [
        ("deb-src", "http://a.example/debian"),
        ("deb-src", "http://b.example/debian"),
        ("deb", "http://a.example/debian"),
        ("deb", "http://b.example/debian"),
    ]
    assert pick_mirror(entries, "bookworm") == "http://a.example/debian"


def test_pick_mirror_needs_exact_suite_main_and_usable_scheme() -> None:
    entries = [
        SourceEntry("deb", "http://u.example/debian", ("bookworm-updates",), ("main",)),
        SourceEntry("deb", "http://c.example/debian", ("bookworm",), ("contrib",)),
        SourceEntry("deb", "mirror+file:/etc/apt/mirrors.txt", ("bookworm",), ("main",)),
        SourceEntry("deb", "https://good.example/debian", ("bookworm",), ("main",)),
    ]
    assert pick_mirror(entries, "bookworm") == "https://good.example/debian"
    assert pick_mirror(entries, "trixie") is None


def _etc_apt(tmp_path: Path, sources_list: str = "", parts: dict[str, str] | None = None) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(sources_list)
    for name, text in (parts or {}).items():
        (etc / "sources.list.d" / name).write_text(text)
    return etc


def test_host_mirror_reads_list_and_sources_files_in_order(tmp_path: Path) -> None:
    etc = _etc_apt(
        tmp_path,
        parts={
            "a.list.disabled": "deb http://nope.example/debian bookworm main\n",
            "b.sources": DEB822,
            "c.list": "deb http://later.example/debian bookworm main\n",
        },
    )
    assert host_mirror("bookworm", etc, environ={}) == MIRROR


def test_host_mirror_sources_list_comes_first(tmp_path: Path) -> None:
    etc = _etc_apt(
        tmp_path, "deb http://first.example/debian bookworm main\n", {"b.sources": DEB822}
    )
    assert host_mirror("bookworm", etc, environ={}) == "http://first.example/debian"


def test_host_mirror_env_override(tmp_path: Path) -> None:
    etc = _etc_apt(tmp_path, parts={"b.sources": DEB822})
    env = {apt_sources.MIRROR_ENV: "http://override.example/debian"}
    assert host_mirror("bookworm", etc, environ=env) == "http://override.example/debian"


def test_host_mirror_missing_says_set_env(tmp_path: Path) -> None:
    etc = _etc_apt(tmp_path, "deb http://x.example/debian bookworm-updates main\n")
    with pytest.raises(AptSourceError, match="FIREBOX_APT_MIRROR"):
        host_mirror("bookworm", etc, environ={})
    with pytest.raises(ImageBuildError):  # callers may catch the general error
        host_mirror("bookworm", tmp_path / "nonexistent", environ={})


def test_host_codename(tmp_path: Path) -> None:
    osr = tmp_path / "os-release"
    osr.write_text("ID=debian\nVERSION_CODENAME=bookworm\n")
    assert host_codename([osr], environ={}) == "bookworm"
    assert host_codename([osr], environ={apt_sources.CODENAME_ENV: "trixie"}) == "trixie"
    osr.write_text("ID=debian\n")
    with pytest.raises(AptSourceError, match="FIREBOX_APT_MIRROR"):
        host_codename([osr], environ={})


# --- recipe ------------------------------------------------------------------------------


def test_recipe_key_is_stable_and_order_insensitive() -> None:
    a = rootfs.make_recipe("base", "bookworm", MIRROR)
    b = rootfs.make_recipe("base", "bookworm", MIRROR + "/")
    assert a == b and a.key == b.key
    assert len(a.key) == 16 and int(a.key, 16) >= 0
    assert a.name == f"base-{a.key}"
    assert rootfs.make_recipe("base", "bookworm", MIRROR).key == a.key


def test_recipe_key_ignores_package_order(monkeypatch: pytest.MonkeyPatch) -> None:
    a = rootfs.make_recipe("base", "bookworm", MIRROR)
    tpl = rootfs.TEMPLATES["base"]
    reordered = dataclasses.replace(tpl, packages=tuple(reversed(tpl.packages)))
    monkeypatch.setitem(rootfs.TEMPLATES, "base", reordered)
    assert rootfs.make_recipe("base", "bookworm", MIRROR).key == a.key


def test_recipe_key_changes_with_packages_and_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    base = rootfs.make_recipe("base", "bookworm", MIRROR)
    tpl = rootfs.TEMPLATES["base"]
    monkeypatch.setitem(
        rootfs.TEMPLATES, "base", dataclasses.replace(tpl, packages=(*tpl.packages, "jq"))
    )
    more = rootfs.make_recipe("base", "bookworm", MIRROR)
    assert "jq" in more.packages and more.key != base.key
    monkeypatch.setitem(rootfs.TEMPLATES, "base", tpl)
    assert rootfs.make_recipe("base", "trixie", MIRROR).key != base.key
    assert dataclasses.replace(base, recipe_version=base.recipe_version + 1).key != base.key
    assert dataclasses.replace(base, post_hash="0" * 64).key != base.key


def test_post_hash_is_the_source_of_the_post_steps() -> None:
    assert post.source_hash() == post.source_hash()
    assert rootfs.make_recipe("base", "bookworm", MIRROR).post_hash == post.source_hash()


def test_unknown_template_lists_known() -> None:
    with pytest.raises(ValueError, match="known templates: base, python"):
        images.image_path("nope")
    with pytest.raises(ValueError, match="base, python"):
        images.build_image("nope")


PYTHON_EXTRAS = {
    "ipython3",
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-pip",
    "fonts-dejavu-core",
    "nodejs",
    "node-typescript",
    "python-is-python3",
    "git",
    "sudo",
}


def test_python_template_is_base_plus_extras() -> None:
    assert images.known_templates() == ("base", "python")
    assert images.DEFAULT_TEMPLATE == "python"
    base = rootfs.make_recipe("base", "bookworm", MIRROR)
    python = rootfs.make_recipe("python", "bookworm", MIRROR)
    assert set(python.packages) == set(base.packages) | PYTHON_EXTRAS
    assert not PYTHON_EXTRAS & set(base.packages)  # base stays small
    assert python.packages == tuple(sorted(python.packages))
    # One recipe: same release, mirror, variant and post steps; only the lists differ.
    assert dataclasses.replace(python, template="base", packages=base.packages) == base


def test_templates_have_distinct_keys_and_names() -> None:
    recipes = [rootfs.make_recipe(t, "bookworm", MIRROR) for t in images.known_templates()]
    assert len({r.key for r in recipes}) == len(recipes)
    assert [r.name.split("-")[0] for r in recipes] == list(images.known_templates())
    # Even with identical package lists the name is part of the key: no shared cache entry.
    same = [dataclasses.replace(r, packages=("python3",)) for r in recipes]
    assert len({r.key for r in same}) == len(same)


def test_python_template_debootstrap_includes_extras() -> None:
    recipe = rootfs.make_recipe("python", "bookworm", MIRROR)
    cmd = rootfs.debootstrap_command(recipe, Path("/t"))
    included = set(cmd[2].removeprefix("--include=").split(","))
    assert cmd[:2] == ["debootstrap", "--variant=minbase"] and cmd[2].startswith("--include=")
    base = {"python3", "ca-certificates", "procps", "iproute2", "curl"}
    assert included == base | PYTHON_EXTRAS
    assert cmd[3:] == ["bookworm", "/t", MIRROR]


def test_debootstrap_command() -> None:
    recipe = rootfs.make_recipe("base", "bookworm", MIRROR)
    assert rootfs.debootstrap_command(recipe, Path("/t")) == [
        "debootstrap",
        "--variant=minbase",
        "--include=ca-certificates,curl,iproute2,procps,python3",
        "bookworm",
        "/t",
        MIRROR,
    ]


# --- progress ----------------------------------------------------------------------------


def test_debootstrap_progress_is_coalesced() -> None:
    lines = ["I: Retrieving InRelease", "I: Retrieving Packages", "I: Validating Packages"]
    for i in range(60):
        lines += [f"I: Retrieving pkg{i} 1.0", f"I: Validating pkg{i} 1.0"]
    lines += [f"I: Extracting pkg{i}..." for i in range(30)]
    lines += ["I: Unpacking required packages..."]
    lines += [f"I: Unpacking pkg{i}..." for i in range(3)]
    lines += ["I: Configuring required packages...", "I: Configuring pkg1..."]
    lines += ["I: Unpacking the base system...", "I: Unpacking pkg7..."]
    lines += ["W: something odd", "some dpkg chatter", "I: Base system installed successfully."]
    out: list[str] = []
    reporter = rootfs.DebootstrapProgress(out.append)
    for line in lines:
        reporter.feed(line)
    reporter.finish()
    assert out == [
        "fetching package index",
        "retrieving packages (1)",
        "retrieving packages (25)",
        "retrieving packages (50)",
        "retrieving packages (60)",
        "extracting packages (1)",
        "extracting packages (25)",
        "extracting packages (30)",
        "unpacking required packages (1)",
        "unpacking required packages (3)",
        "configuring required packages (1)",
        "unpacking base packages (1)",
        "warning: something odd",
        "Base system installed successfully.",
    ]


# --- cache -------------------------------------------------------------------------------


def _recipe(**changes: Any) -> Recipe:
    return dataclasses.replace(rootfs.make_recipe("base", "bookworm", MIRROR), **changes)


def _fake_builder(calls: list[Path], hold: threading.Event | None = None) -> cache.Builder:
    """A builder that makes a tiny tree; with ``hold``, it first waits until that is set."""

    def build(target: Path, log: Path, progress: cache.Progress) -> None:
        calls.append(target)
        log.write_text("built\n")
        if hold is not None:
            hold.wait(60)
        (target / "etc").mkdir()
        (target / "etc" / "passwd").write_text("user:x:1000:1000::/home/user:/bin/bash\n")

    return build


def test_cache_builds_once_and_marks_completion(tmp_path: Path) -> None:
    recipe, calls = _recipe(), list[Path]()
    assert ready_rootfs(recipe, tmp_path) is None
    path = build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    assert path == tmp_path / recipe.name / "rootfs"
    assert ready_rootfs(recipe, tmp_path) == path
    marker = json.loads((tmp_path / recipe.name / "image.json").read_text())
    assert marker["key"] == recipe.key and marker["recipe"]["packages"] == list(recipe.packages)
    assert marker["size_bytes"] > 0 and "built_at" in marker
    assert (tmp_path / recipe.name / "build.log").read_text() == "built\n"
    assert oct((tmp_path / recipe.name).stat().st_mode & 0o777) == "0o755"
    # Second call is a cache hit; a changed recipe builds a new entry beside the old one.
    build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    assert len(calls) == 1
    other = _recipe(packages=(*recipe.packages, "curl"))
    build_cached(other, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    assert len(calls) == 2 and ready_rootfs(recipe, tmp_path) == path


def test_entry_without_marker_is_not_ready_and_gets_rebuilt(tmp_path: Path) -> None:
    recipe, calls = _recipe(), list[Path]()
    (tmp_path / recipe.name / "rootfs").mkdir(parents=True)  # e.g. a damaged entry
    assert ready_rootfs(recipe, tmp_path) is None
    build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    assert len(calls) == 1 and ready_rootfs(recipe, tmp_path) is not None
    assert list(tmp_path.glob(f".{recipe.name}.replaced-*"))  # moved aside, not deleted


def test_marker_for_other_key_is_not_ready(tmp_path: Path) -> None:
    recipe = _recipe()
    (tmp_path / recipe.name / "rootfs").mkdir(parents=True)
    (tmp_path / recipe.name / "image.json").write_text(json.dumps({"key": "something else"}))
    assert ready_rootfs(recipe, tmp_path) is None


def test_failed_build_leaves_nothing_complete_and_keeps_log(tmp_path: Path) -> None:
    recipe = _recipe()

    def broken(target: Path, log: Path, progress: cache.Progress) -> None:
        log.write_text("E: it broke\n")
        (target / "half").write_text("x")
        raise ImageBuildError("boom")

    with pytest.raises(ImageBuildError, match="boom"):
        build_cached(recipe, broken, root=tmp_path, progress=lambda m: None)
    assert ready_rootfs(recipe, tmp_path) is None
    assert not (tmp_path / recipe.name).exists()
    assert not list(tmp_path.glob(".*.tmp-*"))
    assert (tmp_path / f"{recipe.name}.build.log").read_text() == "E: it broke\n"


def test_stale_temp_dir_of_killed_build_is_removed(tmp_path: Path) -> None:
    recipe, calls = _recipe(), list[Path]()
    stale = tmp_path / f".{recipe.name}.tmp-dead"
    (stale / "rootfs").mkdir(parents=True)
    build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    assert not stale.exists() and len(calls) == 1


def test_force_rebuilds_and_keeps_old_tree(tmp_path: Path) -> None:
    recipe, calls = _recipe(), list[Path]()
    build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None)
    build_cached(recipe, _fake_builder(calls), root=tmp_path, progress=lambda m: None, force=True)
    assert len(calls) == 2 and ready_rootfs(recipe, tmp_path) is not None
    assert len(list(tmp_path.glob(f".{recipe.name}.replaced-*"))) == 1


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    recipe, calls = _recipe(), list[Path]()
    messages: list[str] = []
    results: list[Path] = []
    # The first builder holds its lock until the second has found it held: the two overlap
    # whatever the host's load.
    other_waits = threading.Event()

    def progress(message: str) -> None:
        messages.append(message)
        if "waiting for another build" in message:
            other_waits.set()

    def run() -> None:
        builder = _fake_builder(calls, hold=other_waits)
        results.append(build_cached(recipe, builder, root=tmp_path, progress=progress))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    assert any("waiting for another build" in m for m in messages)


def test_lock_wait_has_a_deadline(tmp_path: Path) -> None:
    import fcntl

    recipe = _recipe()
    with open(tmp_path / f"{recipe.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ImageBuildError, match="held"):
            build_cached(
                recipe, _fake_builder([]), root=tmp_path, progress=lambda m: None, lock_timeout=1
            )


def test_mounts_under_parses_mountinfo(tmp_path: Path) -> None:
    top = os.path.realpath(tmp_path)
    info = (
        f"1 0 8:1 / / rw - ext4 /dev/vda rw\n"
        f"2 1 0:5 / {top}/a/rootfs/proc rw - proc proc rw\n"
        f"3 1 0:6 / {top}/a/rootfs/dev rw - devtmpfs udev rw\n"
        f"4 1 0:7 / {top}/a/rootfs/dev/pts rw - devpts devpts rw\n"
        f"5 1 0:8 / {top}/ab rw - tmpfs t rw\n"
        f"6 1 0:9 / {top}/a/with\\040space rw - tmpfs t rw\n"
    )
    found = mounts_under(tmp_path / "a", info)
    assert found[0] == f"{top}/a/rootfs/dev/pts"
    assert set(found) == {
        f"{top}/a/rootfs/proc",
        f"{top}/a/rootfs/dev",
        f"{top}/a/rootfs/dev/pts",
        f"{top}/a/with space",
    }


# --- post steps --------------------------------------------------------------------------


def test_post_steps_refuse_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "host-hostname"
    outside.write_text("host\n")
    (root / "etc/hostname").symlink_to(outside)
    with pytest.raises(ImageBuildError, match="outside"):
        post.write_hostname(root)
    assert outside.read_text() == "host\n"


def test_matplotlibrc_replaces_debians_interactive_backend(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    rc = root / "etc/matplotlibrc"
    rc.write_text("## comments\nbackend: TkAgg\n" + "#x: y\n" * 1000)  # as Debian ships it
    rc.chmod(0o600)
    post.write_matplotlibrc(root)
    lines = rc.read_text().splitlines()
    active = [line for line in lines if line.strip() and not line.startswith("#")]
    assert active == ["backend: Agg"]
    assert oct(rc.stat().st_mode & 0o7777) == "0o644"


def test_matplotlibrc_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "host-file"
    outside.write_text("host\n")
    (root / "etc/matplotlibrc").symlink_to(outside)
    with pytest.raises(ImageBuildError, match="outside"):
        post.write_matplotlibrc(root)
    assert outside.read_text() == "host\n"


def test_post_steps_refuse_uid_clash(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("someone:x:1000:1000::/home/someone:/bin/sh\n")
    with pytest.raises(ImageBuildError, match="1000"):
        post.add_user(root)
