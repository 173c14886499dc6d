"""The jailed VMM: each QEMU runs as an unprivileged host uid of its own, in its own user,
mount, pid, network, IPC, UTS and cgroup namespaces, seeing only the files of its VM.

bubblewrap builds the view: the host's /usr read-only (QEMU and its libraries), a minimal
/dev, a fresh /proc, the VM's boot files and disks read-only at their host paths, and the
sandbox's own directory (overlay disk, sockets) read-write. No network exists in there, so
even a QEMU taken over by its guest has nowhere to connect. QEMU's own seccomp filter
(``-sandbox on,...``) comes on top, and the process lives in a cgroup with memory, pids and CPU
limits, born inside it (``confine.spawn_gated``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

KVM_DEVICE = "/dev/kvm"


def bwrap_argv(
    bwrap: str,
    qemu_argv: Sequence[str],
    read_only: Sequence[Path],
    writable: Sequence[Path],
    kvm: bool,
    outlive: bool = False,
) -> list[str]:
    argv = [
        bwrap,
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup (and no network but lo)
        "--unshare-user",
        # a sandbox's VM outlives the daemon (a restart adopts it); a template's boot or a
        # snapshot's bake dies with whoever runs it
        *([] if outlive else ["--die-with-parent"]),
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/bin",
        "/bin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    if kvm:
        argv += ["--dev-bind", KVM_DEVICE, KVM_DEVICE]
    for path in read_only:
        argv += ["--ro-bind", str(path), str(path)]
    for path in writable:
        argv += ["--bind", str(path), str(path)]
    argv += ["--chdir", "/", "--clearenv", "--", *qemu_argv]
    return argv
