"""Posture: how a sandbox's processes run, read from the host's /proc.

Per sandbox the daemon starts one process (bubblewrap) as an unprivileged host uid inside the
sandbox's cgroup; everything else of the sandbox (the jail's agent and commands, or QEMU) runs
in namespaces of its own, under seccomp, with no-new-privs and no capability over the host.

gVisor's launcher is ``runsc run``, which stays root to set the sandbox up and then waits:
nothing of the sandbox can reach it. Its sentry and gofer run as the sandbox's own uid range,
in user namespaces of their own where they hold the capabilities runsc gives them (over those
namespaces only), under runsc's seccomp filters; runsc leaves them in the host's PID and
cgroup namespaces (docs/BACKENDS.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from firebox import Sandbox
from firebox.backends.jail.bwrap import AGENT_CAPS
from tests.conftest import Daemon
from tests.security.helpers import (
    UID_BASE,
    cgroup_file,
    host_namespaces,
    host_processes,
    is_agent,
    py,
    qemu_pid,
    run,
    status,
)

CAPS = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]  # fmt: skip
# What the jail's agent may hold inside its user namespace (bwrap.py says why, one by one);
# these it must never hold, whatever that list becomes.
NEVER = {
    "DAC_READ_SEARCH", "NET_ADMIN", "NET_RAW", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT",
    "SYS_PTRACE", "SYS_ADMIN", "SYS_BOOT", "SYS_TIME", "MKNOD", "SETFCAP", "MAC_ADMIN",
    "MAC_OVERRIDE", "SYSLOG", "PERFMON", "BPF", "CHECKPOINT_RESTORE", "AUDIT_CONTROL",
}  # fmt: skip
AGENT_MASK = sum(1 << CAPS.index(c.removeprefix("CAP_")) for c in AGENT_CAPS)
OWN_NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
# runsc keeps its sentry and gofer in the host's PID and cgroup namespaces
GVISOR_NAMESPACES = ("user", "mnt", "net", "ipc", "uts")


def _runsc_launcher(daemon: Daemon, procs: dict[int, dict[str, str]], pid: int) -> bool:
    """Whether ``pid`` is a gVisor sandbox's ``runsc run`` (root, in the host's namespaces)."""
    return daemon.isolation == "gvisor" and pid == _launcher(daemon, procs)


def _caps(value: str) -> set[str]:
    bits = int(value, 16)
    return {name for i, name in enumerate(CAPS) if bits >> i & 1} | (
        {f"bit{bits.bit_length() - 1}"} if bits >> len(CAPS) else set()
    )


def _launcher(daemon: Daemon, procs: dict[int, dict[str, str]]) -> int:
    """The one process the daemon started for the sandbox (bubblewrap, in the host's
    namespaces, where it sets up the others)."""
    assert daemon.proc is not None
    launched = [p for p, st in procs.items() if int(st["PPid"]) == daemon.proc.pid]
    assert len(launched) == 1, {p: (st["Name"], st["PPid"]) for p, st in procs.items()}
    return launched[0]


def test_every_process_runs_as_an_unprivileged_uid_of_its_sandbox(
    sandbox: Sandbox, neighbour: Sandbox, daemon: Daemon
) -> None:
    uids: list[set[int]] = []
    for sbx in (sandbox, neighbour):
        seen = set()
        procs = host_processes(daemon, sbx.sandbox_id)
        for pid, st in procs.items():
            if _runsc_launcher(daemon, procs, pid):
                assert st["Name"] == "runsc", (pid, st["Name"])
                continue
            ids = [int(x) for x in st["Uid"].split() + st["Gid"].split()]
            assert min(ids) >= UID_BASE, (pid, st["Name"], st["Uid"], st["Gid"])
            groups = [int(g) for g in st["Groups"].split()]
            assert all(g >= UID_BASE for g in groups), (pid, st["Name"], st["Groups"])
            seen |= set(ids)
        uids.append(seen)
    # no two running sandboxes share a host uid (nor the per-uid kernel limits)
    assert not uids[0] & uids[1], uids


def test_no_capability_over_the_host_no_new_privileges_and_seccomp(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    procs = host_processes(daemon, sandbox.sandbox_id)
    launcher = _launcher(daemon, procs)
    host_user_ns = host_namespaces()["user"]
    confined = 0
    for pid, st in procs.items():
        name = f"{pid} {st['Name']}"
        if _runsc_launcher(daemon, procs, pid):
            continue  # root's runtime, reachable by nothing of the sandbox (module docstring)
        assert st["NoNewPrivs"] == "1", name
        if daemon.isolation == "gvisor":
            # the sentry and gofer: runsc's capabilities, over their own user namespace only
            assert os.readlink(f"/proc/{pid}/ns/user") != host_user_ns, name
            assert st["Seccomp"] == "2", (name, st["Seccomp"])
            confined += 1
            continue
        for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            held = _caps(st[cap])
            if pid == launcher or os.readlink(f"/proc/{pid}/ns/user") == host_user_ns:
                assert not held, (name, cap, held)  # capabilities over the host: none
                continue
            # inside the sandbox's own user namespace: only the jail's agent holds any, and
            # only those it is meant to (over its own namespaces, nothing of the host's)
            assert not held & NEVER, (name, cap, held)
            if cap in ("CapEff", "CapPrm"):
                assert not held or (is_agent(pid) and int(st[cap], 16) & ~AGENT_MASK == 0), (
                    name,
                    cap,
                    held,
                )
            else:
                assert not held, (name, cap, held)
        if pid == launcher:
            continue
        confined += 1
        # every process of a jail; of a microVM, QEMU (the process the guest can reach)
        if daemon.isolation == "jail" or st["Name"].startswith("qemu-system"):
            assert st["Seccomp"] == "2", (name, st["Seccomp"])
        bounding = int(st["CapBnd"], 16)
        assert bounding & ~AGENT_MASK == 0, (name, "CapBnd", _caps(st["CapBnd"]))
        if st["Name"].startswith("qemu-system"):
            assert bounding == 0, (name, "CapBnd", _caps(st["CapBnd"]))
    assert confined, "no process of the sandbox outside its launcher"


def test_namespaces_of_its_own(sandbox: Sandbox, daemon: Daemon) -> None:
    procs = host_processes(daemon, sandbox.sandbox_id)
    launcher = _launcher(daemon, procs)
    host = host_namespaces()
    inner = [p for p in procs if p != launcher]
    assert inner
    namespaces = set()
    own = GVISOR_NAMESPACES if daemon.isolation == "gvisor" else OWN_NAMESPACES
    for pid in inner:
        for ns in own:
            link = os.readlink(f"/proc/{pid}/ns/{ns}")
            assert link != host[ns], (pid, procs[pid]["Name"], ns)
            assert link != os.readlink(f"/proc/self/ns/{ns}"), (pid, ns)
            namespaces.add(link)
    # and none of another sandbox's: a second sandbox's processes share none of them
    with Sandbox.create(timeout=1800) as other:
        for pid in host_processes(daemon, other.sandbox_id):
            with contextlib.suppress(OSError):
                for ns in own:
                    link = os.readlink(f"/proc/{pid}/ns/{ns}")
                    assert link not in namespaces or link == host[ns], (pid, ns)


def _limits(pid: int) -> tuple[int, str, str]:
    try:
        memory = int(cgroup_file(pid, "memory", "memory.limit_in_bytes"))
    except AssertionError:
        memory_text = cgroup_file(pid, "memory", "memory.max")
        memory = 2**63 if memory_text == "max" else int(memory_text)
    try:
        pids = cgroup_file(pid, "pids", "pids.max")
    except AssertionError:
        pids = "max"
    try:
        quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us")
    except AssertionError:
        quota = cgroup_file(pid, "cpu", "cpu.max").split()[0]
    return memory, pids, quota


def test_cgroup_limits_hold_every_process(sandbox: Sandbox, daemon: Daemon) -> None:
    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    procs = host_processes(daemon, sandbox.sandbox_id)
    own = f"/{daemon.cgroup_parent}/{sandbox.sandbox_id}"
    for pid in procs:
        lines = [x.split(":", 2) for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
        # cgroup v1's memory, pids and cpu hierarchies; or v2's one, where there is only that
        limited = [x for x in lines if {"memory", "pids", "cpu"} & set(x[1].split(","))]
        for _, controllers, path in limited or [x for x in lines if x[1] == ""]:
            assert path.rstrip("/").endswith(own), (pid, controllers, path)
        memory, pids, quota = _limits(pid)
        assert memory < total, (pid, "no memory limit", memory)
        assert pids != "max" and int(pids) > 0, (pid, "no pids limit", pids)
        assert quota not in ("max", "-1") and int(quota) > 0, (pid, "no CPU limit", quota)


def test_the_sandboxes_processes_see_none_of_the_hosts_files(
    sandbox: Sandbox, daemon: Daemon, marker: tuple[Path, str]
) -> None:
    path, _ = marker
    procs = host_processes(daemon, sandbox.sandbox_id)
    launcher = _launcher(daemon, procs)
    for pid, st in procs.items():
        if pid == launcher:
            continue
        root = Path(f"/proc/{pid}/root")
        name = f"{pid} {st['Name']}"
        assert not (root / daemon.home.relative_to("/") / "admin.key").exists(), name
        assert not (root / path.relative_to("/")).exists(), name
        assert not (root / "work").exists(), name  # the host's checkout
        if st["Name"].startswith("qemu-system"):
            assert not (root / "etc" / "passwd").exists(), name
            assert not (root / "root").exists(), name


def test_only_loopback_and_no_route_to_the_host(sandbox: Sandbox) -> None:
    # (the network's own category, test_egress.py, is another's: this stays as posture, the
    # sandbox's network namespace, until then)
    code, out = run(sandbox, "tail -n +3 /proc/net/dev | cut -d: -f1", "root")
    assert out.split() == ["lo"]
    received: list[bytes] = []
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(1)
    canary.settimeout(0.2)
    port = canary.getsockname()[1]
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                conn, _ = canary.accept()
            except OSError:
                continue
            received.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        code, out = py(
            sandbox,
            "import socket\n"
            "s = socket.socket(); s.settimeout(2)\n"
            f"try:\n s.connect(('127.0.0.1', {port})); s.send(b'escaped'); print('CONNECTED')\n"
            "except OSError as e:\n print('refused', e)\n",
        )
        assert "CONNECTED" not in out
        # and no route anywhere else: the only interface is lo (checked above), so connect
        # fails at once without sending a packet (no test traffic leaves the host's loopback)
        code, out = run(sandbox, "ip route 2>/dev/null; cat /proc/net/route", "root")
        routes = [
            line
            for line in out.strip().splitlines()
            if not line.startswith("Iface") and " dev lo " not in f"{line} "  # gVisor lists lo's
        ]
        assert routes == [], out
    finally:
        stop.set()
        thread.join(2)
        canary.close()
    assert received == []


# -- the jail ----------------------------------------------------------------------------------


@pytest.mark.backends("jail")  # a microVM's processes are not host processes
def test_root_inside_is_an_unprivileged_uid_on_the_host(sandbox: Sandbox, daemon: Daemon) -> None:
    handle = sandbox.commands.run("exec sleep 300", background=True, user="root")
    try:
        deadline = time.monotonic() + 30
        seen: dict[int, tuple[int, str]] = {}
        while time.monotonic() < deadline:
            seen = {}
            for pid in daemon.sandbox_pids(sandbox.sandbox_id):
                with contextlib.suppress(OSError):
                    st = status(pid)
                    seen[pid] = (int(st["Uid"].split()[0]), st["Name"])
            if any(name == "sleep" for _, name in seen.values()):
                break
            time.sleep(0.05)
        # everything in the sandbox, the root command included, runs as unprivileged host uids
        assert any(name == "sleep" for _, name in seen.values()), seen
        assert all(uid >= UID_BASE for uid, _ in seen.values()), seen
    finally:
        handle.kill()


@pytest.mark.backends("jail")  # a microVM's kernel knows nothing of the host's cgroups
def test_every_process_is_in_the_sandbox_cgroup_and_its_namespace_root(sandbox: Sandbox) -> None:
    # The cgroup namespace is rooted at the sandbox's own cgroup: every process inside (the
    # agent and bwrap's init included) sees "/" for its controllers, and nothing of the host's
    # cgroup layout.
    _, out = run(sandbox, "cat /proc/[0-9]*/cgroup", "root")
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert line.split(":", 2)[2] == "/", line


@pytest.mark.backends("jail")  # a microVM's agent is not a host process
def test_the_agent_holds_no_stray_descriptors(sandbox: Sandbox, daemon: Daemon) -> None:
    # the default context has started (a fresh jail starts it right after its hello, and
    # mid-start the agent holds that start's pipes and /dev/null): then nothing is in flight
    sandbox.run_code("1")
    agents = [p for p in daemon.sandbox_pids(sandbox.sandbox_id) if is_agent(p)]
    assert len(agents) == 1
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{agents[0]}/fd"))
    kinds = [os.readlink(f"/proc/{agents[0]}/fd/{fd}").split(":")[0] for fd in fds[3:]]
    # stdio and the channel (a socket); then per code-context interpreter (the default python
    # one is started at once) its pidfd and four pipes: commands, messages, stdout, stderr
    assert fds[:3] == [0, 1, 2] and kinds.count("socket") == 1, kinds
    interpreters = kinds.count("anon_inode")
    assert interpreters == 1 and kinds.count("pipe") == 4 * interpreters, kinds
    assert len(kinds) == 1 + 5 * interpreters, kinds


# -- the microVM -------------------------------------------------------------------------------


@pytest.mark.backends("microvm")
def test_qemu_is_started_with_its_own_sandbox_and_no_network(
    sandbox: Sandbox, daemon: Daemon
) -> None:
    cmdline = Path(f"/proc/{qemu_pid(daemon, sandbox.sandbox_id)}/cmdline").read_bytes()
    args = cmdline.split(b"\0")
    sandbox_arg = args[args.index(b"-sandbox") + 1].decode()
    for deny in ("spawn=deny", "elevateprivileges=deny", "resourcecontrol=deny", "obsolete=deny"):
        assert deny in sandbox_arg, sandbox_arg
    assert b"-netdev" not in args and b"-nic" not in args  # no network device at all
    devices = [args[i + 1] for i, a in enumerate(args[:-1]) if a == b"-device"]
    assert devices and not [d for d in devices if b"net" in d], devices


@pytest.mark.backends("microvm")
def test_the_guest_runs_its_own_kernel(sandbox: Sandbox) -> None:
    guest = sandbox.commands.run("uname -r").stdout.strip()
    assert guest and guest != os.uname().release
    assert sandbox.commands.run("ls /sys/class/net").stdout.split() == ["lo"]
