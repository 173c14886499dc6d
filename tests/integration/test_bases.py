"""Bases of custom templates for real: OCI images pulled from a registry on loopback (Debian's
docker-registry, tests/registry.py) with skopeo and unpacked with umoci, adapted and cached by
digest; the adaptation's checks on trees it must refuse; the Debian base of the host's release.

Every request goes to 127.0.0.1; the one exception is the Debian base, which is the ``base``
template's image (built from the host's configured mirror, as the image build tests do).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import images
from firebox.images import bases, cache, post
from firebox.images.adapt import MIN_PYTHON, adapt, host_arch
from firebox.images.apt_sources import AptSourceError, host_codename
from firebox.images.errors import ImageBuildError
from tests.registry import Layout, Registry, htpasswd_line, missing_tools, push_tree, running

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unpacked files keep their owners)"),
    pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools())),
]

MARKER = "firebox-test-marker"
CREDS = ("tester", "not-a-real-secret")
_ELF_MACHINE = {"amd64": 62, "arm64": 183}


def _fake_python(
    root: Path, version: str = "3.11", arch: str | None = None, prefix: str = "usr"
) -> None:
    """A python3 that the checks take for real: an ELF header for ``arch`` named pythonX.Y, a
    standard library beside it. Never run, as no base's Python is."""
    bindir = root / prefix / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    machine = _ELF_MACHINE[arch or host_arch()]
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + (2).to_bytes(2, "little")
        + machine.to_bytes(2, "little")
    )
    (bindir / f"python{version}").write_bytes(header + bytes(44))
    (bindir / f"python{version}").chmod(0o755)
    (bindir / "python3").symlink_to(f"python{version}")
    (root / prefix / "lib" / f"python{version}").mkdir(parents=True)
    (root / prefix / "lib" / f"python{version}" / "os.py").write_text("# stdlib\n")


