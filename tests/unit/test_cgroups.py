"""cgroups: both versions' logic against fake trees in a temp dir laid out like cgroupfs,
checking what gets written. Real limits on this host's cgroups are
tests/integration/test_cgroups.py."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from firebox.confine import cgroups
from firebox.confine.cgroups import CgroupError, Limits, fs

MiB = 1 << 20

# --- fake cgroupfs ----------------------------------------------------------------------------

V2_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": "cpu memory pids",
    "cgroup.subtree_control": "",
    "cgroup.kill": "",
    "memory.max": "max\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
    "pids.max": "max\n",
    "pids.events": "max 3\n",
    "cpu.max": "max 100000\n",
}
V1_FILES = {
    "memory": {
        "cgroup.procs": "",
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.failcnt": "4\n",
        "memory.memsw.failcnt": "5\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    },
    "pids": {"cgroup.procs": "", "pids.max": "max\n", "pids.events": "max 6\n"},
    "cpu": {"cgroup.procs": "", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n"},
}


def populate(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).write_text(text)


@pytest.fixture
def fake_fs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make mkdir/rmdir behave like cgroupfs under tmp_path: a new directory comes with the
    interface files of its hierarchy (v2, or the v1 controller named by its top directory)."""

    def mkdir(path: Path) -> None:
        os.mkdir(path)
        top = path.relative_to(tmp_path).parts[0]
        populate(path, V2_FILES if top == "v2" else V1_FILES[top])

    monkeypatch.setattr(fs, "mkdir", mkdir)
    monkeypatch.setattr(fs, "rmdir", shutil.rmtree)
    monkeypatch.delenv(cgroups.PARENT_ENV, raising=False)
    return tmp_path


