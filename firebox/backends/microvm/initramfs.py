"""The guest's initramfs: busybox, the virtio modules, the agent, and two small init scripts.

Built per (boot pieces, agent code) into the VM state directory; it is a few MB and takes
well under a second, so it is simply made again when either changes.

``/init`` runs as PID 1 from the initramfs: it mounts the read-only root disk (``/dev/vda``)
and the sandbox's writable disk (``/dev/vdb``), lays the jail's layout over them (read-only
image; writable, size-capped ``/home/user``, ``/tmp``, ``/root``, ``/dev/shm``; the agent at
``/opt/firebox/lib``) and switches root. PID 1 of the real root is then busybox running
``guest-init``: it runs the agent and, when the agent ends (the daemon went away, or it was
killed), reboots, which ends the QEMU process (``-no-reboot``) and so the sandbox. A kernel
panic does the same (``panic=-1``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from firebox.backends.agent_files import AGENT_COMMAND, GUEST_LIB
from firebox.confine import seccomp
from firebox.images.vmboot import MODULES, BootPieces

PORT_NAME = "firebox.agent"  # the virtio-serial port the agent talks on
PROBE_MARKER = "FIREBOX-PROBE-OK"  # printed by /init when booted with firebox.probe=1
INITRAMFS_VERSION = b"1"
APPLETS = (
    "sh", "mount", "umount", "insmod", "switch_root", "mkdir", "cat", "cp", "sleep", "reboot",
    "hostname", "ln", "chmod", "chown", "ip",
)  # fmt: skip

INIT = r"""#!/bin/sh
# firebox guest init, PID 1 in the initramfs. Any failure reboots, which ends the VM.
fail() { echo "firebox-init: $*" >&2; reboot -f; }
mount -t devtmpfs -o nosuid,mode=0755 dev /dev || fail devtmpfs
mount -t proc -o nosuid,nodev,noexec proc /proc || fail proc
mount -t sysfs -o nosuid,nodev,noexec sys /sys || fail sysfs
for m in @modules@; do insmod /lib/modules/$m.ko || fail "insmod $m"; done
# Allocations succeed and the OOM killer ends the biggest process at the VM's memory, as the
# jail's cgroup does (the default heuristic would refuse a large malloc outright instead).
echo 1 > /proc/sys/vm/overcommit_memory
case " $(cat /proc/cmdline) " in *" firebox.probe=1 "*) echo @probe@; reboot -f;; esac
n=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do
  n=$((n+1)); [ $n -gt 500 ] && fail "no disks"; sleep 0.01
done
mkdir -p /newroot
mount -t ext4 -o ro,noatime /dev/vda /newroot || fail "root disk"
mount -t tmpfs -o nosuid,nodev,mode=0755,size=16m run /newroot/run || fail run
mkdir -p /newroot/run/firebox/rw
mount -t ext4 -o nosuid,nodev,noatime /dev/vdb /newroot/run/firebox/rw || fail "writable disk"
for d in home/user tmp root; do
  mount --bind /newroot/run/firebox/rw/$d /newroot/$d || fail "bind $d"
