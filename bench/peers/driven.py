"""Peers measured through a driver in the peers' venv (peers_venv.py): what they share.

Their drivers answer the same operations: ``create_first(what)`` and ``round_trip(what)``
with ``what`` "command" or "python", ``close_pending``, ``open_live``, ``file_throughput``
and, where the peer has them, ``idle_open(n)`` / ``idle_close``; each returns what it timed
(ms, MB/s) around the peer's own API.
"""

from __future__ import annotations

from typing import Any, ClassVar

from . import docker_engine
from .base import Peer, Samples, Throughput, Unsupported, collect, need_root
from .peers_venv import VenvDriver, venv_missing


class DriverPeer(Peer):
    script: ClassVar[str] = ""
    modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.driver: VenvDriver | None = None

    # what a subclass says about its driver
    def driver_args(self) -> list[str]:
        return []

    def driver_env(self) -> dict[str, str]:
        return {}

    def driver_user(self) -> int | None:
        return None

    def available(self) -> str | None:
        return need_root() or venv_missing(*self.modules)

    def setup(self) -> None:
        self.driver = VenvDriver(
            self.script,
            *self.driver_args(),
            env=self.driver_env(),
            user=self.driver_user(),
            cwd="/",
        ).start()

    def teardown(self) -> None:
        if self.driver is not None:
            self.driver.stop()
            self.driver = None

    def call(self, op: str, **kwargs: Any) -> Any:
        assert self.driver is not None, "setup() first"
        return self.driver.call(op, **kwargs)

    def version(self) -> str:
        return str(self.call("version"))

    def _creates(self, what: str, runs: int) -> Samples:
        try:
            return collect(lambda: float(self.call("create_first", what=what)), runs)
        finally:
            self.call("close_pending")

    def _round_trips(self, what: str, runs: int) -> Samples:
        self.call("open_live")
        return collect(lambda: float(self.call("round_trip", what=what)), runs, warmup=2)

    def create_to_first_command(self, runs: int) -> Samples:
        return self._creates("command", runs)

    def create_to_first_python(self, runs: int) -> Samples:
        return self._creates("python", runs)

    def command_round_trip(self, runs: int) -> Samples:
        return self._round_trips("command", runs)

    def python_round_trip(self, runs: int) -> Samples:
        return self._round_trips("python", runs)

    def file_throughput(self, size_mb: int = 100) -> Throughput:
        return throughput(self.call("file_throughput", size_mb=size_mb))


def throughput(answer: dict[str, Any]) -> Throughput:
    """A driver's {"write_mb_s": 812.0, "read_mb_s": {"unsupported": "why"}} as a Throughput."""
    return {
        k: Unsupported(v["unsupported"]) if isinstance(v, dict) else float(v)
        for k, v in answer.items()
    }


class DockerDriverPeer(DriverPeer):
    """A driven peer that talks to the benchmark's own Docker engine (docker_engine.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: docker_engine.DockerEngine | None = None

    def available(self) -> str | None:
        return super().available() or docker_engine.available()

    def driver_env(self) -> dict[str, str]:
        assert self.engine is not None
        return self.engine.env()

    def setup(self) -> None:
        self.engine = docker_engine.acquire()
        try:
            super().setup()
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if self.engine is not None:
                self.engine = None
                docker_engine.release()
