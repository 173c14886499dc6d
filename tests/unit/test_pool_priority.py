"""The warm pool's priorities and pacing (server/pool.py) with a fake sandbox: pooled ones
start at background priority, are raised before anyone gets them (or discarded if that
fails), and a refill waits for a quiet daemon. A real daemon's cgroups:
tests/functional/test_pool.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from firebox.backends.base import BackendError, RunningSandbox, SandboxSpec
from firebox.server import pool as pool_module
from firebox.server.admission import Admission, HostLimits
from firebox.server.boot import Booted
from firebox.server.pool import Source, WarmPool
from firebox.settings import Limits

ROOMY = HostLimits(max_sandboxes=10, max_memory_mb=0, min_free_memory_mb=0, min_free_disk_mb=0)


class FakeRunning(RunningSandbox):
    def __init__(self, refuse_raise: bool = False) -> None:
        self.priorities: list[bool] = []  # each set_priority's ``background``
        self.refuse_raise = refuse_raise
        self.cleaned = False

    @property
    def pid(self) -> int:
        return 1

    def poll(self) -> int | None:
        return 0 if self.cleaned else None

    async def wait(self) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        pass

    async def cleanup(self) -> None:
        self.cleaned = True

    def limit_events(self) -> dict[str, int]:
        return {}

    async def set_priority(self, background: bool) -> None:
        if self.refuse_raise and not background:
            raise BackendError("its cgroup is gone")
        self.priorities.append(background)


class FakeAgent:
    closed = False

    async def close(self) -> None:
        self.closed = True


def booted(running: FakeRunning, n: int = 0) -> Booted:
    spec = SandboxSpec(sandbox_id=f"sbx_{n}", template="default", rootfs=Path("/"))
    return Booted(spec, running, FakeAgent())  # type: ignore[arg-type]


def warm_pool(tmp_path: Path, size: int = 1) -> WarmPool:
    admission = Admission(ROOMY, 512, [tmp_path], running=lambda: [])
    return WarmPool(Limits(), backend=None, size=size, admission=admission)  # type: ignore[arg-type]


def queued(pool: WarmPool, key: str, *items: Booted) -> None:
    pool._ready[key] = asyncio.Queue()
    pool._wake[key] = asyncio.Event()
    for item in items:
        pool._ready[key].put_nowait(item)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "REFILL_DELAY", 0.05)
    monkeypatch.setattr(pool_module, "PROBE", 0.01)


async def test_a_refill_boots_in_the_background_and_take_raises_it(
    tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[FakeRunning] = []
    warmed: list[list[bool]] = []  # the priorities each had while warmed

    async def boot(backend: Any, spec: SandboxSpec, background: bool = False) -> Booted:
        running = FakeRunning()
        if background:
            await running.set_priority(True)
        made.append(running)
        return booted(running, len(made))

    async def warm_up(b: Booted) -> None:
        assert isinstance(b.running, FakeRunning)
        warmed.append(list(b.running.priorities))

    monkeypatch.setattr(pool_module, "boot", boot)
    monkeypatch.setattr(pool_module, "warm_up", warm_up)
    pool = warm_pool(tmp_path)
    spec = SandboxSpec(sandbox_id="sbx_x", template="t", rootfs=tmp_path)
    pool.ensure("t", Source(lambda: spec, size=1, keep=True))
    try:
        async with asyncio.timeout(10):
            while pool.waiting() < 1:
                await asyncio.sleep(0.01)
        assert warmed == [[True]]  # lowered before its warm-up, and waiting so
        assert made[0].priorities == [True]
        got = await pool.take("t")
        assert got is not None and got.running is made[0]
        assert made[0].priorities == [True, False]  # raised before the caller has it
    finally:
        await pool.close()


async def test_a_sandbox_that_cannot_be_raised_is_discarded_not_handed_out(
    tmp_path: Path,
) -> None:
    pool = warm_pool(tmp_path, size=2)
    stuck, fine = FakeRunning(refuse_raise=True), FakeRunning()
    first, second = booted(stuck, 1), booted(fine, 2)
    queued(pool, "t", first, second)
    got = await pool.take("t")
    assert got is second and fine.priorities == [False]
    assert stuck.cleaned and first.agent.closed  # type: ignore[attr-defined]
    queued(pool, "u", booted(FakeRunning(refuse_raise=True), 3))
    assert await pool.take("u") is None  # the caller boots one of its own


async def _timed_quiet(pool: WarmPool) -> float:
    source = Source(lambda: SandboxSpec(sandbox_id="sbx_q", template="t", rootfs=Path("/")), 1)
    pool._sources["t"] = source
    start = time.monotonic()
    await pool._quiet("t", source)
    return time.monotonic() - start


async def test_a_refill_waits_for_a_quiet_daemon(
    tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "HOLD_MAX", 5.0)
    pool = warm_pool(tmp_path)
    assert await _timed_quiet(pool) < 0.5  # an idle daemon: one probe

    queued(pool, "t")
    await pool.take("t")  # a create just arrived
    assert await _timed_quiet(pool) >= pool_module.REFILL_DELAY * 0.9

    # the daemon busy (serving calls: its CPU in use) holds it until that ends; probes long
    # enough that a loaded host's scheduler cannot leave the busy thread out of a whole one
    monkeypatch.setattr(pool_module, "PROBE", 0.05)
    stop = time.monotonic() + 0.6

    def busy() -> None:
        while time.monotonic() < stop:
            pass

    spinner = threading.Thread(target=busy)
    spinner.start()
    try:
        waited = await _timed_quiet(pool)
    finally:
        spinner.join()
    assert 0.4 <= waited < 4.0


async def test_a_refill_held_too_long_goes_ahead(
    tmp_path: Path, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "HOLD_MAX", 0.2)
    monkeypatch.setattr(pool_module, "BUSY", -1.0)  # never quiet
    pool = warm_pool(tmp_path)
    assert 0.2 <= await _timed_quiet(pool) < 2.0