done
mount -t tmpfs -o nosuid,nodev,mode=0755,size=8m agent /newroot@lib@ || fail "agent dir"
cp -a /agent/. /newroot@lib@/ && mount -o remount,ro /newroot@lib@ || fail "agent copy"
port=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = @port@ ] && port=/dev/${p##*/}
done
[ -n "$port" ] || fail "no agent port"
cp /bin/busybox /newroot/run/firebox/busybox && cp /guest-init /newroot/run/firebox/init \
  || fail "init copy"
mount --move /dev /newroot/dev && mount --move /proc /newroot/proc \
  && mount --move /sys /newroot/sys || fail "move mounts"
exec switch_root /newroot /run/firebox/busybox sh /run/firebox/init "$port"
"""

GUEST_INIT = r"""# PID 1 of the guest's root: run the agent; when it ends, so does the VM.
bb=/run/firebox/busybox
$bb mkdir -p /dev/shm /dev/pts
$bb mount -t tmpfs -o nosuid,nodev,mode=1777,size=@shm@m shm /dev/shm
$bb mount -t devpts -o nosuid,noexec,mode=0620,ptmxmode=0666 devpts /dev/pts
$bb hostname sandbox
# The sandbox's identity: files in /run that the agent rewrites for every clone (Resume),
# bound over where programs read a machine id and the kernel's boot id (a clone of a snapshot
# would otherwise share its template's).
: > /run/machine-id
$bb cat /proc/sys/kernel/random/uuid > /run/firebox/boot_id
# Kernel settings are made by now: /proc/sys and /sys read-only for everyone after this. File
# permissions alone guard them, and root inside could otherwise name a program the kernel runs
# as full root outside the sandbox's rules (core_pattern, modprobe, uevent_helper). The
# cgroup filesystem the agent writes to is a mount of its own, and stays writable.
$bb mount --bind /proc/sys /proc/sys && $bb mount -o remount,bind,ro /proc/sys
$bb mount -o remount,bind,ro /sys
$bb mount --bind /run/machine-id /etc/machine-id
$bb mount --bind /run/firebox/boot_id /proc/sys/kernel/random/boot_id
# Loopback only (the VM has no network device): the sandbox's own services and the egress
# proxy's port live there, as in the jail's network namespace.
$bb ip link set lo up
# Every process of the sandbox, the agent's included, in one cgroup: the pids limit the jail's
# host cgroup sets (the daemon sends the sandbox's value with Resume; none in the template).
$bb mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
echo +pids > /sys/fs/cgroup/cgroup.subtree_control
$bb mkdir -p /sys/fs/cgroup/sandbox
echo $$ > /sys/fs/cgroup/sandbox/cgroup.procs
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
export HOME=/root FIREBOX_AGENT_PATH="$1" FIREBOX_BACKEND=microvm
export FIREBOX_WARM_IMPORTS=@warm@ FIREBOX_SECCOMP=@lib@/seccomp.bpf
cd /
@agent@ </dev/null
echo "firebox-init: the agent exited ($?)" >&2
$bb reboot -f
"""


def _fill(script: str, **values: str) -> str:
    """``@name@`` markers (shell scripts are full of braces, so no str.format)."""
    return re.sub(r"@(\w+)@", lambda m: values[m.group(1)], script)


def _shell_quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", ino: int = 0) -> None:
    """One entry of a ``newc`` cpio archive, the format the kernel unpacks."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def build(pieces: BootPieces, agent_lib: Path, target_dir: Path, shm_mb: int, warm: str) -> Path:
    """The initramfs for these pieces and this agent; made once per content digest. The
    agent gets the jail's seccomp policy, compiled for a microVM's guest, to load on itself."""
    init = _fill(INIT, modules=" ".join(MODULES), probe=PROBE_MARKER, lib=GUEST_LIB, port=PORT_NAME)
    agent = " ".join(_shell_quote(a) for a in AGENT_COMMAND)
    guest_init = _fill(
        GUEST_INIT, shm=str(shm_mb), warm=_shell_quote(warm), agent=agent, lib=GUEST_LIB
    )
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o100755, init.encode()),
        ("guest-init", 0o100644, guest_init.encode()),
        ("bin/busybox", 0o100755, pieces.busybox.read_bytes()),
        ("agent/seccomp.bpf", 0o100644, seccomp.compiled_filter("microvm")),
    ]
    for module in pieces.modules:
        files.append((f"lib/modules/{module.name}", 0o100644, module.read_bytes()))
    for dirpath, dirs, names in os.walk(agent_lib):
        dirs.sort()
        for name in sorted(names):
            src = Path(dirpath) / name
            rel = src.relative_to(agent_lib)
            if not name.startswith("."):
                files.append((f"agent/{rel}", 0o100644, src.read_bytes()))
    digest = hashlib.sha256(INITRAMFS_VERSION)
    for name, mode, data in files:
        digest.update(f"{name}\0{mode}\0{len(data)}\0".encode() + data)
    target = target_dir / f"initramfs-{digest.hexdigest()[:16]}.cpio"
    if target.is_file():
        return target
    out = io.BytesIO()
    dirs_done: set[str] = set()
    ino = 1
    for top in ("dev", "proc", "sys", "newroot", "bin", "lib", "lib/modules", "agent"):
        _cpio_entry(out, top, 0o040755, ino=ino)
        dirs_done.add(top)
        ino += 1
    for name, mode, data in files:
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in dirs_done:
                _cpio_entry(out, parent, 0o040755, ino=ino)
                dirs_done.add(parent)
                ino += 1
        _cpio_entry(out, name, mode, data, ino=ino)
        ino += 1
    for applet in APPLETS:
        _cpio_entry(out, f"bin/{applet}", 0o120777, b"busybox", ino=ino)
        ino += 1
    _cpio_entry(out, "TRAILER!!!", 0)
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    tmp.write_bytes(out.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
