"""A writable root for a build sandbox: an overlay of read-only layers and a fresh upper
directory, writable by the sandbox's root, while every file lands on disk with the ids it has
inside (0 for root, 1000 for ``user``), never with the sandbox's host uids.

Layers are trees owned by real ids (host root owns ``/usr``). A jail's root is an
unprivileged host uid (``host_id``); to it those files are foreign, and it could change none
of them. So each layer is mounted *idmapped* (``mount_setattr(MOUNT_ATTR_IDMAP)``, Linux 5.12+
and overlayfs on idmapped layers, 5.19+): on-disk id ``k`` appears as ``host_id + k``, and the
sandbox's ids ``0..65535`` are written back as ``0..65535``. The overlay itself is mounted by a
short-lived helper process running *as* ``host_id`` with the permitted capabilities it needs
to mount (``python -m firebox.confine.overlay``): overlayfs copies a file up with its mounter's
credentials, which must map through the idmap, and root's (uid 0) do not.

The idmapped layer mounts are detached as soon as the overlay holds them: what remains on the
host is one overlay mount, removed with ``unmount``. Options pin the on-disk format the
layer store reads back (``images/layers.py``): whiteouts are 0/0 character devices, opaque
directories carry ``trusted.overlay.opaque``, and nothing else (no redirects, no index, no
metacopy) is ever written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64 and aarch64 alike
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_IDMAP = 0x1, 0x00100000
_MNT_DETACH = 2
OPTIONS = "redirect_dir=off,index=off,metacopy=off,xino=off"
ID_RANGE = 65536
HELPER_DEADLINE = 20.0


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class _Userns:
    """A user namespace mapping ids 0..65535 onto ``host_id``.., held by a ``cat`` that exits
    when we close its stdin: what an idmapped mount takes its mapping from."""

    def __init__(self, host_id: int) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--user", "cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ours = os.readlink("/proc/self/ns/user")
            deadline = time.monotonic() + HELPER_DEADLINE
            while os.readlink(f"/proc/{self.proc.pid}/ns/user") == ours:  # until it unshared
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise OSError("unshare --user did not create a user namespace")
                time.sleep(0.002)
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{self.proc.pid}/{name}", "w") as f:
                    f.write(f"0 {host_id} {ID_RANGE}\n")
            self.fd = os.open(f"/proc/{self.proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(AttributeError, OSError):
            os.close(self.fd)


def _idmapped(src: Path, dst: Path, userns_fd: int, read_only: bool) -> None:
    fd = _check(
        _libc.syscall(
            _SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(src), _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
        ),
        f"clone the mount of {src}",
    )
    try:
        attr = _MountAttr(
            _MOUNT_ATTR_IDMAP | (_MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, userns_fd
        )
        _check(
            _libc.syscall(
                _SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
            ),
            f"idmap {src} (needs Linux 5.12+ and a file system that allows it)",
        )
        dst.mkdir(mode=0o700, exist_ok=True)
        _check(
            _libc.syscall(
                _SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(dst), _MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"attach the idmapped {src}",
        )
    finally:
        os.close(fd)


def _detach(path: Path) -> None:
    # not os.path.ismount: an idmapped mount of a directory on the same file system looks like
    # no mount to it
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more), or gone
            raise OSError(err, f"unmount {path}: {os.strerror(err)}")
    with contextlib.suppress(OSError):
        path.rmdir()


def mount(layers: Sequence[Path], upper: Path, work: Path, target: Path, host_id: int) -> None:
    """Mount at ``target`` the overlay of ``layers`` (lowest first) with ``upper``/``work``
    (empty directories on one file system, both owned by root), writable by the sandbox whose
    ids start at ``host_id``. The mounts made on the way are gone when this returns."""
    scratch = target.with_name(target.name + ".layers")
    scratch.mkdir(mode=0o700)
    made: list[Path] = []
    userns = _Userns(host_id)
    try:
        lower = []
        for i, layer in enumerate(layers):
            _idmapped(layer, scratch / str(i), userns.fd, read_only=True)
            made.append(scratch / str(i))
            lower.append(str(scratch / str(i)))
        # upper and work: one idmapped mount of their common parent (overlayfs wants them on
        # one mount)
        if upper.parent != work.parent:
            raise ValueError("upper and work must be siblings")
        _idmapped(upper.parent, scratch / "rw", userns.fd, read_only=False)
        made.append(scratch / "rw")
        # overlayfs takes the highest layer first
        options = (
            f"lowerdir={':'.join(reversed(lower))},upperdir={scratch / 'rw' / upper.name},"
            f"workdir={scratch / 'rw' / work.name},{OPTIONS}"
        )
        target.mkdir(mode=0o755, exist_ok=True)
        helper = subprocess.run(
            [sys.executable, "-m", "firebox.confine.overlay", str(host_id), options, str(target)],
            capture_output=True,
            text=True,
            timeout=HELPER_DEADLINE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": _package_parent()},
        )
        if helper.returncode != 0:
            raise OSError(f"mount the build overlay on {target}: {helper.stderr.strip()}")
    finally:
        userns.close()
        for path in reversed(made):
            with contextlib.suppress(OSError):
                _detach(path)
        with contextlib.suppress(OSError):
            scratch.rmdir()


def unmount(target: Path) -> None:
    """Remove the overlay at ``target`` (lazily: a process still inside keeps it). Idempotent."""
    with contextlib.suppress(FileNotFoundError):
        _detach(target)


def _package_parent() -> str:
    return str(Path(__file__).resolve().parents[2])


def _mount_as(host_id: int, options: str, target: str) -> None:
    """The helper: become ``host_id`` keeping the permitted capabilities, then mount."""

    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class _Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    pr_set_keepcaps = 8
    _check(_libc.prctl(pr_set_keepcaps, 1, 0, 0, 0), "keep capabilities")
    os.setgroups([])
    os.setresgid(host_id, host_id, host_id)
    os.setresuid(host_id, host_id, host_id)  # clears the effective set; permitted stays
    header, data = _Header(0x20080522, 0), (_Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.effective = half.permitted
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(
        _libc.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()),
        "mount overlay",
    )


if __name__ == "__main__":
    try:
        _mount_as(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    except OSError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
