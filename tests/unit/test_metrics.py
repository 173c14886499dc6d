"""Sandbox metrics without a daemon: the CPU-percent arithmetic, the sampler's rounds against
fake sandboxes, and reading usage from fake cgroup trees of both versions (the real files are
read by tests/e2b/test_metrics.py and tests/functional/test_metrics.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from firebox.backends.base import SandboxUsage
from firebox.confine import cgroups
from firebox.confine.cgroups import Limits, fs
from firebox.confine.cgroups.v1 import V1Set
from firebox.confine.cgroups.v2 import V2Set
from firebox.server.metrics import Sampler, cpu_percent

MiB = 1 << 20
SEC = 1_000_000_000

# --- the arithmetic --------------------------------------------------------------------------


def test_cpu_percent_is_of_the_cpu_limit() -> None:
    assert cpu_percent(5 * SEC, 5.0, 1.0) == 100.0  # one CPU busy for the whole interval
    assert cpu_percent(5 * SEC, 5.0, 2.0) == 50.0  # one of two
    assert cpu_percent(10 * SEC, 5.0, 2.0) == 100.0  # both
    assert cpu_percent(SEC, 5.0, 0.5) == 40.0  # 0.2 CPUs of half a CPU
    assert cpu_percent(SEC // 4, 5.0, 1.0) == 5.0
    assert cpu_percent(0, 5.0, 1.0) == 0.0


def test_cpu_percent_never_negative_nor_divides_by_zero() -> None:
    assert cpu_percent(-SEC, 5.0, 1.0) == 0.0
    assert cpu_percent(SEC, 0.0, 1.0) == 0.0
    assert cpu_percent(SEC, 5.0, 0.0) == 0.0


# --- the sampler -----------------------------------------------------------------------------


@dataclass
class FakeRunning:
    cpu_ns: int | None = 0
    fail: bool = False

    def usage(self) -> SandboxUsage | None:
        if self.fail:
            raise OSError("gone")
        return SandboxUsage(self.cpu_ns, 10 * MiB, MiB, 512 * MiB, 3 * MiB, 1024 * MiB)


@dataclass
class FakeLimits:
    cpu_count: float = 1.0


@dataclass
class FakeSpec:
    limits: FakeLimits = field(default_factory=FakeLimits)


@dataclass
class FakeLive:
    id: str
    running: FakeRunning
    spec: FakeSpec = field(default_factory=FakeSpec)
    ended: bool = False


def _sampler(live: list[FakeLive], kept: int = 720) -> Sampler:
    return Sampler(lambda: live, kept=kept)  # type: ignore[arg-type,return-value]


def test_first_reading_is_a_baseline_then_cpu_percent_from_the_difference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr("firebox.server.metrics._monotonic", lambda: next(clock))
    a = FakeLive("a", FakeRunning(cpu_ns=7 * SEC), FakeSpec(FakeLimits(0.5)))
    sampler = _sampler([a])
    asyncio.run(sampler.sample_once())
    assert sampler.samples("a") == [] and sampler.latest("a") is None
    a.running.cpu_ns = 7 * SEC + SEC // 2  # half a second over 2 s, of half a CPU: 50%
    asyncio.run(sampler.sample_once())
    (s,) = sampler.samples("a")
    assert s.cpu_used_pct == 50.0 and s.cpu_count == 0.5
    assert (s.mem_used, s.mem_cache, s.mem_total) == (10 * MiB, MiB, 512 * MiB)
    assert (s.disk_used, s.disk_total) == (3 * MiB, 1024 * MiB)
    asyncio.run(sampler.sample_once())  # idle since: 0%
    assert [x.cpu_used_pct for x in sampler.samples("a")] == [50.0, 0.0]
    assert sampler.latest("a") == sampler.samples("a")[-1]


def test_without_cpu_time_the_percent_is_none_not_made_up() -> None:
    sampler = _sampler([FakeLive("a", FakeRunning(cpu_ns=None))])
    asyncio.run(sampler.sample_once())  # no baseline to wait for: memory is sampled at once
    (s,) = sampler.samples("a")
    assert s.cpu_used_pct is None and s.mem_used == 10 * MiB


def test_series_are_bounded_filtered_by_time_and_forgotten_when_the_sandbox_ends() -> None:
    a, b = FakeLive("a", FakeRunning()), FakeLive("b", FakeRunning(fail=True))
    live = [a, b]
    sampler = _sampler(live, kept=3)
    for _ in range(6):
        asyncio.run(sampler.sample_once())
    assert len(sampler.samples("a")) == 3  # the oldest dropped
    assert sampler.samples("b") == []  # its failing read cost only itself
    first, last = sampler.samples("a")[0].timestamp, sampler.samples("a")[-1].timestamp
    assert sampler.samples("a", start=last + 1) == []
    assert sampler.samples("a", end=first - 1) == []
    assert len(sampler.samples("a", start=first, end=last)) == 3
    live.remove(a)
    asyncio.run(sampler.sample_once())
    assert sampler.samples("a") == [] and sampler.latest("a") is None


def test_sampler_task_starts_and_stops() -> None:
    async def run() -> int:
        live = [FakeLive("a", FakeRunning())]
        sampler = Sampler(lambda: live, interval=0.01)  # type: ignore[arg-type,return-value]
        sampler.start()
        while len(sampler.samples("a")) < 2:
            await asyncio.sleep(0.01)
        await sampler.stop()
        n = len(sampler.samples("a"))
        await asyncio.sleep(0.05)
        return len(sampler.samples("a")) - n

    assert asyncio.run(run()) == 0  # nothing sampled once stopped


# --- reading usage from cgroup files ---------------------------------------------------------


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_v2_usage(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
            "memory.current": "104857600\n",
            "memory.stat": "anon 52428800\nfile 41943040\nshmem 31457280\ninactive_file 8388608\n",
            "memory.max": "536870912\n",
        },
    )
    u = V2Set("sbx", dict.fromkeys(("memory", "pids", "cpu"), tmp_path)).usage()
    assert u.cpu_ns == 2_500_000_000
    assert (u.memory, u.cache, u.inactive_file, u.memory_limit) == (
        100 * MiB, 40 * MiB, 8 * MiB, 512 * MiB
    )  # fmt: skip
    assert u.working_set == 92 * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert V2Set("sbx", {"memory": tmp_path}).usage().memory_limit is None


def test_v1_usage_reads_cpuacct_and_hierarchical_memory(tmp_path: Path) -> None:
    mem, acct = tmp_path / "memory", tmp_path / "cpuacct"
    _write(acct, {"cpuacct.usage": "1234567890\n"})
    _write(
        mem,
        {
            "memory.usage_in_bytes": "73400320\n",
            "memory.limit_in_bytes": "268435456\n",
            "memory.stat": "cache 1\ninactive_file 1\ntotal_cache 20971520\n"
            "total_inactive_file 4194304\n",
        },
    )
    u = V1Set("sbx", {"memory": mem, "cpuacct": acct}).usage()
    assert (u.cpu_ns, u.memory, u.cache, u.inactive_file, u.memory_limit) == (
        1234567890, 70 * MiB, 20 * MiB, 4 * MiB, 256 * MiB
    )  # fmt: skip
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert V1Set("sbx", {"memory": mem}).usage().memory_limit is None
    assert V1Set("sbx", {"memory": mem}).usage().cpu_ns is None  # no cpuacct mounted


def test_v1_sets_join_a_separately_mounted_cpuacct(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # this host's layout: cpu and cpuacct each a hierarchy of its own
    lines = []
    for i, top in enumerate(("memory", "pids", "cpu", "cpuacct")):
        (tmp_path / top).mkdir()
        lines.append(f"{40 + i} 31 0:{30 + i} / {tmp_path / top} rw - cgroup cgroup rw,{top}")
    (tmp_path / "mountinfo").write_text("\n".join(lines) + "\n")
    files: dict[str, Any] = {
        "memory": ["memory.limit_in_bytes"],
        "pids": ["pids.max"],
        "cpu": ["cpu.cfs_period_us", "cpu.cfs_quota_us"],
        "cpuacct": [],
    }

    def mkdir(path: Path) -> None:
        os.mkdir(path)
        for name in ["cgroup.procs", *files[path.relative_to(tmp_path).parts[0]]]:
            (path / name).write_text("")

    monkeypatch.setattr(fs, "mkdir", mkdir)
    monkeypatch.setattr(fs, "rmdir", shutil.rmtree)
    monkeypatch.delenv(cgroups.PARENT_ENV, raising=False)
    host = cgroups.detect(tmp_path / "mountinfo")
    cg = cgroups.create("sbx_1", Limits(64 * MiB, 20, 1.0), host=host)
    acct = tmp_path / "cpuacct" / "firebox" / "sbx_1"
    assert cg.dirs["cpuacct"] == acct and acct in cg.paths
    cg.add(4242)
    assert (acct / "cgroup.procs").read_text() == "4242"  # its CPU time is counted there
    (acct / "cgroup.procs").write_text("")
    for d in cg.paths:
        (d / "cgroup.procs").write_text("")
    # a crashed daemon's leftovers are found in cpuacct too
    assert cgroups.cleanup_stale(host=host) == 1
    assert not acct.exists()
