"""Tampering: code inside a sandbox goes after the agent that serves it (kills it, stops it,
writes garbage to its channel to the daemon, panics its kernel).

Either the operation is refused (and the sandbox keeps working), or the sandbox is reported
ended as crashed within 5 s (+2 s slack) and everything it held on the host is freed. Either
way the daemon keeps answering /health, a neighbour sandbox keeps working, and no client call
outlives its deadline. Which outcome a backend gives is what it allows by design: in a jail the
agent is the sandbox's uid 0 (root inside may signal it), pid 1 is bubblewrap's init; in a
microVM the agent is the guest's root and the guest has a kernel of its own to panic.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from firebox import CommandExitException, Sandbox
from firebox.exceptions import FireboxException, TimeoutException
from firebox.images.cache import image_root
from tests.conftest import Daemon
from tests.security.helpers import agent_pid, run, sandbox_alive, wait_gone

REPORT_WITHIN = 5.0  # seconds: a dead or hung agent is reported crashed within this
SLACK = 2.0  # for a loaded host's API calls
CALL_TIMEOUT = REPORT_WITHIN  # the deadline each call of these tests gives itself
# A probe that tries many ways in (garbage, the port re-bound) runs to its end before its
# outcome counts: a generous timeout of its own, so that a slow guest is not taken for a
# refusal. Its call must end within that timeout (+ SLACK), or at once if the sandbox crashes.
PROBE_TIMEOUT = 60.0

GARBAGE = r"""
import ctypes, glob, os, socket, stat
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
junk = os.urandom(4096)
AGENT = {agent}

def attempt(kind, what, fn):
    try:
        fn()
        print(kind, what)
    except OSError as e:
        print("refused", what, e.strerror)

def write_path(path):
    def go():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            os.write(fd, junk)
        finally:
            os.close(fd)
    return go

# a microVM's channel: its virtio-serial port, by every name it has
for p in sorted(set(glob.glob("/dev/vport*") + glob.glob("/dev/virtio-ports/*"))):
    attempt("WROTE", p, write_path(p))
# the serial console (a microVM's, read by the daemon for its diagnostics)
for p in ("/dev/console", "/dev/ttyS0", "/dev/hvc0"):
    if os.path.exists(p):
        attempt("CONSOLE", p, write_path(p))
# the agent's own descriptors, through /proc and through pidfd_getfd
try:
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{{AGENT}}/fd"))
except OSError as e:
    print("refused", "listing the agent's descriptors", e.strerror)
    fds = list(range(64))
for fd in fds:
    attempt("WROTE", f"/proc/{{AGENT}}/fd/{{fd}}", write_path(f"/proc/{{AGENT}}/fd/{{fd}}"))
pidfd = libc.syscall(434, AGENT, 0)
for fd in fds:
    def steal(fd=fd):
        got = libc.syscall(438, pidfd, fd, 0)
        if got < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        os.write(got, junk)
    attempt("WROTE", f"pidfd_getfd of the agent's {{fd}}", steal)
# a socket this command inherited (the jail's channel is a socket the agent holds)
for fd in os.listdir("/proc/self/fd"):
    fd = int(fd)
    try:
        if fd > 2 and stat.S_ISSOCK(os.fstat(fd).st_mode):
            attempt("WROTE", f"inherited socket {{fd}}", lambda fd=fd: os.write(fd, junk))
    except OSError:
        pass
# every unix socket with a name in this network namespace
for line in open("/proc/net/unix").read().splitlines()[1:]:
    parts = line.split()
    if len(parts) >= 8:
        name = parts[7]
        address = "\0" + name[1:] if name.startswith("@") else name
        def send(address=address):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(address)
                s.sendall(junk)
        attempt("WROTE", f"unix socket {{name}}", send)
