"""The bubblewrap command line of a jail, built from a spec as an ordered containment checklist.

Each step names what it protects against. bubblewrap fails loudly when a step cannot be done,
so a jail is either fully contained or not started at all.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from firebox.backends.agent_files import AGENT_COMMAND, GUEST_LIB
from firebox.backends.base import SandboxSpec
from firebox.backends.jail import rwdisk

# Capabilities the agent keeps inside its user namespace (they mean nothing on the host):
# switching to the sandbox user (SETUID/SETGID), locking securebits so that nothing it starts
# ever holds a capability (SETPCAP), signalling the user's processes (KILL), and acting as the
# sandbox's root for the files API (CHOWN, DAC_OVERRIDE, FOWNER). Everything else is dropped.
AGENT_CAPS = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_KILL",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    # lower the open-files limit of what it starts (prlimit on a process of another uid);
    # raising a limit past its hard value stays a host-level privilege, out of reach
    "CAP_SYS_RESOURCE",
)

# What a template build's root holds besides (agent/privs.py ``harden``): the rest of a rootless
# container's default set, for package managers (setuid bits kept, file capabilities set,
# chroot). In a user namespace they act on the sandbox's own ids only.
BUILD_CAPS = (
    *AGENT_CAPS,
    "CAP_FSETID",
    "CAP_SETFCAP",
    "CAP_SYS_CHROOT",
    "CAP_NET_BIND_SERVICE",
    "CAP_AUDIT_WRITE",
)
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class JailFds:
    """File descriptors bwrap inherits (numbers in the child, passed with ``pass_fds``)."""

    agent: int  # our socket end for the agent; dup'ed to 3 is not needed: bwrap keeps numbers
    seccomp: int
    info: int
    userns_block: int
    # pipes holding the sandbox's own machine id and boot id (``identity_fds``)
    machine_id: int
    boot_id: int


# The agent's whole environment (apart from where its channel is, and its CPU limit:
# ``agent_env``): the sandbox's settings reach it over the channel (protocol.Configure), as in
# a microVM.
AGENT_ENV = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "FIREBOX_BACKEND": "jail"}


def agent_env(spec: SandboxSpec) -> dict[str, str]:
    """The agent's environment in this jail: ``AGENT_ENV`` and the sandbox's CPU limit, which
    a jail's processes cannot see (a cgroup quota: they see every host core), for the thread
    pools of what the agent starts (agent/limits.py ``thread_env``). Before the agent's first
    fork, unlike protocol.Configure: its default python interpreter is one."""
    return {**AGENT_ENV, "FIREBOX_CPUS": f"{spec.limits.cpu_count:g}"}


def bwrap_argv(
    spec: SandboxSpec, agent_lib: Path, fds: JailFds, rw: Path, holder: list[str] | None = None
) -> list[str]:
    """bubblewrap running the agent, or (``holder``) a placeholder holding the namespaces for
    an agent the zygote forks in, with the agent's confinement applied by the zygote."""
    argv = ["bwrap"]
    # 1. Every namespace: the jail sees no host process, mount, network, IPC, hostname or
    #    cgroup, and its user namespace maps its ids onto unprivileged host ids (written by the
    #    daemon while bwrap waits on the block fd: see backend.py).
    argv += [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--userns-block-fd",
        str(fds.userns_block),
        "--info-fd",
        str(fds.info),
        "--uid",
        "0",
        "--gid",
        "0",
        "--hostname",
        spec.hostname,
    ]
    # 2. Filesystem: the image read-only as /, fresh /proc and a minimal /dev, size-capped
    #    the sandbox's own capped disk for the only writable places (home, /tmp, /root — the
    #    image's belongs to host root, unmapped inside — and /dev/shm), the agent's code
    #    read-only. No host path else.
    build = bool(spec.build_layers)
    argv += [
        # a build's root: its writable overlay, mounted by the daemon (backend.py)
        *(("--bind", str(build_root(rw)), "/") if build else ("--ro-bind", str(spec.rootfs), "/")),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--ro-bind",
        str(agent_lib),
        GUEST_LIB,
        "--chdir",
        "/",
    ]
    # the writable places: directories of the sandbox's one capped disk (rwdisk.py)
    argv += rwdisk.bwrap_args(rw, build)
    # an identity of its own: the host's boot id (shared kernel) and the image's machine id
    # (shared by every sandbox) would tell sandboxes apart from nothing, and tie them together
    argv += ["--ro-bind-data", str(fds.machine_id), "/etc/machine-id"]
    argv += ["--ro-bind-data", str(fds.boot_id), "/proc/sys/kernel/random/boot_id"]
    # 3. Process hardening: a new session (no TIOCSTI into a terminal), only the agent's
    #    capabilities, and the seccomp deny list (seccomp_policy.json). Not --die-with-parent:
    #    the jail outlives the daemon (its supervisor holds its channel; a restart adopts it).
    argv += ["--new-session", "--cap-drop", "ALL"]
    for cap in (BUILD_CAPS if build else AGENT_CAPS) if holder is None else ():
        argv += ["--cap-add", cap]
    argv += ["--seccomp", str(fds.seccomp)]
    # 4. A clean environment: nothing of the daemon's leaks in.
    argv += ["--clearenv"]
    if holder is not None:
        return [*argv, "--setenv", "PATH", GUEST_PATH, "--", *holder]
    env = {**agent_env(spec), "FIREBOX_AGENT_FD": str(fds.agent)}
    if build:
        env["FIREBOX_BUILD"] = "1"  # root keeps its capabilities (agent/privs.py harden)
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv += ["--", *AGENT_COMMAND]
    return argv


def build_root(rw: Path) -> Path:
    """Where a build sandbox's overlay root is mounted on the host: beside its disk ``rw``."""
    return rw.with_name(rw.name + ".root")


def identity_fds() -> tuple[int, int]:
    """Read ends of two pipes holding a fresh machine id and boot id, for ``JailFds``."""
    fds = []
    for text in (uuid.uuid4().hex, str(uuid.uuid4())):
        r, w = os.pipe()
        os.write(w, (text + "\n").encode())  # far below a pipe's buffer
        os.close(w)
        fds.append(r)
    return fds[0], fds[1]
