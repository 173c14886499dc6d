"""The bases' logic without registries, processes or root: image references, cache keys, what
a registry's refusal means, path lookup inside a tree, and which Debian release a name means.
What pulls, unpacks and adapts for real is tests/integration/test_bases.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from firebox.images import bases
from firebox.images._fs import resolve_in_tree
from firebox.images.errors import ImageBuildError
from firebox.images.oci_ref import OciKey, OciRef, explain, oci_key

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest"),
    [
        ("debian", "docker.io", "library/debian", None, None),
        ("debian:bookworm", "docker.io", "library/debian", "bookworm", None),
        ("team/app:1.2", "docker.io", "team/app", "1.2", None),
        ("ghcr.io/org/app", "ghcr.io", "org/app", None, None),
        ("localhost:5000/app:v1", "localhost:5000", "app", "v1", None),
        ("127.0.0.1:5000/a/b@" + DIGEST, "127.0.0.1:5000", "a/b", None, DIGEST),
        ("[::1]:5000/app:t@" + DIGEST, "[::1]:5000", "app", "t", DIGEST),
    ],
)
def test_references_are_normalised_as_skopeo_does(
    ref: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = OciRef.parse(ref)
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    "ref", ["", "UPPER/case", "a b", "-flag", "x:tag:more", "x@sha256:short", "x:" + "t" * 200]
)
def test_malformed_references_are_refused(ref: str) -> None:
    with pytest.raises(ImageBuildError, match="not an image reference"):
        OciRef.parse(ref)


@pytest.mark.parametrize(
    ("ref", "loopback"),
    [
        ("127.0.0.1:5000/a", True),
        ("127.1.2.3/a", True),
        ("[::1]:5000/a", True),
        ("localhost/a", True),
        ("localhost.example/a", False),
        ("10.0.0.1:5000/a", False),
        ("debian", False),
    ],
)
def test_only_loopback_registries_count_as_loopback(ref: str, loopback: bool) -> None:
    assert OciRef.parse(ref).loopback is loopback


def test_oci_key_names_the_digest_and_the_adaptation() -> None:
    key = oci_key(DIGEST, "amd64")
    assert key.name == f"oci-{key.key}" and key == oci_key(DIGEST, "amd64")
    assert oci_key("sha256:" + "cd" * 32, "amd64").key != key.key
    assert oci_key(DIGEST, "arm64").key != key.key
    assert OciKey(DIGEST, "amd64", "other post", key.adapt_hash).key != key.key
    assert key.as_dict()["kind"] == "oci"


@pytest.mark.parametrize(
    ("said", "meaning"),
    [
        ("reading manifest v1 in r/x: manifest unknown: manifest unknown", "does not exist"),
        ("reading manifest 1 in r/x: unauthorized: authentication required", "refused access"),
        ("requested access to the resource is denied", "refused access"),
        ("choosing image instance: no image found in image index for arch", "no linux/amd64"),
        ('Get "https://r/v2/": http: server gave HTTP response to HTTPS client', "plain HTTP"),
        # a port's digits are not a status code; the CI run that found this used port 44033
        (
            'pinging container registry 127.0.0.1:44033: Get "https://127.0.0.1:44033/v2/": '
            "http: server gave HTTP response to HTTPS client",
            "plain HTTP",
        ),
        ("received unexpected HTTP status: 401 Unauthorized", "refused access"),
        ("x509: certificate signed by unknown authority", "CA certificate"),
        ("dial tcp 127.0.0.1:1: connect: connection refused", "could not be reached"),
        ("dial tcp: lookup nowhere.invalid: no such host", "could not be reached"),
    ],
)
def test_skopeo_failures_are_explained(said: str, meaning: str) -> None:
    assert meaning in explain(said, OciRef.parse("r.example/x:1"), "amd64")


def test_lookup_inside_a_tree_never_leaves_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/home").mkdir(parents=True)
    (root / "usr/bin/python3.11").write_text("")
    (root / "usr/bin/python3").symlink_to("python3.11")
    (root / "bin").symlink_to("usr/bin")
    (root / "home").symlink_to("/var/home")  # absolute: the tree's /var/home, not the host's
    (root / "up").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    assert resolve_in_tree(root, "/bin/python3") == root / "usr/bin/python3.11"
    assert resolve_in_tree(root, "bin/python3", follow_last=False) == root / "usr/bin/python3"
    assert resolve_in_tree(root, "home/user/.bashrc") == root / "var/home/user/.bashrc"
    assert resolve_in_tree(root, "up/etc/passwd") == root / "etc/passwd"
    with pytest.raises(ImageBuildError, match="too many levels"):
        resolve_in_tree(root, "loop/x")


def _mirror(tmp_path: Path, suites: dict[str, str]) -> str:
    for suite, codename in suites.items():
        (tmp_path / "mirror/dists" / suite).mkdir(parents=True)
        (tmp_path / "mirror/dists" / suite / "Release").write_text(
            f"Origin: Debian\nSuite: {suite}\nCodename: {codename}\n"
        )
    return f"file://{tmp_path}/mirror"


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    """debootstrap's scripts directory, with the releases these tests name."""
    path = tmp_path / "scripts"
    path.mkdir()
    for name in ("bookworm", "trixie", "sid", "stable", "testing"):
        (path / name).write_text("")
    return path


def test_release_aliases_resolve_to_the_codename_the_mirror_serves(
    tmp_path: Path, scripts: Path
) -> None:
    mirror = _mirror(tmp_path, {"stable": "trixie", "trixie": "trixie"})
    env = {"FIREBOX_DEBIAN_CODENAME": "bookworm", "FIREBOX_APT_MIRROR": mirror}
    assert bases.resolve_release("stable", environ=env, scripts=scripts) == ("trixie", mirror)
    # the host's own release: taken from the configuration, the mirror not asked
    assert bases.resolve_release("bookworm", environ=env, scripts=scripts) == ("bookworm", mirror)
    # another release than the host's: the mirror says whether it has it
    assert bases.resolve_release("trixie", environ=env, scripts=scripts) == ("trixie", mirror)
    with pytest.raises(ImageBuildError, match="has no release 'sid'"):
        bases.resolve_release("sid", environ=env, scripts=scripts)
    with pytest.raises(ImageBuildError, match="has no release 'testing'"):
        bases.resolve_release("testing", environ=env, scripts=scripts)


def test_release_listed_in_the_apt_sources_needs_no_network(tmp_path: Path, scripts: Path) -> None:
    (tmp_path / "apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "apt/sources.list").write_text(
        "deb http://192.0.2.1/debian bookworm main\ndeb http://192.0.2.1/debian trixie main\n"
    )
    env = {"FIREBOX_DEBIAN_CODENAME": "bookworm"}
    got = bases.resolve_release("trixie", environ=env, etc_apt=tmp_path / "apt", scripts=scripts)
    assert got == ("trixie", "http://192.0.2.1/debian")  # 192.0.2.1 is never reached


def test_unknown_release_names_fail_before_any_network(tmp_path: Path) -> None:
    env = {"FIREBOX_DEBIAN_CODENAME": "bookworm", "FIREBOX_APT_MIRROR": "http://192.0.2.1/x"}
    with pytest.raises(ImageBuildError, match="knows no release 'bookwrom'"):
        bases.resolve_release("bookwrom", environ=env, scripts=tmp_path)
    with pytest.raises(ImageBuildError, match="not a Debian release name"):
        bases.resolve_release("../etc", environ=env)
