"""The OCI bundle of a gVisor sandbox: its ``config.json``, built from a spec as an ordered
containment checklist (as the jail's bwrap command line is: jail/bwrap.py).

runsc reads it as root, so nothing in it comes from the sandbox. Each step names what it
protects against; what runsc itself adds (the sentry's seccomp filter, its own user and
network namespaces, no host devices) is in docs/BACKENDS.md.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from firebox.backends.agent_files import AGENT_COMMAND, GUEST_LIB
from firebox.backends.base import SandboxSpec
from firebox.backends.jail import rwdisk
from firebox.backends.jail.bwrap import AGENT_CAPS, GUEST_PATH
from firebox.confine import cgroups
from firebox.confine.uids import UID_RANGE

CONFIG = "config.json"
MACHINE_ID = "machine-id"
BOOT_ID = "boot-id"
SHM_MB = 64  # /dev/shm: the sentry's own memory, so capped on its own
# runsc hands its stdin to the container's first process: the agent's channel (fd 0)
AGENT_FD = 0
SECCOMP_FILE = "seccomp.bpf"  # staged with the agent's code (agent_files.stage)
AGENT_ENV = {
    "PATH": GUEST_PATH,
    "LANG": "C.UTF-8",
    "FIREBOX_BACKEND": "gvisor",
    # The jail's seccomp policy (confine/seccomp_policy.json), loaded by the agent on itself
    # and so on everything it starts, as in a microVM: gVisor enforces it before its own code
    # sees a call, so the sentry's surface is what the policy leaves
    "FIREBOX_SECCOMP": f"{GUEST_LIB}/{SECCOMP_FILE}",
}


# A restored sandbox is the template's kernel: the agent gives it its own host name
# (agent/resume.py), which takes CAP_SYS_ADMIN in its UTS namespace. Only the agent holds it:
# nothing it starts can hold a capability (agent/privs.py), and the kernel it acts on is the
# sentry, not the host's.
CAPS = (*AGENT_CAPS, "CAP_SYS_ADMIN")


def config(
    spec: SandboxSpec,
    agent_lib: Path,
    rw: Path,
    bundle: Path,
    host_id: int,
    cgroup: str,
    warm: str = "",
) -> dict:
    """The bundle's ``config.json`` for a sandbox of ``spec`` with its disk at ``rw``, its
    ids 0..65535 being host ids ``host_id``.., in the cgroup ``cgroup`` (``cgroups_path``);
    ``bundle`` holds its machine id. ``warm``: what its python context imports ahead (a
    template's checkpoint holds them)."""
    # its CPU limit, a cgroup quota its processes cannot see (the sentry shows every host
    # core), for the thread pools of what the agent starts (agent/limits.py), as in a jail
    env = {
        **AGENT_ENV,
        "FIREBOX_AGENT_FD": str(AGENT_FD),
        "FIREBOX_CPUS": f"{spec.limits.cpu_count:g}",
    }
    if warm:
        env["FIREBOX_WARM_IMPORTS"] = warm
    return {
        "ociVersion": "1.0.2",
        "process": {
            # 1. The agent, as root of the sandbox's own ids, with only the capabilities it
            #    needs to serve (jail/bwrap.py says why each) and none regained by an exec.
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": AGENT_COMMAND,
            # 2. A clean environment: nothing of the daemon's leaks in.
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {kind: [*CAPS] for kind in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        # 3. Filesystem: the image read-only as / (the gofer serves it; nothing can write
        #    through to the host's tree), the sandbox's capped disk for the only writable
        #    places, the agent's code read-only. Mount points must exist in the image: runsc
        #    would make a missing one in the image's tree on the host.
        "root": {"path": str(spec.rootfs), "readonly": True},
        "hostname": spec.hostname,
        "mounts": _mounts(agent_lib, rw, bundle),
        "linux": {
            # 4. Namespaces, and the sandbox's ids mapped onto its own unprivileged host
            #    range: the gofer (the one process that touches host files) runs as that
            #    range, never as host root, and files the sandbox writes are the range's.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user", "network")],
            "uidMappings": [{"containerID": 0, "hostID": host_id, "size": UID_RANGE}],
            "gidMappings": [{"containerID": 0, "hostID": host_id, "size": UID_RANGE}],
            # 5. The sandbox's own cgroup, made by the daemon with its limits: runsc joins an
            #    existing one as it is (and leaves it in place at delete). Without a path a
            #    recent runsc makes one of its own at the hierarchy's root, out of every limit.
            #    The sentry sizes its memory by it (what `free` shows inside).
            "cgroupsPath": cgroup,
        },
    }


def _mounts(agent_lib: Path, rw: Path, bundle: Path) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        # gVisor's own cgroupfs: the agent holds the sandbox's processes in a pids cgroup of
        # it, which the sentry enforces (agent/limits.py)
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [f"size={SHM_MB}m", "nosuid", "nodev", "mode=1777"],
        },
        {"destination": GUEST_LIB, "type": "bind", "source": str(agent_lib), "options": ["ro"]},
        # an identity of its own: the image's machine id would be every sandbox's. Its
        # sandbox's root may write it: a restored one's agent writes its own (resume.py)
        {
            "destination": "/etc/machine-id",
            "type": "bind",
            "source": str(bundle / MACHINE_ID),
            "options": [],
        },
    ]
    for name, inside, _, _ in rwdisk.PLACES:
        if name != "shm":  # the sentry's own tmpfs above
            mounts.append(
                {"destination": inside, "type": "bind", "source": str(rw / name), "options": []}
            )
    return mounts


def cgroups_path(cgroup: cgroups.CgroupSet) -> str:
    """The cgroup's path as the OCI spec names it: from the root of its hierarchy (v1: the
    same under every controller's, as cgroups.create makes them)."""
    host = cgroups.detect()
    controller, where = next(iter(cgroup.dirs.items()))
    return "/" + str(where.relative_to(host.mounts[controller]))


def write(
    spec: SandboxSpec,
    agent_lib: Path,
    rw: Path,
    bundle: Path,
    host_id: int,
    cgroup: str,
    warm: str = "",
) -> None:
    """Make ``bundle``: its config (runsc reads it as root: root's only) and machine id (the
    sandbox's root's, as the gofer runs as its range)."""
    bundle.mkdir(mode=0o711, parents=True)
    machine_id = bundle / MACHINE_ID
    machine_id.write_text(uuid.uuid4().hex + "\n")
    machine_id.chmod(0o644)
    os.chown(machine_id, host_id, host_id)
    boot_id = bundle / BOOT_ID
    boot_id.write_text(str(uuid.uuid4()) + "\n")
    boot_id.chmod(0o444)
    fd = os.open(bundle / CONFIG, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config(spec, agent_lib, rw, bundle, host_id, cgroup, warm), f)
