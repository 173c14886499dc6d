"""Admission arithmetic: which limit refuses a new sandbox, with which status and words."""

from __future__ import annotations

from pathlib import Path

import pytest

from firebox.server import admission
from firebox.server.admission import Admission, HostLimits, Usage
from firebox.server.errors import ApiError

ROOMY = HostLimits(max_sandboxes=3, max_memory_mb=0, min_free_memory_mb=0, min_free_disk_mb=0)


def test_sandboxes_are_counted_with_those_starting(tmp_path: Path) -> None:
    running = [512, 1024]
    gate = Admission(ROOMY, 512, [tmp_path], running=lambda: running)
    with gate.starting():
        assert gate.usage() == Usage(sandboxes=3, committed_mb=2 * 512 + 1024)
        with pytest.raises(ApiError) as refused, gate.starting():
            pass
    assert refused.value.code == "rate_limited" and "maximum of 3" in refused.value.message
    assert gate.usage().sandboxes == 2  # a refused or finished start is no longer counted
    running.append(256)
    with pytest.raises(ApiError), gate.starting():
        pass


def test_a_sandbox_of_its_own_size_commits_that(tmp_path: Path) -> None:
    limits = HostLimits(max_sandboxes=10, max_memory_mb=2048, min_free_memory_mb=0)
    gate = Admission(limits, 512, [tmp_path], running=lambda: [512])
    with gate.starting(1024):
        assert gate.usage().committed_mb == 1536
        with pytest.raises(ApiError) as refused, gate.starting(768):
            pass
    assert "--max-memory-mb" in refused.value.message
    with gate.starting(1536):  # the 1024 MB one has gone
        pass


def test_memory_commitment_counts_limits_not_use(tmp_path: Path) -> None:
    limits = HostLimits(max_sandboxes=100, max_memory_mb=2000, min_free_memory_mb=0)
    admission.check(limits, Usage(2, 1536), 256, [])
    with pytest.raises(ApiError) as refused:
        admission.check(limits, Usage(3, 1536), 768, [])
    assert refused.value.code == "rate_limited" and "--max-memory-mb" in refused.value.message


def test_the_host_keeps_its_last_memory_and_disk(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 2048000 kB\nMemAvailable: 512000 kB\n")
    assert admission.available_memory_mb(meminfo) == 500
    with pytest.raises(ApiError) as refused:
        admission.check(
            HostLimits(min_free_memory_mb=0, min_free_disk_mb=10**9), Usage(0, 0), 512, [tmp_path]
        )
    assert refused.value.code == "unavailable" and str(tmp_path) in refused.value.message
    free = admission.free_disk_mb(tmp_path)
    assert free is not None and free > 0
    assert admission.free_disk_mb(tmp_path / "missing") is None
