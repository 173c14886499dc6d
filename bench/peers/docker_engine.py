"""A Docker engine of the benchmark's own, for the peers that drive Docker (not a peer itself).

Debian's docker.io (``/usr/sbin/dockerd``, ``/usr/bin/docker``: never a docker found first on
PATH, such as a static client in /usr/local/bin) started by us as its own process:

    dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false
            --data-root T/data --exec-root T/exec -H unix://T/docker.sock
            --cgroup-parent /fbpeers-docker-<pid> --config-file T/daemon.json

under a temp dir T, so it never touches a system docker (its socket, state, iptables, bridge)
nor /etc/docker (the trust key goes to T too). dockerd starts its own containerd under
T/exec. No registry is reachable or named: the one image, ``firebox-peer-python:latest``, is
``docker import``ed from a tar of firebox's python rootfs, with ``/usr/bin/python`` added as a
link to python3 (llm-sandbox runs ``python``) and ``CMD ["/bin/sh"]`` (both Docker peers keep
their containers up with a command of their own choosing or a tty on sh). Containers get no
network: every peer passes ``network none`` (or epicbox's ``network_disabled``).

At stop: every container and volume removed, dockerd stopped by its PID (SIGTERM, then
SIGKILL), its containerd by its PID if still up, any process still naming T in its command
line (a stray shim) by its PID, mounts under T unmounted, T removed, our
cgroup parent removed, and the run-time directories dockerd makes outside T whatever we did
(/run/docker/plugins, /run/containerd/s) removed if they were not there before and are empty.

Shared: peers ``acquire()`` it in setup and ``release()`` it in teardown; the engine stops
with the last release. A benchmark that measures several Docker peers in a row can hold it
across them (``with docker_engine.held(): ...``) so the image is imported once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .base import (
    cgroup_procs,
    need_binaries,
    need_root,
    no_rootfs_reason,
    parent_pid,
    process_tree,
    pss_mb,
    remove_cgroup,
    rootfs,
    run_checked,
)

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"
IMAGE = "firebox-peer-python:latest"
# made by dockerd/containerd outside --exec-root whatever the flags (20.10 / 1.6)
OUTSIDE_DIRS = [
    Path("/run/docker/plugins"),
    Path("/run/docker"),
    Path("/run/containerd/s"),
    Path("/run/containerd"),
]


def available() -> str | None:
    return (
        need_root()
        or need_binaries(DOCKERD, DOCKER, "/usr/bin/containerd", "/usr/sbin/runc")
        or no_rootfs_reason()
    )


class DockerEngine:
    def __init__(self) -> None:
        self.tmp: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.containerd_pid: int | None = None
        self.cgroup_parent = f"fbpeers-docker-{os.getpid()}"
        self._preexisting: set[Path] = set()

    # -- where it is ---------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        assert self.tmp is not None, "engine not started"
        return self.tmp / "docker.sock"

    def env(self) -> dict[str, str]:
        """What a docker client (CLI or SDK) needs to reach this engine and no other."""
        assert self.tmp is not None, "engine not started"
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.tmp / "cli")}

    def docker(self, *args: str, stdin: int | None = None) -> str:
        env = {**os.environ, **self.env()}
        out = run_checked([DOCKER, *args], env=env, stdin=stdin)
        return out.stdout.decode()

    # -- life ----------------------------------------------------------------------------

    def start(self) -> DockerEngine:
        self._preexisting = {d for d in OUTSIDE_DIRS if d.exists()}
        # short: containerd's sockets live under --exec-root (a unix socket path is ≤ 107 bytes)
        self.tmp = Path(tempfile.mkdtemp(prefix="fbpd-", dir="/tmp"))
        (self.tmp / "daemon.json").write_text(
            json.dumps({"deprecated-key-path": str(self.tmp / "key.json")})
        )
        log = open(self.tmp / "dockerd.log", "wb")  # noqa: SIM115  (dockerd holds it)
        self.proc = subprocess.Popen(
            [
                DOCKERD,
                f"--config-file={self.tmp / 'daemon.json'}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                f"--data-root={self.tmp / 'data'}",
                f"--exec-root={self.tmp / 'exec'}",
                f"--pidfile={self.tmp / 'dockerd.pid'}",
                f"--cgroup-parent=/{self.cgroup_parent}",
                f"-H=unix://{self.socket}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready(60)
            kids = [p for p in process_tree(self.proc.pid) if p != self.proc.pid]
            self.containerd_pid = kids[0] if kids else None
            self._import_image()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}): {self.log_tail()}")
            if self.socket.exists():
                env = {**os.environ, **self.env()}
                ok = subprocess.run([DOCKER, "version"], env=env, capture_output=True)
                if ok.returncode == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd not ready in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self.tmp / "dockerd.log").read_text(errors="replace")[-1500:]  # type: ignore[operator]
        except OSError:
            return ""

    def _import_image(self) -> None:
        """``docker import`` of a tar of firebox's python rootfs, /usr/bin/python added."""
        assert self.tmp is not None
        extra = self.tmp / "extra"
        (extra / "usr" / "bin").mkdir(parents=True)
        (extra / "usr" / "bin" / "python").symlink_to("python3")
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs()), "-cf", "-", ".", "-C", str(extra), "./usr/bin/python"],
            stdout=subprocess.PIPE,
        )
        try:
            assert tar.stdout is not None
            self.docker(
                "import", "--change", 'CMD ["/bin/sh"]', "-", IMAGE, stdin=tar.stdout.fileno()
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            if tar.wait() != 0:
                raise RuntimeError(f"tar of the rootfs failed ({tar.returncode})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(RuntimeError):
                ids = self.docker("ps", "-aq").split()
                if ids:
                    self.docker("rm", "-f", "-v", *ids)
                vols = self.docker("volume", "ls", "-q").split()
                if vols:
                    self.docker("volume", "rm", "-f", *vols)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.containerd_pid is not None:
            with contextlib.suppress(OSError):
                if (
                    Path(f"/proc/{self.containerd_pid}/cmdline")
                    .read_bytes()
                    .startswith(b"containerd\0")
                ):
                    os.kill(self.containerd_pid, signal.SIGKILL)
            self.containerd_pid = None
        if self.tmp is not None:
            for pid in self._strays(self.tmp):  # e.g. a shim whose container outlived `rm -f`
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._unmount_under(self.tmp)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        remove_cgroup(self.cgroup_parent)
        for d in OUTSIDE_DIRS:
            if d not in self._preexisting and d.exists():
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty: anything inside is not ours to remove

    @staticmethod
    def _strays(top: Path) -> list[int]:
        """PIDs of processes still running with our temp dir in their command line: ours."""
        mark = str(top).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found

    @staticmethod
    def _unmount_under(top: Path) -> None:
        prefix = str(top) + "/"
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)

    # -- per container ---------------------------------------------------------------------

    def container_pids(self, container_id: str) -> list[int]:
        """The host processes one container costs: its cgroup's processes and its
        containerd-shim (the parent of its init), not the engine's dockerd and containerd."""
        state = json.loads(self.docker("inspect", "--format", "{{json .State}}", container_id))
        init = int(state["Pid"])
        pids = set(cgroup_procs(f"{self.cgroup_parent}/{self._full_id(container_id)}"))
        pids.add(init)
        shim = parent_pid(init)
        pids.update(process_tree(shim))
        return sorted(pids)

    def _full_id(self, container_id: str) -> str:
        return self.docker("inspect", "--format", "{{.Id}}", container_id).strip()

    def engine_pss_mb(self) -> float:
        """dockerd and its containerd: what the engine costs once, whatever runs on it."""
        if self.proc is None:
            return 0.0
        return pss_mb(p for p in process_tree(self.proc.pid))


# -- shared between the Docker peers -----------------------------------------------------------

_engine: DockerEngine | None = None
_refs = 0


def acquire() -> DockerEngine:
    global _engine, _refs
    if _engine is None:
        _engine = DockerEngine().start()
    _refs += 1
    return _engine


def release() -> None:
    global _engine, _refs
    _refs = max(0, _refs - 1)
    if _refs == 0 and _engine is not None:
        engine, _engine = _engine, None
        engine.stop()


@contextlib.contextmanager
def held() -> Iterator[DockerEngine]:
    """Keep one engine (and its imported image) up across several peers' setup/teardown."""
    engine = acquire()
    try:
        yield engine
    finally:
        release()
