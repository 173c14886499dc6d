"""Fixtures layered by lifecycle: image → daemon → sandbox.

The daemon is the real `firebox serve`, started once per session on a free loopback port with
its own state dir and cgroup parent, and stopped by its PID at the end. The guest image is the
real one, built once (and cached by content across runs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Daemon:
    url: str
    key: str
    home: Path
    proc: subprocess.Popen[bytes]
    cgroup_parent: str

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key or self.key}, timeout=60)

    def new_key(self, name: str = "tenant") -> str:
        with self.client() as c:
            r = c.post("/keys", json={"name": name})
            r.raise_for_status()
            return str(r.json()["key"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def image() -> Path:
    from firebox import images

    return images.build_image("base", progress=lambda m: print(f"[image] {m}", file=sys.stderr))


@pytest.fixture(scope="session")
def daemon(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("the jail backend needs root (sandboxes map onto unprivileged host uids)")
    home = tmp_path_factory.mktemp("firebox-home")
    port = _free_port()
    cgroup_parent = f"firebox-test-{os.getpid()}"
    env = {**os.environ, "FIREBOX_HOME": str(home), "FIREBOX_CGROUP_PARENT": cgroup_parent}
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "firebox.cli", "serve", "--port", str(port), "--isolation", "jail"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                "the daemon did not start:\n" + (home / "daemon.log").read_text()[-3000:]
            )
        time.sleep(0.05)
    key = (home / "admin.key").read_text().strip()
    d = Daemon(url=url, key=key, home=home, proc=proc, cgroup_parent=cgroup_parent)
    old = {k: os.environ.get(k) for k in ("FIREBOX_URL", "FIREBOX_API_KEY")}
    os.environ["FIREBOX_URL"], os.environ["FIREBOX_API_KEY"] = url, key
    try:
        yield d
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture
def sandbox(daemon: Daemon) -> Iterator[object]:
    from firebox import Sandbox

    sbx = Sandbox.create(timeout=120)
    try:
        yield sbx
    finally:
        sbx.kill()
