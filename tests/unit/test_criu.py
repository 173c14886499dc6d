"""confine/criu.py: the CRIU probe against a fake ``criu`` on PATH (a shell script that logs
its arguments), and once against the real one where it is installed."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from firebox.confine import criu
from firebox.images.cache import IMAGE_DIR_ENV

VDSO_FAILURE = """\
echo 'Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds' >&2
echo 'Error (criu/vdso.c:613): vdso: Failed to fill self vdso symtable' >&2
echo 'Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.' >&2
echo 'Error (criu/crtools.c:260): Could not initialize kernel features detection.' >&2
exit 1
"""
PASSING = """\
if [ "$2" = --feature ]; then echo "$3 is supported"; else echo 'Looks good.'; fi
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(criu, "_memo", None)
    monkeypatch.setenv(IMAGE_DIR_ENV, str(tmp_path / "images"))


class FakeCriu:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.log = tmp_path / "criu.log"
        self.log.touch()
        monkeypatch.setenv("PATH", f"{self.bin}:/usr/bin:/bin")
        monkeypatch.setattr(os, "geteuid", lambda: 0)

    def install(self, body: str) -> None:
        script = self.bin / "criu"
        script.write_text(
            f'#!/bin/sh\necho "$*" >> {self.log}\n'
            'if [ "$1" = --version ]; then echo "Version: 3.17.1"; exit 0; fi\n' + body
        )
        script.chmod(0o755)

    def checks(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("check")]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCriu:
    return FakeCriu(tmp_path, monkeypatch)


def test_no_criu_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    v = criu.verdict()
    assert not v.usable and v.version is None
    assert "apt-get install criu" in v.reason and criu.FALLBACK in v.reason


def test_failing_check_names_the_cause(fake: FakeCriu) -> None:
    fake.install(VDSO_FAILURE)
    v = criu.verdict()
    assert not v.usable and v.version == "3.17.1"
    assert "criu check failed here: vdso: Unexpected rt vDSO area bounds" in v.reason
    assert v.reason.endswith(criu.FALLBACK)
    assert fake.checks() == ["check"]  # no feature is asked once the plain check fails
    line = criu.pause_line(v)
    assert line.startswith("freeze in the cgroup — ") and criu.FALLBACK not in line


def test_passing_check_and_features_is_usable(fake: FakeCriu) -> None:
    fake.install(PASSING)
    v = criu.verdict()
    assert v.usable and v.version == "3.17.1"
    assert fake.checks() == ["check", *(f"check --feature {f}" for f in criu.FEATURES)]
    assert criu.pause_line(v) == "freeze in the cgroup (criu 3.17.1 passes its checks here)"


def test_a_missing_feature_is_not_usable(fake: FakeCriu) -> None:
    fake.install('[ "$3" = seccomp_filters ] && exit 1\n' + PASSING)
    v = criu.verdict()
    assert not v.usable
    assert "criu check --feature seccomp_filters failed here" in v.reason


def test_not_root_is_not_usable_and_not_cached(
    fake: FakeCriu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.install(PASSING)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    v = criu.verdict()
    assert not v.usable and "root" in v.reason
    assert fake.checks() == []
    assert not (tmp_path / "images" / "probes" / "criu.json").exists()


def test_cached_in_memory_and_on_disk(
    fake: FakeCriu, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.install(VDSO_FAILURE)
    first = criu.verdict()
    assert criu.verdict() == first  # in memory
    monkeypatch.setattr(criu, "_memo", None)
    assert criu.verdict() == first  # from disk
    assert len(fake.checks()) == 1
    probes = tmp_path / "images" / "probes"
    assert [p.name for p in probes.iterdir()] == ["criu.json"]  # no temporary file left
    assert json.loads((probes / "criu.json").read_text())["reason"] == first.reason


@pytest.mark.parametrize("change", ["criu", "kernel"])
def test_a_changed_criu_or_kernel_probes_again(
    fake: FakeCriu, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    fake.install(VDSO_FAILURE)
    assert not criu.verdict().usable
    if change == "criu":
        fake.install(PASSING)  # another binary: other size and mtime
    else:
        monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(release="9.9.9-test"))
    again = criu.verdict()
    assert len(fake.checks()) > 1
    assert again.usable == (change == "criu")


def test_a_hanging_check_times_out(fake: FakeCriu, monkeypatch: pytest.MonkeyPatch) -> None:
    # not exec'd: the sleep is a child holding the output pipe, as criu's own children would
    fake.install("sleep 30\n")
    monkeypatch.setattr(criu, "CHECK_TIMEOUT", 0.5)
    start = time.monotonic()
    v = criu.verdict()
    assert time.monotonic() - start < 5
    assert not v.usable and "did not finish within 0.5 s" in v.reason


@pytest.mark.skipif(shutil.which("criu") is None, reason="criu is not installed")
def test_the_real_probe_gives_a_verdict() -> None:
    start = time.monotonic()
    v = criu.probe()
    assert time.monotonic() - start < 60
    assert v.reason
