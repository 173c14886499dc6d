"""cgroups/weight.py: a set's CPU and I/O weights (the warm pool's background priority), on
both versions' layouts, against fake trees in a temp dir as tests/unit/test_cgroups.py does."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from firebox.confine import cgroups
from firebox.confine.cgroups import CgroupError, Limits, fs
from firebox.confine.cgroups.v1 import V1Set
from firebox.confine.cgroups.weight import current

MiB = 1 << 20

# What a new cgroup's files say, as far as a create and the weights touch them.
V2_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "cpu io memory pids",
    "cgroup.subtree_control": "",
    "memory.max": "max\n",
    "pids.max": "max\n",
    "cpu.max": "max 100000\n",
    "cpu.weight": "100\n",
}
V2_IO = {"io.weight": "default 100\n", "io.bfq.weight": "default 100\n8:0 300\n"}
V1_FILES = {
    "memory": {"cgroup.procs": "", "memory.limit_in_bytes": "9223372036854771712\n"},
    "pids": {"cgroup.procs": "", "pids.max": "max\n"},
    "cpu": {
        "cgroup.procs": "",
        "cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpu.shares": "1024\n",
    },
}


def populate(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).write_text(text)


def fake_cgroupfs(monkeypatch: pytest.MonkeyPatch, root: Path, io: bool = False) -> None:
    """A new directory under ``root`` comes with its hierarchy's interface files (v2's, or
    those of the v1 controller its top directory is named after); v2's io files with ``io``,
    as when the io controller is enabled for the parent."""

    def mkdir(path: Path) -> None:
        os.mkdir(path)
        top = path.relative_to(root).parts[0]
        populate(path, {**V2_FILES, **(V2_IO if io else {})} if top == "v2" else V1_FILES[top])

    monkeypatch.setattr(fs, "mkdir", mkdir)
    monkeypatch.setattr(fs, "rmdir", shutil.rmtree)
    monkeypatch.delenv(cgroups.PARENT_ENV, raising=False)


def v2_host(root: Path) -> cgroups.CgroupHost:
    (root / "v2").mkdir()
    populate(root / "v2", {"cgroup.controllers": "cpu io memory pids"})
    populate(root / "v2", {"cgroup.subtree_control": ""})
    controllers = frozenset({"cpu", "io", "memory", "pids"})
    return cgroups.CgroupHost(2, controllers, dict.fromkeys(controllers, root / "v2"))


def v1_host(root: Path) -> cgroups.CgroupHost:
    mounts = {"memory": root / "memory", "pids": root / "pids", "cpu": root / "cpu"}
    for d in mounts.values():
        d.mkdir()
    mounts["cpuacct"] = mounts["cpu"]  # co-mounted, as most v1 hosts have them
    mounts["blkio"] = root / "blkio"  # mounted, but no hierarchy a sandbox joins (weight.py)
    return cgroups.CgroupHost(1, frozenset(mounts), mounts)


def weights(cg: cgroups.CgroupSet) -> dict[str, str]:
    """Each weight file's value for every device (v2's io files: their ``default`` line)."""
    return {path.name: current(path) for path, _, _ in cgroups.weight_files(cg)}


# --- v2 -----------------------------------------------------------------------------------------


def test_v2_cpu_and_io_weights_go_down_and_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_cgroupfs(monkeypatch, tmp_path, io=True)
    cg = cgroups.create("sbx_1", Limits(64 * MiB, 20, 1.0), host=v2_host(tmp_path))
    d = tmp_path / "v2" / "firebox" / "sbx_1"
    assert [p for p, _, _ in cgroups.weight_files(cg)] == [
        d / "cpu.weight", d / "io.weight", d / "io.bfq.weight"
    ]  # fmt: skip
    cgroups.set_weight(cg, background=True)
    assert weights(cg) == {"cpu.weight": "1", "io.weight": "1", "io.bfq.weight": "1"}
    cgroups.set_weight(cg, background=False)
    assert weights(cg) == {"cpu.weight": "100", "io.weight": "100", "io.bfq.weight": "100"}


def test_v2_without_the_io_controller_weighs_the_cpu_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_cgroupfs(monkeypatch, tmp_path, io=False)
    cg = cgroups.create("sbx_2", Limits(64 * MiB, 20, 1.0), host=v2_host(tmp_path))
    cgroups.set_weight(cg, background=True)
    assert weights(cg) == {"cpu.weight": "1"}
    assert not (cg.paths[0] / "io.weight").exists()  # never made up: no O_CREAT


def test_a_weight_already_right_is_not_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """New sets have the normal weights: raising one never pooled writes nothing; and v2's
    io files, which say ``default 100`` then per-device lines, read as their default."""
    fake_cgroupfs(monkeypatch, tmp_path, io=True)
    cg = cgroups.create("sbx_3", Limits(64 * MiB, 20, 1.0), host=v2_host(tmp_path))
    written: list[Path] = []
    monkeypatch.setattr(fs, "write", lambda path, value: written.append(path))
    cgroups.set_weight(cg, background=False)
    assert written == []


# --- v1 -----------------------------------------------------------------------------------------


def test_v1_cpu_shares_go_down_and_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cgroupfs(monkeypatch, tmp_path)
    cg = cgroups.create("sbx_1", Limits(64 * MiB, 20, 0.5), host=v1_host(tmp_path))
    cpu = tmp_path / "cpu" / "firebox" / "sbx_1"
    assert [p for p, _, _ in cgroups.weight_files(cg)] == [cpu / "cpu.shares"]
    cgroups.set_weight(cg, background=True)
    assert (cpu / "cpu.shares").read_text() == "2"
    assert not (tmp_path / "blkio" / "firebox").exists()  # no blkio cgroup is made for it
    cgroups.set_weight(cg, background=False)
    assert (cpu / "cpu.shares").read_text() == "1024"


def test_v1_blkio_weights_where_the_set_has_a_blkio_cgroup(tmp_path: Path) -> None:
    cpu, blkio = tmp_path / "cpu", tmp_path / "blkio"
    for d in (cpu, blkio):
        d.mkdir()
    populate(cpu, {"cpu.shares": "1024\n"})
    populate(blkio, {"blkio.bfq.weight": "100\n"})  # BFQ's; CFQ's blkio.weight is absent
    cg = V1Set("sbx_4", {"cpu": cpu, "blkio": blkio})
    cgroups.set_weight(cg, background=True)
    assert weights(cg) == {"cpu.shares": "2", "blkio.bfq.weight": "1"}
    assert not (blkio / "blkio.weight").exists()
    populate(blkio, {"blkio.weight": "500\n"})  # a CFQ kernel's (before 5.0)
    cgroups.set_weight(cg, background=False)
    assert weights(cg) == {"cpu.shares": "1024", "blkio.weight": "500", "blkio.bfq.weight": "100"}
    cgroups.set_weight(cg, background=True)
    assert weights(cg)["blkio.weight"] == "10"  # CFQ's least


# --- failures ---------------------------------------------------------------------------------


def test_every_weight_is_tried_before_a_failure_is_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A set being raised gets every weight the host takes, and the error names the one it
    refused; once that one is back to normal, raising again is no error."""
    fake_cgroupfs(monkeypatch, tmp_path, io=True)
    cg = cgroups.create("sbx_5", Limits(64 * MiB, 20, 1.0), host=v2_host(tmp_path))
    cgroups.set_weight(cg, background=True)
    real_write = fs.write

    def write(path: Path, value: object) -> None:
        if path.name == "io.weight":
            raise CgroupError(errno.EINVAL, f"writing {value!r} to {path}: Invalid argument")
        real_write(path, value)

    monkeypatch.setattr(fs, "write", write)
    with pytest.raises(CgroupError, match="io.weight"):
        cgroups.set_weight(cg, background=False)
    assert weights(cg) == {"cpu.weight": "100", "io.weight": "1", "io.bfq.weight": "100"}
    (cg.paths[0] / "io.weight").write_text("default 100\n")
    cgroups.set_weight(cg, background=False)  # nothing left to change
    with pytest.raises(CgroupError, match="io.weight"):
        cgroups.set_weight(cg, background=True)  # a host refusing to lower one says so


def test_a_removed_cgroup_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cgroupfs(monkeypatch, tmp_path)
    cg = cgroups.create("sbx_6", Limits(64 * MiB, 20, 1.0), host=v1_host(tmp_path))
    cg.destroy()
    with pytest.raises(CgroupError):
        cgroups.set_weight(cg, background=False)
