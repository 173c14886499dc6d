"""Peer: epicbox (PyPI) against the benchmark's own Docker engine.

(Not named epicbox.py: its driver must import the real epicbox.)
"""

from __future__ import annotations

from . import docker_engine
from .base import Samples, Unsupported
from .driven import DockerDriverPeer


class Epicbox(DockerDriverPeer):
    name = "epicbox"
    script = "epicbox_driver.py"
    modules = ("epicbox", "docker")
    notes = {
        "create_to_first_command": "epicbox.create('python', 'true') (a container: "
        "/bin/sh -c true, no network, epicbox's default limits) then epicbox.start(sandbox) "
        "returned its result (attach, start, wait, inspect); destroy() after the clock",
        "create_to_first_python": "the same with the command python3 -c 'print(1+1)'",
        "command_round_trip": "epicbox.run('python', 'true', workdir=<working_directory()>): "
        "epicbox has no live sandbox, each run is a new container (create, start, wait, "
        "remove) sharing a Docker volume at /sandbox",
        "python_round_trip": "epicbox.run(..., \"python3 -c 'print(1+1)'\", workdir=...): "
        "likewise a new container and interpreter each time",
        "file_throughput": "write only: epicbox.create(..., files=[one 100 MB file], "
        "workdir=...) returned (the container's creation included: files go in only with a "
        "create); epicbox has no call that reads a file back",
        "idle_memory_mb": "none: no process exists between runs",
    }

    def driver_args(self) -> list[str]:
        return [docker_engine.IMAGE]

    def idle_memory_mb(self, n: int) -> Samples:
        return Unsupported(
            "epicbox holds no process between runs: a sandbox lives only while its command runs"
        )
