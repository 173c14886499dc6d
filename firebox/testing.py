"""Helpers for testing code that uses firebox: a real local daemon, started and stopped by PID.

    with LocalDaemon() as daemon:          # a `firebox serve` on a free loopback port
        os.environ.update(daemon.env())   # FIREBOX_URL and FIREBOX_API_KEY for the SDK
        ...

The daemon keeps its state in a home of its own (a temporary directory unless given), and so
its cgroups and sandbox state too (``firebox.backends.owner``): it never touches another
daemon's sandboxes. Needs root, like every jail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from firebox.backends.owner import Owner
from firebox.confine.cgroups import DEFAULT_PARENT, PARENT_ENV

START_DEADLINE = 120.0  # seconds; the first start may build the guest image


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from each process's parent in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := parent_of(int(entry.name))) is not None:
            parents[int(entry.name)] = parent
    found: list[int] = []
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalDaemon:
    def __init__(
        self,
        home: Path | None = None,
        isolation: str = "jail",
        pool_size: int | None = None,
        cgroup_parent: str | None = None,
        args: Sequence[str] = (),
        on_stop: str = "end",
    ) -> None:
        self._own_home = home is None
        self.home = home or Path(tempfile.mkdtemp(prefix="firebox-home-"))
        self.isolation = isolation
        self.pool_size = pool_size
        self.args = list(args)  # more `firebox serve` options, e.g. ["--max-sandboxes", "2"]
        # a test's or benchmark's daemon ends its sandboxes when stopped ("keep": they run on
        # for the next daemon of the home to adopt, as a real daemon's do)
        self.on_stop = on_stop
        # its sandboxes' cgroups: under this parent if given, else its home's own
        self._cgroup_parent = cgroup_parent
        self.cgroup_parent = cgroup_parent or f"{DEFAULT_PARENT}/{Owner.of_home(self.home).key}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        # per port: a daemon started on the home of a running one (and refused) keeps its own
        return self.home / f"daemon-{self.port}.log"

    def env(self) -> dict[str, str]:
        return {"FIREBOX_URL": self.url, "FIREBOX_API_KEY": self.key}

    def start(self) -> LocalDaemon:
        argv = [sys.executable, "-m", "firebox.cli", "serve", "--port", str(self.port)]
        argv += ["--isolation", self.isolation, "--on-stop", self.on_stop]
        if self.pool_size is not None:
            argv += ["--pool-size", str(self.pool_size)]
        argv += self.args
        env = {**os.environ, "FIREBOX_HOME": str(self.home)}
        env.pop(PARENT_ENV, None)
        if self._cgroup_parent:
            env[PARENT_ENV] = self._cgroup_parent
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the daemon did not start; the end of {self.log_path}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            time.sleep(0.05)
        self.key = (self.home / "admin.key").read_text().strip()
        return self

    def zygote_pids(self) -> list[int]:
        """Host pids of this daemon's jail zygotes (each is bubblewrap and the python under
        it): its descendants whose command line names firebox.agent.zygote and that are in no
        sandbox's cgroup (the agents forked from a zygote keep its command line)."""
        if self.proc is None:
            return []
        found = []
        for pid in descendants(self.proc.pid):
            try:
                named = b"firebox.agent.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()
                in_sandbox = self.cgroup_parent in Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:  # gone meanwhile
                continue
            if named and not in_sandbox:
                found.append(pid)
        return found

    def stop(self) -> None:
        """SIGTERM by PID (the daemon then ends its sandboxes, or with ``on_stop="keep"``
        leaves them to the next), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> LocalDaemon:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)