print("DONE")
"""

# The virtio-serial port re-bound: its driver let go of the device (the agent's port goes
# away) and takes it back, so that the port can be opened afresh and written to (once udev-less
# devtmpfs has made its node again: waited for, 10 s at most). DONE says it ran to its end.
REBIND = (
    "cd /sys/bus/virtio/drivers/virtio_console && for d in virtio*; do "
    "echo $d > unbind; echo $d > bind; done; "
    "until ls /dev/vport* >/dev/null 2>&1 || [ $SECONDS -ge 10 ]; do sleep 0.1; done; "
    "for p in /dev/vport*; do head -c 4096 /dev/urandom > $p && echo WROTE $p; done; echo DONE"
)

# The attacks that run to an end of their own (the rest end, or not, with the agent's fate)
LONG = {"garbage-on-the-channel", "port-rebound"}


def _prepare(sbx: Sandbox, daemon: Daemon, how: str) -> Callable[[], str]:
    """What the attack needs beforehand (the agent's pid, a script's file), done now; returns
    the attack itself, which returns what it printed. Only the attack is timed."""
    agent = agent_pid(sbx)
    if how == "agent-killed":
        return lambda: run(sbx, f"kill -9 {agent}", "root", timeout=CALL_TIMEOUT)[1]
    if how == "agent-stopped":
        return lambda: run(sbx, f"kill -STOP {agent}", "root", timeout=CALL_TIMEOUT)[1]
    if how == "agent-signalled-by-the-user":
        cmd = f"kill -9 {agent}; kill -STOP {agent}; kill -SEGV {agent}"
        return lambda: run(sbx, cmd, "user")[1]
    if how == "agent-signalled-by-a-cell":
        code = (
            "import os, signal\n"
            f"for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n"
            f"    try:\n        os.kill({agent}, sig)\n"
            "    except OSError as e:\n        print('refused', e)\n"
        )

        def cell() -> str:
            ex = sbx.run_code(code, timeout=CALL_TIMEOUT)
            return "".join(ex.logs.stdout) + str(ex.error or "")

        return cell
    if how == "init-signalled":
        cmd = "kill -9 1; kill -STOP 1; kill -SEGV 1"
        return lambda: run(sbx, cmd, "root", timeout=CALL_TIMEOUT)[1]
    if how == "kernel-panic":
        # a jail shares the host's kernel: there, ask only for the help text (harmless were
        # it ever allowed); a microVM's kernel is its own to crash
        key = "c" if daemon.isolation == "microvm" else "h"
        cmd = f"echo {key} > /proc/sysrq-trigger"
        return lambda: run(sbx, cmd, "root", timeout=CALL_TIMEOUT)[1]
    if how == "garbage-on-the-channel":
        path = f"/tmp/probe-{secrets.token_hex(4)}.py"
        sbx.files.write(path, GARBAGE.format(agent=agent), user="root")
        return lambda: run(sbx, f"python3 {path}", "root", timeout=PROBE_TIMEOUT)[1]
    if how == "port-rebound":
        return lambda: run(sbx, REBIND, "root", timeout=PROBE_TIMEOUT)[1]
    raise AssertionError(how)


def _ended(sbx: Sandbox) -> str | None:
    """Why the sandbox ended, or None while it runs; the call answers within its deadline."""
    started = time.monotonic()
    try:
        sbx.get_info(request_timeout=CALL_TIMEOUT)
        return None
    except TimeoutException as e:
        raise AssertionError(f"the daemon did not answer get_info within {CALL_TIMEOUT} s") from e
    except FireboxException as e:
        return str(e)
    finally:
        assert time.monotonic() - started <= CALL_TIMEOUT + SLACK


def _freed(daemon: Daemon, sandbox_id: str, pids: list[int]) -> list[str]:
    left = [f"process {p}" for p in pids if not wait_gone(p)]
    deadline = time.monotonic() + 10

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
    if cgroup_left():
        left.append("its cgroup")
    if overlay_left():
        left.append("its disk overlay")
    return left


@pytest.fixture
def victim(daemon: Daemon) -> Iterator[Sandbox]:
    sbx = Sandbox.create(timeout=1800)  # killed at teardown: a lifetime, not a deadline
    try:
        sbx.commands.run("true")  # the agent has answered once since the sandbox started
        yield sbx
    finally:
        with contextlib.suppress(FireboxException):
            sbx.kill()


# how, and the outcomes allowed per backend: "refused" (the sandbox works on) or "crashed"
# (reported and freed). Either is a pass of the boundary; where a backend's design fixes the
# outcome (a microVM's guest root may kill its agent and panic its own kernel), only that one.
EITHER = {"crashed", "refused"}
CASES = [
    pytest.param("agent-killed", {"microvm": {"crashed"}}, id="agent-killed-by-root"),
    pytest.param("agent-stopped", {"microvm": {"crashed"}}, id="agent-stopped-by-root"),
    # the agent is root's: the sandbox's user may not signal it, from a command or a cell
    pytest.param("agent-signalled-by-the-user", {"*": {"refused"}}, id="agent-signalled-by-user"),
    pytest.param("agent-signalled-by-a-cell", {"*": {"refused"}}, id="agent-signalled-by-cell"),
    pytest.param("init-signalled", {}, id="init-signalled-by-root"),
    # a jail shares the host's kernel: it must never reach its sysrq (only asked for help)
    pytest.param("kernel-panic", {"microvm": {"crashed"}, "jail": {"refused"}}, id="kernel-panic"),
    pytest.param("garbage-on-the-channel", {}, id="garbage-on-the-channel"),
    pytest.param(
        "port-rebound",
        {},
        id="agent-port-rebound",
        marks=pytest.mark.backends("microvm"),  # a jail has no device to re-bind
    ),
]


@pytest.mark.parametrize("how,allowed", CASES)
def test_tampering_with_the_agent_is_refused_or_reported(
    daemon: Daemon,
    victim: Sandbox,
    neighbour: Sandbox,
    how: str,
    allowed: dict[str, set[str]],
) -> None:
    expected = allowed.get(daemon.isolation, allowed.get("*", EITHER))
    pids = daemon.sandbox_pids(victim.sandbox_id)
    attack = _prepare(victim, daemon, how)
    deadline = PROBE_TIMEOUT if how in LONG else CALL_TIMEOUT
    started = time.monotonic()
    try:
        said = attack()
    except FireboxException as e:  # the agent went away under the call
        said = f"the call ended: {e}"
    ended = time.monotonic()
    took = ended - started
    assert took <= deadline + SLACK, f"the call outlived its deadline: {took:.1f} s"
    # a call made while the agent may be gone or hung answers within its deadline too
    probe_started = time.monotonic()
    with contextlib.suppress(FireboxException):
        victim.files.read("/etc/hostname", request_timeout=CALL_TIMEOUT)
    assert time.monotonic() - probe_started <= CALL_TIMEOUT + SLACK

    # Ended within the bound, or still running (and working) once the bound has passed. The
    # bound counts from the attack's start, where its first act is the crash; a long probe
    # may crash the sandbox at any point up to its end, so there it counts from the end.
    since = ended if how in LONG else started
    why = None
    while why is None and time.monotonic() - since <= REPORT_WITHIN + SLACK:
        why = _ended(victim)
        if why is None:
            time.sleep(0.1)
    if why is not None:
        outcome = "crashed"
        took = time.monotonic() - since
        assert "crashed" in why, why
        assert took <= REPORT_WITHIN + SLACK, f"reported after {took:.1f} s: {why}"
        assert not _freed(daemon, victim.sandbox_id, pids), _freed(daemon, victim.sandbox_id, pids)
    else:
        outcome = "refused"
        assert sandbox_alive(victim), f"the sandbox neither works nor was reported: {said}"
        # a probe counts as refused only if it ran to its end (not cut off by its timeout)
        if how in LONG:
            assert "DONE" in said, f"{how} did not run to its end: {said.strip()[-300:]}"
        # refused all the way: garbage that reached the channel must have ended the sandbox.
        # gVisor lets root inside open the agent's pipes through /proc (its kernel checks no
        # capabilities there): what it wrote reached a pipe of the sandbox's own, never the
        # channel (a host socket, which cannot be opened again), as the sandbox still working
        # shows (docs/BACKENDS.md)
        if daemon.isolation != "gvisor":
            assert "WROTE" not in said, said
    print(f"{how}: {outcome}; the sandbox said: {said.strip()[-2000:]}")  # shown with -rP
    assert outcome in expected, f"{how}: {outcome} ({said.strip()[-300:]})"

    with daemon.client() as c:
        assert c.get("/health", timeout=CALL_TIMEOUT).status_code == 200
    assert neighbour.commands.run("echo alive", timeout=CALL_TIMEOUT).stdout == "alive\n"


def test_root_inside_cannot_look_into_the_agent(sandbox: Sandbox, daemon: Daemon) -> None:
    # The agent holds capabilities (in the jail's user namespace, or as the guest's root), a
    # sandbox command none, so the kernel's ptrace access check keeps even root inside out of
    # the agent's descriptors, memory and environment.
    agent = agent_pid(sandbox)
    if daemon.isolation == "gvisor":
        # gVisor's kernel checks only uids and dumpability for /proc: root inside may list the
        # agent's descriptors and read its environment (nothing but what the bundle sets), never
        # its memory, nor open its channel (docs/BACKENDS.md)
        _, out = run(
            sandbox,
            f"head -c1 /proc/{agent}/mem 2>&1; tr '\\0' '\\n' < /proc/{agent}/environ; "
            f"for f in /proc/{agent}/fd/*; do case $(readlink $f) in host:*) "
            "timeout 2 cat $f 2>&1 | head -c 64;; esac; done; true",
            "root",
        )
        assert "Permission denied" in out, out
        names = {line.split("=")[0] for line in out.splitlines() if "=" in line}
        bundle = {"PATH", "LANG", "FIREBOX_BACKEND", "FIREBOX_SECCOMP", "FIREBOX_AGENT_FD"}
        bundle |= {"FIREBOX_CPUS"}  # the CPU limit, for the thread pools (limits.thread_env)
        # HOME runsc adds; the warm imports, a template checkpoint's
        assert names <= bundle | {"HOME", "FIREBOX_WARM_IMPORTS"}, names
        assert '"t":' not in out, out  # not one frame of the channel
        return
    _, out = run(
        sandbox,
        f"ls -l /proc/{agent}/fd/ 2>&1; cat /proc/{agent}/environ 2>&1; "
        f"head -c1 /proc/{agent}/mem 2>&1; cat /proc/{agent}/maps 2>&1; "
        f"ls -l /proc/{agent}/map_files/ 2>&1; true",
        "root",
    )
    for text in ("vport", "socket:", "FIREBOX_AGENT", "FIREBOX_BACKEND", "python3", "[heap]"):
        assert text not in out, (text, out)
    assert out.count("Permission denied") >= 3, out


BOMB = """
import os, time
full = False
while True:
    try:
        os.fork() or time.sleep(60)
    except OSError:
        if not full:
            print("full", flush=True)  # every pid the sandbox has is taken
            full = True
        time.sleep(0.01)
