"""Fixtures layered by lifecycle: image → daemon → sandbox.

The daemon is the real `firebox serve` (``firebox.testing.LocalDaemon``), started once per
session on a free loopback port with its own state dir and cgroup parent, and stopped by its
PID at the end. The guest image is the
real one, built once (and cached by content across runs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from firebox import Sandbox
from firebox.testing import LocalDaemon


class Daemon(LocalDaemon):
    """The session's daemon, with helpers for talking to its REST API directly."""

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key or self.key}, timeout=60)

    def new_key(self, name: str = "tenant") -> str:
        with self.client() as c:
            r = c.post("/keys", json={"name": name})
            r.raise_for_status()
            return str(r.json()["key"])

    def peak_rss_mb(self) -> float:
        """The daemon process's peak resident memory (VmHWM) so far."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    def sandbox_pids(self, sandbox_id: str) -> list[int]:
        """Host pids of every process of a sandbox, read from its cgroup (v1 pids, or v2)."""
        for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
            procs = base / self.cgroup_parent / sandbox_id / "cgroup.procs"
            if procs.exists():
                return [int(p) for p in procs.read_text().split()]
        raise AssertionError(f"no cgroup found for {sandbox_id}")


@pytest.fixture(scope="session")
def image() -> Path:
    from firebox import images

    return images.build_image(
        images.DEFAULT_TEMPLATE, progress=lambda m: print(f"[image] {m}", file=sys.stderr)
    )


# Every test that talks to a daemon runs once per isolation backend (its id says which);
# FIREBOX_TEST_BACKENDS narrows the list, e.g. to "jail" while working on the jail.
BACKENDS = [
    b for b in os.environ.get("FIREBOX_TEST_BACKENDS", "jail,gvisor,microvm").split(",") if b
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run only on these isolation backends (host-side checks)"
    )
    config.addinivalue_line(
        "markers",
        "daemon_only: the daemon's own behaviour (its API, keys, validation), the same whatever "
        "backend holds the sandboxes: run on the first backend tested only",
    )


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if os.geteuid() != 0:
        pytest.skip(f"the {name} backend needs root (sandboxes run as unprivileged host uids)")
    from firebox.backends.owner import Owner
    from firebox.backends.select import backends

    verdict = backends(Owner.of_process("test-probe"), 1_000_000_000)[name].availability()
    if not verdict.ok:
        pytest.skip(f"the {name} backend cannot run here: {verdict.reason}")
    return name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The daemon's own behaviour is checked once (on the first backend), before any sandbox
    is made for it: three times would add minutes to CI for nothing."""
    once = pytest.mark.skip(
        reason=f"the daemon's own behaviour, the same on every backend: checked on {BACKENDS[0]}"
    )
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend_name") if callspec is not None else None
        if item.get_closest_marker("daemon_only") and name not in (None, BACKENDS[0]):
            item.add_marker(once)