def tiny_tree(path: Path, *, python: bool = True, marker: str = "tiny") -> Path:
    """A few files an image needs to pass the checks (not to run a sandbox)."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (path / "etc/group").write_text("root:x:0:\n")
    (path / MARKER).write_text(marker)
    (path / "bin").mkdir()
    (path / "bin/bash").write_bytes(b"\x7fELF")  # checked for, never run
    if python:
        _fake_python(path)
    return path


def _marker_layer(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / MARKER).write_text(text)
    return path


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_tree() -> Path:
    """The real ``base`` image tree (python3, Debian's minbase), from the host's image cache."""
    return images.build_image("base", progress=lambda m: print(f"[image] {m}", file=sys.stderr))


@pytest.fixture(scope="module")
def oci_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of its own for the pulled bases (hundreds of MB: removed at the end)."""
    path = tmp_path_factory.mktemp("images")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def oci_cache(oci_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(cache.IMAGE_DIR_ENV, str(oci_dir))
    return oci_dir


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if htpasswd_line(*CREDS) is None:
        pytest.skip("no bcrypt in this Python (neither the bcrypt module nor crypt's)")
    reg = Registry(tmp_path_factory.mktemp("auth-registry"), credentials=CREDS).start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, base_tree: Path) -> Layout:
    """Test images: ``base`` is the real base tree as one layer; tests add theirs on top."""
    lay = Layout(tmp_path_factory.mktemp("layout") / "oci")
    started = time.monotonic()
    lay.insert(lay.new("empty"), base_tree, "base")
    print(f"[layout] base tree as a layer in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return lay


# --- pulling -------------------------------------------------------------------------------


def test_pull_adapts_caches_by_digest_and_follows_the_tag(
    registry: Registry, layout: Layout, oci_cache: Path, tmp_path: Path
) -> None:
    v1 = layout.insert("base", _marker_layer(tmp_path / "v1", "v1"), "v1")
    digest = layout.push(v1, registry.addr, "sbx/base", "latest")
    ref = f"{registry.addr}/sbx/base:latest"

    cold: list[str] = []
    started = time.monotonic()
    tree = bases.oci_base(ref, cold.append, insecure_loopback=True)
    cold_s = time.monotonic() - started
    assert (tree / MARKER).read_text() == "v1"
    assert "user:x:1000:1000::/home/user:/bin/bash" in (tree / "etc/passwd").read_text()
    assert (tree / "home/user").stat().st_uid == post.UID
    assert (tree / "opt/firebox/lib").is_dir()
    assert os.path.realpath(tree / "usr/bin/python3").startswith(str(tree))
    assert (tree / "etc/shadow").stat().st_uid == 0  # owners as the layers say, not ours
    source = json.loads((tree.parent / "oci.json").read_text())
    assert source["digest"] == digest and source["config"]["architecture"] == host_arch()
    assert any(m.startswith("pulling") for m in cold)

    # the same digest: a cache hit, nothing pulled, the entry untouched
    stamp = (tree.parent / cache.MARKER).stat().st_mtime_ns
    warm: list[str] = []
    started = time.monotonic()
    assert bases.oci_base(ref, warm.append, insecure_loopback=True) == tree
    warm_s = time.monotonic() - started
    assert not any(m.startswith("pulling") for m in warm) and "cached" in warm[-1]
    assert (tree.parent / cache.MARKER).stat().st_mtime_ns == stamp
    print(
        f"[oci] real base tree: cold pull+unpack {cold_s:.1f}s, warm {warm_s:.2f}s", file=sys.stderr
    )

    # pinned by digest, the cache answers without the registry (this address has none)
    pinned: list[str] = []
    assert (
        bases.oci_base(f"127.0.0.1:1/sbx/base@{digest}", pinned.append, insecure_loopback=True)
        == tree
    )
    assert pinned == [f"127.0.0.1:1/sbx/base@{digest} is cached"]

    # the tag moves: a new digest, a new tree; the old one stays for sandboxes using it
    v2 = layout.insert("base", _marker_layer(tmp_path / "v2", "v2"), "v2")
    assert layout.push(v2, registry.addr, "sbx/base", "latest") != digest
    moved = bases.oci_base(ref, insecure_loopback=True)
    assert moved != tree and (moved / MARKER).read_text() == "v2"
    assert (tree / MARKER).read_text() == "v1"


def test_pull_with_credentials(auth_registry: Registry, oci_cache: Path, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "oci")
    lay.insert(lay.new("empty"), tiny_tree(tmp_path / "tree", marker="private"), "t")
    lay.push("t", auth_registry.addr, "team/private", "1", creds=CREDS)
    ref = f"{auth_registry.addr}/team/private:1"

    with pytest.raises(ImageBuildError, match="refused access to team/private"):
        bases.oci_base(ref, insecure_loopback=True)  # anonymous, never the host's stored logins
    with pytest.raises(ImageBuildError, match="refused access"):
        bases.oci_base(ref, username=CREDS[0], password="wrong", insecure_loopback=True)
    messages: list[str] = []
    tree = bases.oci_base(
        ref, messages.append, username=CREDS[0], password=CREDS[1], insecure_loopback=True
    )
    assert (tree / MARKER).read_text() == "private"
    # the password is in no log, message or file the entry keeps
    kept = [p for p in tree.parent.iterdir() if p.is_file()]
    assert all(CREDS[1] not in p.read_text(errors="replace") for p in kept)
    assert all(CREDS[1] not in m for m in messages)


def test_unknown_images_and_bad_references_say_what_to_fix(
    registry: Registry, oci_cache: Path
) -> None:
    with pytest.raises(ImageBuildError, match="does not exist there"):
        bases.oci_base(f"{registry.addr}/no/such:image", insecure_loopback=True)
    with pytest.raises(ImageBuildError, match="could not be reached"):
        bases.oci_base("127.0.0.1:1/some/image:1", insecure_loopback=True)
    with pytest.raises(ImageBuildError, match="not an image reference"):
        bases.oci_base("Not/An:Image:ref")
    with pytest.raises(ImageBuildError, match="loopback"):
        bases.oci_base("registry.example/team/image:1", insecure_loopback=True)  # before any I/O
    with pytest.raises(ImageBuildError, match="both a username and a password"):
        bases.oci_base(f"{registry.addr}/x:1", username="u", insecure_loopback=True)
    with pytest.raises(ImageBuildError, match="plain HTTP"):
        bases.oci_base(f"{registry.addr}/no/such:image")  # TLS is required unless asked


def test_tree_without_python_is_refused(
    registry: Registry, oci_cache: Path, tmp_path: Path
) -> None:

    push_tree(tiny_tree(tmp_path / "tree", python=False), registry.addr, "sbx/nopython", "1")
    with pytest.raises(ImageBuildError, match="no Python 3 at /usr/bin/python3"):
        bases.oci_base(f"{registry.addr}/sbx/nopython:1", insecure_loopback=True)
    assert not [e for e in bases.list_bases(oci_cache) if "nopython" in e.source]
    assert not list(oci_cache.glob(".oci-*.tmp-*"))  # the failed build left nothing


def test_foreign_architecture_is_refused_before_pulling(
    registry: Registry, oci_cache: Path, tmp_path: Path
) -> None:
    foreign = "arm64" if host_arch() != "arm64" else "amd64"
    lay = Layout(tmp_path / "oci")
    lay.insert(lay.new("empty", arch=foreign), tiny_tree(tmp_path / "tree"), "one")
    lay.push("one", registry.addr, "sbx/foreign", "single")
    messages: list[str] = []
    with pytest.raises(ImageBuildError, match=f"linux/{foreign}, but this host runs"):
        bases.oci_base(
            f"{registry.addr}/sbx/foreign:single", messages.append, insecure_loopback=True
        )
    assert not any(m.startswith("pulling") for m in messages)
    # a multi-platform image without this host's platform
    lay.index("list", {f"linux/{foreign}": "one"})
    lay.push("list", registry.addr, "sbx/foreign", "list")
    with pytest.raises(ImageBuildError, match=f"no linux/{host_arch()} variant"):
        bases.oci_base(f"{registry.addr}/sbx/foreign:list", insecure_loopback=True)


def test_device_nodes_and_set_id_bits_do_not_reach_the_host(
    registry: Registry, oci_cache: Path, tmp_path: Path
) -> None:

    tree = tiny_tree(tmp_path / "tree", marker="doors")
    (tree / "usr/bin/su-ish").write_text("#!/bin/sh\n")
    (tree / "usr/bin/su-ish").chmod(0o4755)
    (tree / "dev").mkdir()
    os.mknod(tree / "dev/mem-ish", 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    push_tree(tree, registry.addr, "sbx/doors", "1")
    pulled = bases.oci_base(f"{registry.addr}/sbx/doors:1", insecure_loopback=True)
    assert stat.S_IMODE((pulled / "usr/bin/su-ish").stat().st_mode) == 0o755
    assert not os.path.lexists(pulled / "dev/mem-ish")
    assert "removed device" in (pulled.parent / "build.log").read_text()
    # what a container runtime would have made, and the backends mount over
    for point in ("dev", "proc", "sys", "run", "root", "tmp", "opt/firebox/lib"):
        assert (pulled / point).is_dir()


def test_list_hold_and_prune(registry: Registry, oci_cache: Path, tmp_path: Path) -> None:

    trees = {}
    for name in ("keep", "held", "gone"):
        push_tree(tiny_tree(tmp_path / name, marker=name), registry.addr, f"sbx/{name}", "1")
        trees[name] = bases.oci_base(f"{registry.addr}/sbx/{name}:1", insecure_loopback=True)
    listed = {e.name: e for e in bases.list_bases()}
    for name, tree in trees.items():
        entry = listed[tree.parent.name]
        assert entry.kind == "oci" and entry.source.endswith(f"sbx/{name}:1")
        assert entry.size_bytes > 0 and entry.rootfs == tree
    assert bases.hold_base(trees["held"])
    removed = bases.prune(keep=[str(trees["keep"])])
    assert trees["gone"].parent.name in removed
    assert trees["keep"].is_dir() and trees["held"].is_dir() and not trees["gone"].exists()


# --- the adaptation on trees no registry is needed for -------------------------------------


def test_adapt_refuses_an_old_python(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "root", python=False)
    _fake_python(root, "3.9")
    with pytest.raises(ImageBuildError, match=r"Python is 3\.9 .*needs\s+Python 3\.10"):
        adapt(root)
    assert MIN_PYTHON == (3, 10)


def test_adapt_refuses_a_python_for_another_architecture(tmp_path: Path) -> None:
    foreign = "arm64" if host_arch() != "arm64" else "amd64"
    root = tiny_tree(tmp_path / "root", python=False)
    _fake_python(root, arch=foreign)
    with pytest.raises(ImageBuildError, match=f"built for {foreign}"):
        adapt(root)


def test_adapt_refuses_uid_1000_under_another_name(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "root")
    with open(root / "etc/passwd", "a") as fh:
        fh.write("ubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n")
    with pytest.raises(ImageBuildError, match="uid 1000 as 'ubuntu'"):
        adapt(root)


def test_adapt_links_a_python_in_usr_local(tmp_path: Path) -> None:
    root = tiny_tree(tmp_path / "root", python=False)
    _fake_python(root, "3.12", prefix="usr/local")
    found = adapt(root)
    assert found.version == (3, 12) and found.path == "/usr/local/bin/python3.12"
    assert os.readlink(root / "usr/bin/python3") == "/usr/local/bin/python3"


def test_adapt_on_a_hostile_tree_writes_only_inside_it(tmp_path: Path) -> None:
    """No shadow, skel or sudoers.d; /home an absolute link; links planted where firebox
    writes, pointing at the host: everything lands inside the tree, nothing outside."""
    host = tmp_path / "host"
    (host / "pylib").mkdir(parents=True)
    (host / "pylib/EXTERNALLY-MANAGED").write_text("host's\n")
    root = tiny_tree(tmp_path / "root")
    (root / "var/home/user").mkdir(parents=True)
    (root / "home").symlink_to("/var/home")  # inside the tree; on the host, elsewhere
    (root / "var/home/user/.bashrc").symlink_to(host / "bashrc")  # dangling, to the host
    (root / "etc/skel").mkdir()
    (root / "etc/skel/.bashrc").write_text("echo owned\n")
    (root / "usr/lib/python3.99").symlink_to(host / "pylib")
    adapt(root)
    assert not (host / "bashrc").exists()
    assert (host / "pylib/EXTERNALLY-MANAGED").read_text() == "host's\n"
    assert (root / "var/home/user").stat().st_uid == post.UID
    assert "user:x:1000" in (root / "etc/passwd").read_text()
    assert not (root / "etc/shadow").exists() and not (root / "etc/sudoers.d").exists()


# --- Debian ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_debian_base_of_the_hosts_release_is_the_base_image(base_tree: Path) -> None:
    try:
        codename = host_codename()
        bases.resolve_release(codename)
    except AptSourceError as exc:
        pytest.skip(f"no Debian mirror configured here: {exc}")
    # the host's release is listed in its apt sources: no network, and the base template's
    # recipe, so the tree the image build made (base_tree) is the one returned
    assert bases.debian_base(codename) == base_tree
    assert bases.debian_base(codename) == images.image_path("base")
