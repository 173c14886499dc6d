"""The agent's privileges: what it keeps for itself and what it never hands on.

The agent runs as uid 0 of the sandbox with a handful of capabilities (switch users, signal,
act as the files API's root). ``harden`` makes sure none of that reaches what it starts: with
the ambient set empty, the inheritable set empty and SECBIT_NOROOT locked, an exec gives no
capability to any uid, root included. ``as_user`` lends a thread a user's filesystem identity
so the files API checks permissions exactly as that user's own processes would.

glibc has no wrappers worth importing a module for, so prctl, capget/capset and
setfsuid/setfsgid go through ctypes. setfsuid/setfsgid are per thread (glibc does not
broadcast them to all threads the way it does setuid), which is what lets concurrent requests
run as different users.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from firebox.agent.errors import Fail, log

TYPE_CHECKING = False  # not typing's: importing typing costs the agent's start-up ~5 ms
if TYPE_CHECKING:
    from typing import Any

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int
libc.setfsuid.argtypes = [ctypes.c_uint]
libc.setfsuid.restype = ctypes.c_int
libc.setfsgid.argtypes = [ctypes.c_uint]
libc.setfsgid.restype = ctypes.c_int

PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7
SECUREBITS = (
    SECBIT_NOROOT
    | SECBIT_NOROOT_LOCKED
    | SECBIT_NO_CAP_AMBIENT_RAISE
    | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(option: int, arg2: int = 0) -> int:
    rc: int = libc.prctl(option, arg2, 0, 0, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def _clear_inheritable() -> None:
    # An inheritable capability would survive exec into a binary with matching file
    # inheritable bits, ambient set or not.
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) < 0:
        raise OSError(ctypes.get_errno(), "capget")
    if data[0].inheritable == 0 and data[1].inheritable == 0:
        return
    data[0].inheritable = data[1].inheritable = 0
    if libc.capset(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def harden(root_keeps_caps: bool = False) -> None:
    """Make sure nothing the agent execs holds a capability; log what could not be done.

    ``root_keeps_caps`` (a template build's sandbox) leaves NOROOT unset: what runs as the
    sandbox's root then holds the agent's bounding set, as root in a rootless container does
    (dpkg must chown, apt must switch users), and only over the sandbox's own ids.

    Each step fails when not permitted (the agent run by hand as a normal user, where there is
    nothing to drop); that is logged, never fatal, so development works outside a sandbox.
    """
    bits = SECUREBITS
    if root_keeps_caps:
        bits &= ~(SECBIT_NOROOT | SECBIT_NOROOT_LOCKED)
    steps: list[tuple[str, Any]] = [
        (
            "clear the ambient capability set",
            lambda: _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL),
        ),
        ("clear the inheritable capability set", _clear_inheritable),
        ("lock securebits", lambda: _set_securebits(bits)),
    ]
    if os.getgroups() and setgroups_allowed():
        # The files API checks access with the agent's groups plus a user's fsgid: stray
        # supplementary groups (root's, say) would widen what a user may touch.
        steps.append(("drop supplementary groups", lambda: os.setgroups([])))
    failed = set()
    for what, step in steps:
        try:
            step()
        except OSError as e:
            failed.add(what)
            log(f"could not {what}: {e.strerror or e}")
    if "lock securebits" in failed and not root_keeps_caps:
        # A kernel without securebits (gVisor's): root's exec would regain every capability
        # in the bounding set. Emptied, no exec can grant one; the agent keeps its own.
        try:
            drop_bounding_set()
        except OSError as e:
            log(f"could not empty the capability bounding set: {e.strerror or e}")


def drop_bounding_set() -> None:
    """Remove every capability from this process's bounding set (needs CAP_SETPCAP)."""
    cap = 0
    while True:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL and cap > 0:  # past the kernel's last capability
                return
            raise OSError(err, os.strerror(err))
        cap += 1


PR_CAPBSET_DROP = 24
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
# The capabilities a jail's agent keeps, by number (bwrap.AGENT_CAPS has them by name).
CAP_NUMBERS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_SYS_RESOURCE": 24,
}


