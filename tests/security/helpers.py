"""What the security battery's modules share: running probes inside a sandbox, and reading a
sandbox's processes from the host's /proc."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from firebox import CommandExitException, Sandbox
from firebox.exceptions import FireboxException
from tests.conftest import Daemon

# The uid base the session's daemon was started with (it reads the same variable).
UID_BASE = int(os.environ.get("FIREBOX_UID_BASE", 1_000_000_000))

# Shell: the pid of the sandbox's agent, found by its name (agent/main.py's AGENT_NAME: a
# jail's agent is forked from the zygote and has the zygote's command line). Read with the
# shell's own `read`, not a `$(cat …)` per process: tens of forks are seconds in a microVM.
AGENT_PIDS = (
    'for p in /proc/[0-9]*; do read -r c 2>/dev/null < $p/comm && [ "$c" = firebox-agent ] '
    "&& echo ${p##*/}; done; true"
)


def run(sbx: Sandbox, cmd: str, user: str = "user", timeout: float = 60) -> tuple[int, str]:
    """Exit code and stdout + stderr of a shell command; a non-zero exit is not an error."""
    try:
        r = sbx.commands.run(cmd, user=user, timeout=timeout)
        return r.exit_code, r.stdout + r.stderr
    except CommandExitException as e:
        return e.exit_code, e.stdout + e.stderr


def py(sbx: Sandbox, code: str, user: str = "root", timeout: float = 60) -> tuple[int, str]:
    """Run a Python script as ``user`` (written as root to /tmp, readable by everyone)."""
    path = f"/tmp/probe-{secrets.token_hex(4)}.py"
    sbx.files.write(path, code, user="root")
    return run(sbx, f"python3 {path}", user=user, timeout=timeout)


def agent_pid(sbx: Sandbox) -> int:
    """The agent's pid inside the sandbox."""
    pids = sbx.commands.run(AGENT_PIDS, user="root").stdout.split()
    assert len(pids) == 1, f"expected one agent process, found {pids}"
    return int(pids[0])


def sandbox_alive(sbx: Sandbox) -> bool:
    try:
        return sbx.commands.run("echo alive", timeout=10).stdout == "alive\n"
    except FireboxException:
        return False


# -- the host's view ------------------------------------------------------------------------


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def host_processes(daemon: Daemon, sandbox_id: str) -> dict[int, dict[str, str]]:
    """Every host process of a sandbox (from its cgroup) with its /proc status."""
    seen = {}
    for pid in daemon.sandbox_pids(sandbox_id):
        with contextlib.suppress(OSError):  # exited meanwhile
            seen[pid] = status(pid)
    assert seen, f"no live process in the cgroup of {sandbox_id}"
    return seen


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def is_agent(pid: int) -> bool:
    return Path(f"/proc/{pid}/comm").read_text().strip() == "firebox-agent"


def qemu_pid(daemon: Daemon, sandbox_id: str) -> int:
    for pid in daemon.sandbox_pids(sandbox_id):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("qemu-system"):
                return pid
    raise AssertionError(f"no QEMU process in the cgroup of {sandbox_id}")


def host_namespaces() -> dict[str, str]:
    """The host's namespaces: pid 1's where this process may read them, else its own (the test
    runs in the host's namespaces, as the daemon does)."""
    out = {}
    for ns in os.listdir("/proc/self/ns"):
        try:
            out[ns] = os.readlink(f"/proc/1/ns/{ns}")
        except OSError:
            out[ns] = os.readlink(f"/proc/self/ns/{ns}")
    return out


def cgroup_file(pid: int, controller: str, name: str) -> str:
    """A file of the cgroup ``pid`` is in, for ``controller`` (cgroup v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or controllers == "":
            for base in (Path("/sys/fs/cgroup") / controller, Path("/sys/fs/cgroup")):
                candidate = base / path.lstrip("/") / name
                if candidate.exists():
                    return candidate.read_text().strip()
    raise AssertionError(f"no {controller} cgroup file {name} for pid {pid}")


def wait_gone(pid: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()
