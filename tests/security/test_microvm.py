"""The microvm backend, judged from the host: how its QEMU runs, and what a guest that dies
or panics leaves behind (nothing). The boundary checks shared with the jail (host files, the
network, privileged operations) run on both backends from test_jail_boundary.py."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from firebox import Sandbox
from firebox.exceptions import FireboxException
from firebox.images.cache import image_root
from tests.conftest import Daemon

pytestmark = pytest.mark.backends("microvm")

REPORT_WITHIN = 5.0  # seconds: a dead or hung guest is reported crashed within this


def _qemu_pid(daemon: Daemon, sandbox_id: str) -> int:
    for pid in daemon.sandbox_pids(sandbox_id):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu-system"):
                return pid
    raise AssertionError(f"no QEMU process in the cgroup of {sandbox_id}")


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _cgroup_file(pid: int, controller: str, name: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or controllers == "":
            for base in (Path("/sys/fs/cgroup") / controller, Path("/sys/fs/cgroup")):
                candidate = base / path.lstrip("/") / name
                if candidate.exists():
                    return candidate.read_text().strip()
    raise AssertionError(f"no {controller} cgroup file {name} for pid {pid}")


def test_qemu_runs_unprivileged_with_seccomp_in_namespaces_of_its_own(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    pid = _qemu_pid(daemon, sandbox.sandbox_id)
    status = _status(pid)
    uids = [int(u) for u in status["Uid"].split()]
    assert min(uids) >= 1_000_000, status["Uid"]  # far above any real account
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["Seccomp"] == "2", "QEMU's own seccomp filter (-sandbox on) is not on"
    assert status["NoNewPrivs"] == "1"
    for ns in ("mnt", "pid", "net", "user", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    sandbox_arg = cmdline[cmdline.index(b"-sandbox") + 1].decode()
    for deny in ("spawn=deny", "elevateprivileges=deny", "resourcecontrol=deny"):
        assert deny in sandbox_arg, sandbox_arg
    assert b"-netdev" not in cmdline and b"-nic" not in cmdline  # no network device at all


def test_qemu_has_cgroup_limits(sandbox: Sandbox, daemon: Daemon) -> None:
    pid = _qemu_pid(daemon, sandbox.sandbox_id)
    try:
        memory = int(_cgroup_file(pid, "memory", "memory.limit_in_bytes"))
    except AssertionError:
        memory = int(_cgroup_file(pid, "memory", "memory.max"))
    assert memory < 2**40, "no memory limit"
    try:
        pids = _cgroup_file(pid, "pids", "pids.max")
    except AssertionError:
        pids = "max"
    assert pids != "max", "no pids limit"
    try:
        quota = _cgroup_file(pid, "cpu", "cpu.cfs_quota_us")
        assert int(quota) > 0, quota
    except AssertionError:
        assert not _cgroup_file(pid, "cpu", "cpu.max").startswith("max")


def test_qemu_sees_none_of_the_hosts_files(sandbox: Sandbox, daemon: Daemon) -> None:
    root = Path(f"/proc/{_qemu_pid(daemon, sandbox.sandbox_id)}/root")
    assert not (root / "etc" / "passwd").exists()
    assert not (root / daemon.home.relative_to("/") / "admin.key").exists()
    assert not (root / "root").exists()


def test_the_guest_runs_its_own_kernel(sandbox: Sandbox) -> None:
    guest = sandbox.commands.run("uname -r").stdout.strip()
    assert guest and guest != os.uname().release
    assert sandbox.commands.run("ls /sys/class/net").stdout.split() == ["lo"]


AGENT_PROCS = (
    "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline | grep -q '^/usr/bin/python3 .*"
    "firebox.agent.main' && echo ${p##*/}; done; true"
)


def test_guest_root_cannot_look_into_the_agent(sandbox: Sandbox) -> None:
    # The agent holds capabilities (it is root of the guest), a sandbox command none, so the
    # kernel's ptrace access check keeps even guest root out of the agent's descriptors,
    # memory and environment.
    pids = sandbox.commands.run(AGENT_PROCS, user="root").stdout.split()
    assert len(pids) == 1, pids
    agent = pids[0]
    out = sandbox.commands.run(
        f"ls -l /proc/{agent}/fd/ 2>&1; cat /proc/{agent}/environ 2>&1; "
        f"head -c1 /proc/{agent}/mem 2>&1; true",
        user="root",
    ).stdout
    assert "vport" not in out and "FIREBOX_AGENT_PATH" not in out, out
    assert out.count("Permission denied") >= 2, out


def _wait_ended(sbx: Sandbox, since: float) -> tuple[float, str]:
    deadline = since + REPORT_WITHIN + 5  # the bound, plus slack for a loaded host's API calls
    while time.monotonic() < deadline:
        try:
            sbx.get_info()
        except FireboxException as e:
            return time.monotonic() - since, str(e)
        time.sleep(0.1)
    raise AssertionError("the dead guest was never reported")


def _assert_nothing_left(daemon: Daemon, sandbox_id: str, qemu_pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{qemu_pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{qemu_pid}").exists(), "QEMU still runs"

    def cgroup_left() -> bool:
        try:
            daemon.sandbox_pids(sandbox_id)
            return True
        except AssertionError:
            return False

    def overlay_left() -> bool:
        return bool(list((image_root() / "vm").glob(f"*/{sandbox_id}")))

    while time.monotonic() < deadline and (cgroup_left() or overlay_left()):
        time.sleep(0.05)
    assert not cgroup_left(), "its cgroup is left"
    assert not overlay_left(), "its disk overlay is left"


@pytest.mark.parametrize(
    "how",
    [
        # the agent's pid is the parent of the command's shell
        pytest.param("kill -9 $PPID", id="agent-killed"),
        pytest.param("echo c > /proc/sysrq-trigger", id="kernel-panic"),
        pytest.param("kill -STOP $PPID", id="agent-stopped"),
    ],
)
def test_a_dead_guest_is_reported_and_leaves_nothing(daemon: Daemon, how: str) -> None:
    sbx = Sandbox.create(timeout=120)
    qemu = _qemu_pid(daemon, sbx.sandbox_id)
    sbx.commands.run("true")  # the agent has answered once since the restore
    started = time.monotonic()
    with contextlib.suppress(FireboxException):
        sbx.commands.run(how, user="root", timeout=3)
    took, message = _wait_ended(sbx, started)
    assert "crashed" in message, message
    assert took <= REPORT_WITHIN + 2, f"reported after {took:.1f} s"
    _assert_nothing_left(daemon, sbx.sandbox_id, qemu)
