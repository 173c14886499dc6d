"""Peer: llm-sandbox (PyPI) on its Docker backend, against the benchmark's own Docker engine."""

from __future__ import annotations

import time

from . import docker_engine
from .base import PY_CODE, Samples, pss_mb
from .driven import DockerDriverPeer
from .idle import IDLE_SECONDS


class LlmSandboxDocker(DockerDriverPeer):
    name = "llm_sandbox_docker"
    script = "llm_sandbox_driver.py"
    modules = ("llm_sandbox", "docker")
    notes = {
        "create_to_first_command": "SandboxSession(backend='docker', lang='python', "
        f"image='{docker_engine.IMAGE}', skip_environment_setup=True, "
        "runtime_configs={'network_mode': 'none'}).open() then execute_command('true') "
        "returned; close() after the clock. open() looks the image up, creates and starts a "
        "container (tty, /bin/sh); execute_command is one Docker exec",
        "create_to_first_python": f"the same, then run('{PY_CODE}') returned: run() writes the "
        "code to a host temp file, execs `mkdir -p /sandbox`, puts a tar of the file "
        "(put_archive), then execs `python /sandbox/<uuid>.py`",
        "command_round_trip": "execute_command('true') in an open session (one Docker exec)",
        "python_round_trip": f"run('{PY_CODE}') in an open session: a new interpreter each "
        "time (mkdir exec, put_archive, python exec); llm-sandbox keeps no python state",
        "file_throughput": "copy_to_runtime(100 MB file → /sandbox/blob) then "
        "copy_from_runtime back, on one open session: tars through the Docker API "
        "(put_archive / get_archive)",
        "idle_memory_mb": "PSS summed over the container's processes (its cgroup) and its "
        "containerd-shim, each session having run python once; the engine's dockerd and "
        "containerd, shared by all containers, not counted (engine_pss_mb says what they hold)",
    }

    def driver_args(self) -> list[str]:
        return ["docker", docker_engine.IMAGE]

    def idle_memory_mb(self, n: int) -> Samples:
        assert self.engine is not None
        try:
            ids = self.call("idle_open", n=n)
            time.sleep(IDLE_SECONDS)
            return [pss_mb(self.engine.container_pids(cid)) for cid in ids]
        finally:
            self.call("idle_close")
