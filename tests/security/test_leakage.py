"""Leakage: nothing of the daemon or the host is visible inside a sandbox, no two sandboxes
share an identity, and nothing of one sandbox is left for the next.

The daemon of this session has a secret in its environment (put there by this directory's
conftest); its admin key, its FIREBOX_* settings and everything else of its environment must
appear nowhere a sandbox can read: `env`, every /proc/<pid>/environ readable inside (as user
and as root), a code cell's os.environ.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from firebox import Sandbox
from tests.conftest import Daemon
from tests.security.conftest import SECRET_ENV
from tests.security.helpers import host_processes, run

USERS = ("user", "root")

# Variables whose value a sandbox legitimately has one of its own (compared by value they
# would match by chance); every other variable of the daemon is compared as NAME=value.
GENERIC = {
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "HOME", "TERM", "SHELL", "SHLVL", "USER",
    "LOGNAME", "_", "HOSTNAME", "MPLBACKEND",
}  # fmt: skip

ENVIRON_DUMP = (
    "env; for f in /proc/[0-9]*/environ /proc/[0-9]*/task/[0-9]*/environ; do "
    "cat $f 2>/dev/null | tr '\\0' '\\n'; done; cat /etc/environment 2>/dev/null; true"
)


def _daemon_environ(daemon: Daemon) -> dict[str, str]:
    assert daemon.proc is not None
    raw = Path(f"/proc/{daemon.proc.pid}/environ").read_bytes()
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[name] = value
    return env


def _daemon_secrets(daemon: Daemon) -> dict[str, str]:
    """What of the daemon must never be seen inside: description -> text to look for."""
    env = _daemon_environ(daemon)
    assert env.get(SECRET_ENV) == os.environ[SECRET_ENV], "the daemon did not get the secret"
    found = {
        "the admin key": daemon.key,
        f"the daemon's {SECRET_ENV}": env[SECRET_ENV],
        "the daemon's home": str(daemon.home),
    }
    for name, value in env.items():
        if name.startswith("FIREBOX_") and len(value) >= 10:  # not "jail", a common word
            found[f"the daemon's {name}"] = value
        if name not in GENERIC and value:
            found[f"the daemon's variable {name}"] = f"{name}={value}"
    assert daemon.proc is not None
    cwd = os.readlink(f"/proc/{daemon.proc.pid}/cwd")
    if cwd != "/":
        found["the daemon's working directory"] = cwd
    return found


def _seen(text: str, wanted: dict[str, str]) -> list[str]:
    return [f"{what} ({value[:60]!r})" for what, value in wanted.items() if value in text]


def test_nothing_of_the_daemons_environment_is_visible_inside(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    wanted = _daemon_secrets(daemon)
    seen = {}
    for user in USERS:
        _, out = run(sandbox, ENVIRON_DUMP, user)
        assert "PATH=" in out, out[:300]  # the dump read something
        seen[user] = _seen(out, wanted)
    cell = sandbox.run_code(
        "import os; print('\\n'.join(f'{k}={v}' for k, v in os.environ.items()))"
    )
    assert cell.error is None and "PATH=" in "".join(cell.logs.stdout), cell
    seen["a code cell"] = _seen("".join(cell.logs.stdout), wanted)
    assert not any(seen.values()), f"visible inside the sandbox: {seen}"


def test_the_sandboxes_host_processes_hold_no_daemon_secret(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    # What the processes holding the sandbox (bwrap, the jail's agent, QEMU) could give away
    # to code that took one of them over: their environment and working directory.
    wanted = {k: v for k, v in _daemon_secrets(daemon).items() if "variable" not in k}
    wanted.pop("the daemon's working directory", None)  # checked below, as a place
    for pid, st in host_processes(daemon, sandbox.sandbox_id).items():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            assert not _seen(environ, wanted), (pid, st["Name"], _seen(environ, wanted))
            cwd = os.readlink(f"/proc/{pid}/cwd")
            assert not cwd.startswith(str(daemon.home)), (pid, st["Name"], cwd)


def _identity(sbx: Sandbox) -> dict[str, str]:
    out = {}
    for what, cmd in {
        "hostname": "hostname",
        "/etc/machine-id": "cat /etc/machine-id",
        "/run/machine-id": "cat /run/machine-id",
        "/var/lib/dbus/machine-id": "cat /var/lib/dbus/machine-id",
        "boot_id": "cat /proc/sys/kernel/random/boot_id",
    }.items():
        code, text = run(sbx, cmd + " 2>/dev/null", "root")
        if code == 0 and text.strip():
            out[what] = text.strip()
    return out


def test_each_sandbox_has_an_identity_of_its_own(
    sandbox: Sandbox, neighbour: Sandbox, daemon: Daemon
) -> None:
    a, b = _identity(sandbox), _identity(neighbour)
    if daemon.isolation == "gvisor":
        # gVisor's boot id is its kernel's, made at boot: sandboxes restored from one template
        # checkpoint share it (docs/BACKENDS.md); it is never the host's (checked below)
        assert a.get("boot_id") not in (
            None,
            Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        )
        a.pop("boot_id", None)
        b.pop("boot_id", None)
    assert "hostname" in a and "hostname" in b, (a, b)
    host = {
        "hostname": os.uname().nodename,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
    }
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            host[path] = Path(path).read_text().strip()
    problems = []
    for what in sorted(set(a) | set(b)):
        if a.get(what) == b.get(what):
            problems.append(f"{what} is the same in both sandboxes: {a.get(what)!r}")
        for name, value in (("the first", a.get(what)), ("the second", b.get(what))):
            if value is not None and value in host.values():
                problems.append(f"{what} of {name} sandbox is the host's: {value!r}")
    assert not problems, "; ".join(problems)


def test_nothing_is_left_behind_for_the_next_sandbox(daemon: Daemon) -> None:
    token = secrets.token_hex(8)
    left = f"fbx-left-{token}"
    first = Sandbox.create(timeout=1800, envs={"FBX_LEFT": left})  # killed below
    try:
        for place, user in (("/tmp", "user"), ("/home/user", "user"), ("/dev/shm", "user"),
                            ("/root", "root"), ("/var/tmp", "root")):  # fmt: skip
            run(first, f"echo {left} > {place}/{left}", user)
        # processes: one the command waits on, one that left its session, an abstract
        # socket, SysV shared memory
        first.commands.run(f"exec -a {left} sleep 600", background=True, timeout=0)
        run(first, f"setsid nohup bash -c 'exec -a {left}-detached sleep 600' >/dev/null 2>&1 &")
        first.commands.run(
            'python3 -c "import socket, time; s = socket.socket(socket.AF_UNIX); '
            f"s.bind('\\0{left}'); s.listen(); time.sleep(600)\"",
            background=True,
            timeout=0,
        )
        _, ipc = run(first, "ipcmk -M 4096 && ipcs -m", "root")
        first.run_code(f"left_{token} = '{left}'")
        _, ps = run(first, "ps -eo args", "root")
        assert f"{left}-detached" in ps and f"{left} 600" in ps, ps
        # a jail's processes are the host's; a VM's and gVisor's live in their own kernel
        assert _host_processes_with(left) or daemon.isolation in ("microvm", "gvisor")
    finally:
        first.kill()
    # on the host: not one of its processes outlives it
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _host_processes_with(left):
        time.sleep(0.1)
    assert not _host_processes_with(left), "processes of a killed sandbox still run on the host"

    second = Sandbox.create(timeout=1800)
    try:
        for user in USERS:
            # (the command names nothing of what it looks for: it shows in `ps` itself)
            _, out = run(
                second,
                "ls -a /tmp /home/user /dev/shm /var/tmp /root 2>&1; ps -eo args; env; "
                "cat /proc/net/unix; ipcs -m; head -c 100 /tmp/* /home/user/* /dev/shm/* "
                "/root/* 2>/dev/null",
                user,
            )
            assert left not in out, (user, out)
        keys = [line.split()[0] for line in ipc.splitlines() if line.startswith("0x")]
        if daemon.isolation == "gvisor":
            # gVisor's kernel lists no segments (no /proc/sysvipc): looked up by the id made
            shmid = ipc.split("Shared memory id:")[1].split()[0]
            code, out = run(second, f"ipcs -m -i {shmid} 2>&1", "root")
            assert code != 0 or "bytes" not in out, (ipc, out)
        else:
            assert keys, ipc
            _, out = run(second, "ipcs -m", "root")
            assert not any(k in out for k in keys), (ipc, out)
        cell = second.run_code(f"print('left_{token}' in globals())")
        assert "".join(cell.logs.stdout).strip() == "False", cell
    finally:
        second.kill()


def _host_processes_with(text: str) -> list[int]:
    found = []
    needle = text.encode()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
    return found


def test_no_daemon_secret_in_any_file_inside(sandbox: Sandbox, daemon: Daemon) -> None:
    for text in (daemon.key, os.environ[SECRET_ENV], str(daemon.home)):
        for user in USERS:
            _, out = run(
                sandbox,
                f"grep -rlsF -- '{text}' /etc /opt /home /tmp /root /run /var /dev/shm "
                "2>/dev/null | head -5; true",
                user,
            )
            assert out.strip() == "", (user, text, out)