def keep_only_caps(names: list[str]) -> None:
    """Bounding, permitted and effective sets reduced to ``names``; inheritable and ambient
    emptied: what bwrap's ``--cap-drop ALL --cap-add ...`` gives the program it starts."""
    keep = {CAP_NUMBERS[n] for n in names}
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in keep)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    if libc.capset(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def set_name(name: str) -> None:
    """This process's name in ``ps`` and /proc/<pid>/comm (a forked one keeps its parent's)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    if libc.prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0) < 0:
        log(f"could not name this process {name!r}: {os.strerror(ctypes.get_errno())}")


def set_dumpable(on: bool) -> None:
    _prctl(PR_SET_DUMPABLE, int(on))


PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp(path: str) -> None:
    """Put this process (and so everything it starts) under the classic BPF program in
    ``path``, with no-new-privs: in a microVM, where no bwrap loads it for us. Call it before
    any thread starts (a filter applies to the calling thread and what it creates later)."""
    with open(path, "rb") as f:
        load_seccomp_program(f.read(), path)


def load_seccomp_program(program: bytes, path: str = "the program") -> None:
    if not program or len(program) % 8:
        raise OSError(f"{path} is not a seccomp program")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"loading the seccomp filter: {os.strerror(err)}")


MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def lock_memory() -> None:
    """Keep the agent's pages in RAM as they are touched (a microVM, where the agent is root):
    a guest short of memory evicts file pages first, and an agent waiting on its own code to
    be read back would miss the daemon's heartbeat. Children do not inherit the lock."""
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_securebits(bits: int = SECUREBITS) -> None:
    current = _prctl(PR_GET_SECUREBITS)
    if current & bits != bits:
        _prctl(PR_SET_SECUREBITS, current | bits)


def securebits() -> int:
    return _prctl(PR_GET_SECUREBITS)


def become_subreaper() -> None:
    """Orphans of our children come to us: the python workers the fork server forks
    (forkserver.py) are then ours to wait for, and a daemonized process is reaped by us."""
    if os.getpid() != 1:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def is_subreaper() -> bool:
    """True when orphans of our children are reparented to us (pid 1 or a child subreaper)."""
    if os.getpid() == 1:
        return True
    flag = ctypes.c_int(0)
    rc = libc.prctl(
        PR_GET_CHILD_SUBREAPER, ctypes.cast(ctypes.byref(flag), ctypes.c_void_p).value, 0, 0, 0
    )
    return rc == 0 and flag.value != 0


def _current_fsuid() -> int:
    # setfsuid(-1) never succeeds, and always returns the current value: the documented way to
    # read it (a failed change is silent, so every change is read back).
    return int(libc.setfsuid(0xFFFFFFFF))


def _current_fsgid() -> int:
    return int(libc.setfsgid(0xFFFFFFFF))


SYS_SETRESUID, SYS_SETRESGID = 117, 119  # x86_64


def _setres(call: int, effective: int) -> int:
    """setresuid/setresgid(-1, effective, -1) for this thread alone (``syscall`` is variadic:
    its arguments go as longs)."""
    keep = ctypes.c_long(-1)
    return int(libc.syscall(ctypes.c_long(call), keep, ctypes.c_long(effective), keep))


def _fsuid_works() -> bool:
    """gVisor's kernel has no setfsuid (ENOSYS: the query answers -1)."""
    return _current_fsuid() != -1


@contextmanager
def as_user(uid: int, gid: int, name: str) -> Iterator[None]:
    """Run the body with this thread's filesystem identity set to ``uid``/``gid``: its fsuid
    and fsgid, or where the kernel lacks those (gVisor) its effective ids, set for this thread
    alone by the raw system calls (glibc's wrappers would change every thread's). Either way
    the thread's effective capabilities go while it is the user, and come back after."""
    if not _FSUID:
        with _as_user_by_euid(uid, gid, name):
            yield
        return
    old_uid, old_gid = _current_fsuid(), _current_fsgid()
    if (old_uid, old_gid) == (uid, gid):
        yield
        return
    libc.setfsgid(gid)
    libc.setfsuid(uid)
    try:
        if _current_fsuid() != uid or _current_fsgid() != gid:
            raise _cannot_act(uid, name)
        yield
    finally:
        libc.setfsuid(old_uid)
        libc.setfsgid(old_gid)


@contextmanager
def _as_user_by_euid(uid: int, gid: int, name: str) -> Iterator[None]:
    old_uid, old_gid = os.geteuid(), os.getegid()  # this thread's (the kernel's answer)
    if (old_uid, old_gid) == (uid, gid):
        yield
        return
    if _setres(SYS_SETRESGID, gid) != 0:
        raise _cannot_act(uid, name)
    if _setres(SYS_SETRESUID, uid) != 0:
        _setres(SYS_SETRESGID, old_gid)
        raise _cannot_act(uid, name)
    try:
        yield
    finally:
        # back to root first: only root may set the group back
        _setres(SYS_SETRESUID, old_uid)
        _setres(SYS_SETRESGID, old_gid)


def _cannot_act(uid: int, name: str) -> Fail:
    return Fail(
        "permission_denied",
        f"the agent (uid {os.geteuid()}) may not act as user {name!r} (uid {uid}); "
        "run it as root inside the sandbox",
    )


_FSUID = _fsuid_works()


def setgroups_allowed() -> bool:
    """False in a user namespace whose setgroups is denied (bwrap writes "deny")."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True
