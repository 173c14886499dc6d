"""A jail's writable disk: one tmpfs per sandbox, capped in bytes and in inodes.

Every place a jail may write (``/home/user``, ``/tmp``, ``/root``, ``/dev/shm``) is a directory
of this one filesystem, bound in by bubblewrap, as a microVM's are directories of its one
writable ext4 disk. One mount instead of a tmpfs each means:

- one cap for all of them together (``disk_mb``), so a sandbox cannot hold four times its
  disk in memory;
- an inode cap (``nr_inodes``), which bubblewrap's own ``--tmpfs`` cannot set: without it,
  millions of empty files fill the sandbox's memory with kernel objects it cannot free, and
  then nothing in it can start, not even ``rm``.

Its pages and inodes are charged to the memory cgroup of the sandbox process that writes them,
as with any tmpfs. The daemon (root) mounts it on the host, under the image directory (which
the sandbox's unprivileged host uid can traverse, where the daemon's home may not be: the
directory is its owner's, backends/owner.py), and
unmounts it when the sandbox ends or, after a crash, when the next daemon starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Collection
from pathlib import Path

from firebox.images._fs import resolve_in_tree

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
BYTES_PER_INODE = 4096  # as mkfs.ext4 gives a small disk, like the microVM's
USER_UID = 1000  # the sandbox's user inside (images/post.py)

# (name, path inside, owner inside, mode)
PLACES = (
    ("home", "/home/user", USER_UID, 0o755),
    ("tmp", "/tmp", 0, 0o1777),
    ("root", "/root", 0, 0o700),
    ("shm", "/dev/shm", 0, 0o1777),
)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def create(
    parent: Path,
    sandbox_id: str,
    disk_mb: int,
    host_id: int,
    rootfs: Path | None = None,
    saved: Path | None = None,
) -> Path:
    """Mount the sandbox's disk at ``parent/sandbox_id`` with its places made and owned by
    the sandbox's ids (``host_id`` is its root's host uid), holding what the image's own
    home and /root hold (a built template's files), or what ``saved`` holds (a snapshot's
    places, ``save``); returns the mount point."""
    parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    mnt = parent / sandbox_id
    mnt.mkdir(mode=0o711)
    size = disk_mb << 20
    options = f"size={size},nr_inodes={max(1024, size // BYTES_PER_INODE)},mode=0711"
    try:
        _check(
            _libc.mount(b"tmpfs", bytes(mnt), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
            f"mount the sandbox's disk on {mnt}",
        )
        for name, inside, owner, mode in PLACES:
            place = mnt / name
            place.mkdir()
            os.chown(place, host_id + owner, host_id + owner)
            place.chmod(mode)
            source = None
            if saved is not None:
                source = saved / name
            elif rootfs is not None and name in ("home", "root"):
                # the place as the sandbox sees it: links followed inside the image, never on
                # the host (an image's /home may be a link to anywhere)
                source = resolve_in_tree(rootfs, inside)
            if source is not None:
                try:
                    _seed(source, place, host_id)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    raise OSError(
                        e.errno,
                        f"the template's {inside} does not fit the sandbox's disk of {disk_mb} "
                        'MB; create the sandbox with a larger limits={"disk_mb": …}',
                    ) from None
    except BaseException:
        remove(mnt)
        raise
    return mnt


def save(mnt: Path, into: Path, host_id: int) -> None:
    """Copy the sandbox's places (a snapshot's disk) into ``into``, owned by their ids as they
    are inside (a sandbox made from them has a uid range of its own)."""
    into.mkdir(mode=0o700, parents=True)
    for name, _, _, _ in PLACES:
        if name == "shm":  # shared memory is memory, not disk: a fork starts without it
            continue
        (into / name).mkdir()
        _seed(mnt / name, into / name, -host_id)


def _seed(src: Path, dst: Path, host_id: int) -> None:
    """Copy the tree ``src`` (owned by the sandbox's ids as they are inside) into ``dst``,
    owned by those ids plus ``host_id`` (negative: from a sandbox's host ids back to the
    inside's). Nothing is followed through a symlink."""
    if src.is_symlink() or not src.is_dir():
        return
    top = str(src)
    for dirpath, dirnames, filenames in os.walk(top):
        into = os.path.join(dst, os.path.relpath(dirpath, top))
        for name in [*dirnames, *filenames]:
            s, d = os.path.join(dirpath, name), os.path.join(into, name)
            st = os.lstat(s)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(d, stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(s, d, follow_symlinks=False)
            else:
                continue  # a fifo or socket of the image: nothing a new sandbox needs
            os.lchown(d, host_id + st.st_uid, host_id + st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(d, stat.S_IMODE(st.st_mode))
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    st = os.lstat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def remove(mnt: Path) -> None:
    """Unmount (lazily: a process still inside keeps it until it goes) and remove. Idempotent."""
    if os.path.ismount(mnt):
        _check(_libc.umount2(bytes(mnt), MNT_DETACH), f"unmount {mnt}")
    with contextlib.suppress(FileNotFoundError):
        mnt.rmdir()


def remove_stale(parent: Path, keep: Collection[str] = ()) -> int:
    """Every disk left under ``parent`` by a daemon that died, but those of the sandboxes in
    ``keep`` (adopted by the next daemon); how many were freed."""
    freed = 0
    for mnt in parent.iterdir() if parent.is_dir() else ():
        if mnt.name in keep:
            continue
        with contextlib.suppress(OSError):
            remove(mnt)
            freed += 1
    return freed


def usage(mnt: Path) -> tuple[int, int]:
    """Bytes used and total of the sandbox's disk: exact, as its tmpfs counts them."""
    # a disk already unmounted must not report the filesystem beneath it
    if not os.path.ismount(mnt):
        raise FileNotFoundError(f"the sandbox's disk is not mounted on {mnt}")
    st = os.statvfs(mnt)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def bwrap_args(mnt: Path, build: bool = False) -> list[str]:
    """bubblewrap's binds of the places, in place of a tmpfs each. A build sandbox's home,
    /tmp and /root are those of its writable root, kept in the layer it makes."""
    args: list[str] = []
    for name, inside, _, _ in PLACES:
        if not build or name == "shm":
            args += ["--bind", str(mnt / name), inside]
    return args


# A build sandbox's overlay directories, on this same capped disk: what a step writes counts
# against the disk limit as a sandbox's home does.
UPPER, WORK = "upper", "work"


def add_build_dirs(mnt: Path) -> tuple[Path, Path]:
    """The overlay's upper and work directories on the disk ``mnt``, owned by (real) root:
    the idmapped mount shows them to the sandbox as its own root's."""
    upper, work = mnt / UPPER, mnt / WORK
    for path in (upper, work):
        path.mkdir(mode=0o755)
    return upper, work