@pytest.fixture(autouse=True)
def _only_on_marked_backends(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("backends")
    if marker is not None and "backend_name" in request.fixturenames:
        name = request.getfixturevalue("backend_name")
        if name not in marker.args:
            pytest.skip(f"a check of the {'/'.join(marker.args)} backend only")


# Egress tests reach loopback servers only. The session's daemon resolves these names itself
# (--egress-resolve) and lifts one loopback address off the always-denied floor
# (--egress-permit): the "internet" of the tests. Every other name here points into the floor.
EGRESS_ORIGIN = "127.0.0.3"
EGRESS_NAMES = {
    "allowed.test": EGRESS_ORIGIN,
    "also.test": EGRESS_ORIGIN,
    "pypi.test": EGRESS_ORIGIN,
    "pkgs.test": EGRESS_ORIGIN,  # the package sources of template builds (tests/packages.py)
    "rebind.test": "127.0.0.1",  # a DNS answer pointing at the host's loopback
    "mixed.test": f"127.0.0.1,{EGRESS_ORIGIN}",
    "metadata.test": "169.254.169.254",
    "private.test": "10.1.2.3",
    "v6loop.test": "::1",
}
EGRESS_ARGS = [
    "--egress-permit",
    f"{EGRESS_ORIGIN}/32",
    # template builds reach the tests' package sources, and a step writes at most 1 GB
    "--build-allow",
    "pkgs.test",
    "--build-disk-mb",
    "1024",
    *(a for name, addrs in EGRESS_NAMES.items() for a in ("--egress-resolve", f"{name}={addrs}")),
]


@pytest.fixture(scope="session")
def daemon(
    backend_name: str, image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    d = Daemon(
        home=tmp_path_factory.mktemp(f"firebox-home-{backend_name}"),
        cgroup_parent=f"firebox-test-{os.getpid()}-{backend_name}",
        isolation=backend_name,
        args=EGRESS_ARGS,
    )
    d.start()
    old = {k: os.environ.get(k) for k in ("FIREBOX_URL", "FIREBOX_API_KEY")}
    os.environ.update(d.env())
    try:
        yield d
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _drop_templates(d)
        d.stop()


def _drop_templates(d: Daemon) -> None:
    """The templates the session built, and what they alone used (trees, layers, a microVM's
    root disks and snapshots: gigabytes), go with the session. Best effort: a failure here
    must not hide the tests' own."""
    try:
        with d.client() as c:
            c.timeout = httpx.Timeout(300)
            for t in c.get("/templates").json()["templates"]:
                if t.get("owner") is not None:
                    c.delete(f"/templates/{t['name']}")
            c.post("/templates/prune")
    except (httpx.HTTPError, KeyError, ValueError):
        pass


# A sandbox's timeout is a lifetime that would end it under a slow test on a loaded host: the
# fixtures give long ones, and kill their sandboxes at teardown anyway.
def _running_sandbox() -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=1800)
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture
def sandbox(daemon: Daemon) -> Iterator[Sandbox]:
    yield from _running_sandbox()


# -- one client or the other ------------------------------------------------------------------


@dataclass(frozen=True)
class Sdk:
    """One SDK's names, so that a test written once runs with firebox's own SDK (through
    firebox's API) and with E2B's (through the E2B edge): the same method names, their own
    exception classes."""

    name: str
    sandbox_class: Any
    not_found: type[Exception]
    error: type[Exception]  # the root of its exceptions
    command_exit: type[Exception]
    timeout: type[Exception]
    connection: dict[str, str]

    def create(self, **kw: Any) -> Any:
        return self.sandbox_class.create(timeout=1800, **self.connection, **kw)


def _sdk(name: str, daemon: Daemon) -> Sdk:
    if name == "firebox-sdk":
        import firebox

        return Sdk(
            name,
            firebox.Sandbox,
            firebox.NotFoundException,
            firebox.FireboxException,
            firebox.CommandExitException,
            firebox.TimeoutException,
            {},
        )
    import e2b

    return Sdk(
        name,
        e2b.Sandbox,
        e2b.NotFoundException,
        e2b.SandboxException,
        e2b.CommandExitException,
        e2b.TimeoutException,
        {"api_key": daemon.key, "api_url": f"{daemon.url}/e2b", "sandbox_url": daemon.url},
    )


@pytest.fixture(params=["firebox-sdk", "e2b-sdk"])
def sdk(request: pytest.FixtureRequest, daemon: Daemon) -> Sdk:
    """Each test that takes it runs with firebox's SDK and with E2B's, on every backend."""
    return _sdk(str(request.param), daemon)


@pytest.fixture
def any_sandbox(sdk: Sdk) -> Iterator[Any]:
    """A sandbox made and driven by the ``sdk`` of the test's parameter."""
    sbx = sdk.create()
    try:
        yield sbx
    finally:
        sbx.kill()


@pytest.fixture(scope="module")
def sbx(daemon: Daemon) -> Iterator[Sandbox]:
    """One python sandbox for a whole module's tests, which share it."""
    s = Sandbox.create(template="python", timeout=3600)
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture
def api(daemon: Daemon) -> Iterator[tuple[httpx.Client, str]]:
    """The daemon's REST API with the admin key, and a running sandbox's id."""
    with daemon.client() as c:
        sid = c.post("/sandboxes", json={}).json()["sandbox_id"]
        try:
            yield c, sid
        finally:
            c.delete(f"/sandboxes/{sid}")


@pytest.fixture
def neighbour(daemon: Daemon) -> Iterator[Sandbox]:
    """A second sandbox, to show that what happens in one leaves the other working."""
    yield from _running_sandbox()