def mountinfo(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def v2_host(tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids") -> Path:
    root = tmp_path / "v2"
    root.mkdir()
    populate(root, {"cgroup.controllers": controllers, "cgroup.subtree_control": ""})
    return mountinfo(
        tmp_path,
        [
            "22 1 0:21 / /proc rw,nosuid - proc proc rw",
            f"30 23 0:26 / {root} rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate",
        ],
    )


def v1_host(tmp_path: Path) -> Path:
    lines = [f"31 23 0:28 / {tmp_path / 'tmpfs'} rw - tmpfs tmpfs rw,mode=755"]
    for i, (top, opts) in enumerate(
        [("memory", "memory"), ("pids", "pids"), ("cpu", "cpu,cpuacct")]
    ):
        (tmp_path / top).mkdir()
        lines.append(f"{40 + i} 31 0:{30 + i} / {tmp_path / top} rw - cgroup cgroup rw,{opts}")
    # systemd's hybrid layout: an empty cgroup2 beside the v1 controllers.
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    lines.append(f"50 31 0:40 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw")
    return mountinfo(tmp_path, lines)


# --- detection --------------------------------------------------------------------------------


def test_detect_pure_v2(tmp_path: Path) -> None:
    host = cgroups.detect(v2_host(tmp_path))
    assert host.version == 2 and host.reason == "" and not host.missing()
    assert {"memory", "pids", "cpu", "io"} <= host.controllers
    assert set(host.mounts.values()) == {tmp_path / "v2"}


def test_detect_hybrid_uses_v1(tmp_path: Path) -> None:
    host = cgroups.detect(v1_host(tmp_path))
    assert host.version == 1 and host.reason == ""
    assert host.mounts["memory"] == tmp_path / "memory"
    assert host.mounts["cpu"] == host.mounts["cpuacct"] == tmp_path / "cpu"


def test_detect_v2_missing_controller_names_it(tmp_path: Path) -> None:
    host = cgroups.detect(v2_host(tmp_path, controllers="cpu memory io"))
    assert host.version == 2 and host.missing() == ["pids"]
    assert "pids" in host.reason
    with pytest.raises(CgroupError, match="pids"):
        cgroups.create("sbx", Limits(64 * MiB, 20, 1.0), host=host)


def test_detect_nothing_mounted(tmp_path: Path) -> None:
    host = cgroups.detect(mountinfo(tmp_path, ["22 1 0:21 / /proc rw - proc proc rw"]))
    assert host.version is None and "mount -t cgroup2" in host.reason
    assert cgroups.detect(tmp_path / "absent").version is None


def test_limits_are_validated() -> None:
    assert Limits(MiB, 1, 0.5).cpu_quota_us == 50_000
    for bad in [(0, 1, 1.0), (MiB, 0, 1.0), (MiB, 1, 0.001)]:
        with pytest.raises(ValueError):
            Limits(*bad)


@pytest.mark.parametrize("name", ["", "a/b", "..", ".x", "memory.max", "x" * 129])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        cgroups.create(name, Limits(MiB, 1, 1.0), host=cgroups.CgroupHost(None, frozenset()))


# --- v2 logic on a fake tree ------------------------------------------------------------------


def test_v2_create_writes_limits_and_enables_controllers(fake_fs: Path) -> None:
    host = cgroups.detect(v2_host(fake_fs))
    cg = cgroups.create("sbx_1", Limits(64 * MiB, 20, 1.5), host=host)
    root = fake_fs / "v2"
    d = root / "firebox" / "sbx_1"
    assert cg.version == 2 and cg.paths == [d]
    for level in (root, root / "firebox"):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (d / "memory.max").read_text() == str(64 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "20"
    assert (d / "cpu.max").read_text() == "150000 100000"

    cg.add(4242)
    assert (d / "cgroup.procs").read_text() == "4242"
    assert cg.memory_events() == {
        "low": 0, "high": 0, "max": 7, "oom": 2, "oom_kill": 1, "oom_group_kill": 0
    }  # fmt: skip
    assert cg.pids_events() == 3

    (d / "cgroup.procs").write_text("")  # the kernel empties it once everyone is dead
    cg.kill_all()
    assert (d / "cgroup.kill").read_text() == "1"
    cg.destroy()
    assert not d.exists() and (root / "firebox").is_dir()
    cg.destroy()  # idempotent


def test_v2_leaves_enabled_parents_alone_and_skips_absent_swap(
    fake_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = cgroups.detect(v2_host(fake_fs))
    root = fake_fs / "v2"
    # A delegated subtree: controllers already on at the root, which we must not rewrite.
    (root / "cgroup.subtree_control").write_text("cpu memory pids io\n")
    no_swap = {k: v for k, v in V2_FILES.items() if k != "memory.swap.max"}

    def mkdir(path: Path) -> None:
        os.mkdir(path)
        populate(path, no_swap)

    monkeypatch.setattr(fs, "mkdir", mkdir)
    monkeypatch.setenv(cgroups.PARENT_ENV, "sandboxes/firebox")
    cg = cgroups.create("sbx_2", Limits(MiB, 5, 0.25), host=host)
    assert cg.paths == [root / "sandboxes" / "firebox" / "sbx_2"]
    assert (root / "cgroup.subtree_control").read_text() == "cpu memory pids io\n"
    assert (root / "sandboxes" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert not (cg.paths[0] / "memory.swap.max").exists()
    assert (cg.paths[0] / "cpu.max").read_text() == "25000 100000"


def test_v2_busy_root_gets_an_actionable_error(
    fake_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = cgroups.detect(v2_host(fake_fs))
    real_write = fs.write

    def write(path: Path, value: object) -> None:
        if path.name == "cgroup.subtree_control":
            raise CgroupError(errno.EBUSY, f"writing to {path}: Device or resource busy")
        real_write(path, value)

    monkeypatch.setattr(fs, "write", write)
    with pytest.raises(CgroupError, match="holds processes.*FIREBOX_CGROUP_PARENT"):
        cgroups.create("sbx_3", Limits(MiB, 5, 1.0), host=host)


def test_existing_cgroup_is_an_error_and_cleanup_stale_removes_it(fake_fs: Path) -> None:
    host = cgroups.detect(v2_host(fake_fs))
    limits = Limits(MiB, 5, 1.0)
    cgroups.create("old_1", limits, host=host)
    cgroups.create("old_2", limits, host=host)
    with pytest.raises(CgroupError, match="cleanup_stale"):
        cgroups.create("old_1", limits, host=host)
    assert cgroups.attach("old_2", host=host).paths == [fake_fs / "v2" / "firebox" / "old_2"]
    assert cgroups.cleanup_stale(host=host, keep={"old_2"}) == 1
    assert sorted(p.name for p in (fake_fs / "v2" / "firebox").iterdir() if p.is_dir()) == ["old_2"]
    with pytest.raises(CgroupError, match="no cgroup"):
        cgroups.attach("old_1", host=host)


def test_failed_create_removes_what_it_made(fake_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = cgroups.detect(v2_host(fake_fs))
    fake_mkdir = fs.mkdir

    def mkdir_without_cpu(path: Path) -> None:  # as if the cpu controller were not enabled
        fake_mkdir(path)
        if path.name == "sbx_4":
            (path / "cpu.max").unlink()

    monkeypatch.setattr(fs, "mkdir", mkdir_without_cpu)
    with pytest.raises(CgroupError, match="cpu.max does not exist: the cpu controller"):
        cgroups.create("sbx_4", Limits(MiB, 5, 1.0), host=host)
    assert not (fake_fs / "v2" / "firebox" / "sbx_4").exists()


# --- v1 logic on a fake tree ------------------------------------------------------------------


def test_v1_create_writes_limits(fake_fs: Path) -> None:
    host = cgroups.detect(v1_host(fake_fs))
    cg = cgroups.create("sbx_1", Limits(64 * MiB, 20, 0.5), host=host)
    mem, pids, cpu = (fake_fs / c / "firebox" / "sbx_1" for c in ("memory", "pids", "cpu"))
    assert cg.version == 1 and cg.paths == [mem, pids, cpu]
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 * MiB)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 * MiB)
    assert (pids / "pids.max").read_text() == "20"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    cg.add(4242)
    assert all((d / "cgroup.procs").read_text() == "4242" for d in cg.paths)
    assert cg.memory_events() == {"oom_kill": 2, "max": 9}
    assert cg.pids_events() == 6