"""


def test_a_fork_bomb_does_not_cost_the_owner_control(sandbox: Sandbox, daemon: Daemon) -> None:
    if daemon.isolation == "gvisor":
        # a gVisor sandbox's processes cost host memory beyond its own (their address spaces'
        # stubs): the bomb may end it whole at its memory limit, with an error saying so
        # (test_exhaustion's memory cases show the same); the owner keeps the daemon
        doomed = Sandbox.create(timeout=600)
        doomed.files.write("/tmp/bomb.py", BOMB)
        bomb = doomed.commands.run("python3 /tmp/bomb.py", background=True, timeout=600)
        try:
            for _ in bomb:
                if "full" in bomb.stdout:
                    break
        except FireboxException as e:
            assert "memory limit" in str(e), e
        else:
            assert "full" in bomb.stdout, bomb.stdout
        finally:
            with contextlib.suppress(FireboxException):
                doomed.kill()
        assert sandbox.commands.run("echo alive").stdout == "alive\n"
        return
    sandbox.files.write("/tmp/bomb.py", BOMB)
    bomb = sandbox.commands.run("python3 /tmp/bomb.py", background=True, timeout=600)
    for _ in bomb:  # read its output until it says it has every pid (or it ends)
        if "full" in bomb.stdout:
            break
    assert "full" in bomb.stdout, f"the bomb ended before it filled the sandbox: {bomb.stdout}"
    listed = {p.pid for p in sandbox.commands.list()}
    assert bomb.pid in listed
    assert sandbox.commands.kill(bomb.pid) is True
    with contextlib.suppress(CommandExitException):
        bomb.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            assert sandbox.commands.run("echo alive").stdout == "alive\n"
            break
        except CommandExitException:
            time.sleep(0.2)  # the last children are still exiting
    else:
        raise AssertionError("the sandbox did not recover after the bomb was killed")
