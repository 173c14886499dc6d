"""The thread pools of numeric libraries, sized to a jail's CPU limit (agent/limits.py)."""

from __future__ import annotations

import pytest

from firebox.agent import limits

ONE = dict.fromkeys(limits.THREAD_VARS, "1")


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process that may run on 4 cores, as every process of a jail on a 4-core host."""
    monkeypatch.setattr(limits.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    return monkeypatch


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        ("1", ONE),
        ("0.5", ONE),  # at least one thread
        ("1.5", ONE),  # rounded down: never more threads than the quota runs at once
        ("3", dict.fromkeys(limits.THREAD_VARS, "3")),
        ("4", {}),  # as many as the cores it sees: the libraries count those themselves
        ("64", {}),
    ],
)
def test_threads_follow_the_cpu_limit(
    cores: pytest.MonkeyPatch, cpus: str, expected: dict[str, str]
) -> None:
    cores.setenv(limits.CPUS_ENV, cpus)
    assert limits.thread_env() == expected


@pytest.mark.parametrize("cpus", [None, "", "0", "-1", "nan", "inf", "two"])
def test_no_limit_given_sets_nothing(cores: pytest.MonkeyPatch, cpus: str | None) -> None:
    # a microVM (its vCPUs are its limit), or nothing usable
    if cpus is None:
        cores.delenv(limits.CPUS_ENV, raising=False)
    else:
        cores.setenv(limits.CPUS_ENV, cpus)
    assert limits.thread_env() == {}
