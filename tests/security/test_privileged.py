"""Privileged operations: refused inside every sandbox, for its "user" and for its "root".

Each system call is made directly (ctypes), so what is judged is the kernel's answer, not a
tool's: it must be refused (EPERM, EACCES or ENOSYS), never merely fail on a bad argument.
Where an operation would change something of the host (a sysctl, the shared root disk), the
host is read before and after.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import FireboxException, Sandbox
from tests.conftest import Daemon
from tests.security.helpers import py, qemu_pid, run

USERS = ("user", "root")
REFUSED = ("EPERM", "EACCES", "ENOSYS")

PRELUDE = """
import ctypes, errno, os, socket, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def agent():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                name = open(f"/proc/{p}/comm").read().strip()
            except OSError:
                continue
            if name == "firebox-agent":
                return int(p)
    raise SystemExit("no agent found")

def report(rc, err=None):
    err = ctypes.get_errno() if err is None else err
    print("RESULT", rc, errno.errorcode.get(err, err) if rc == -1 else "")

try:
    rc = None
"""

POSTLUDE = """
    if rc is not None:
        report(-1 if rc < 0 else rc)
except OSError as e:
    report(-1, e.errno)
"""

# name: the body of a try block (indented four spaces) that sets rc from a raw call, or raises
# OSError. x86-64 system call numbers where libc has no wrapper.
CALLS = {
    "mount": "rc = libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)",
    "umount": "rc = libc.umount2(b'/proc', 2)",
    "init_module": "img = ctypes.create_string_buffer(4096)\n"
    "    rc = libc.syscall(175, img, 4096, b'')",
    "finit_module": "fd = os.open('/usr/bin/true', os.O_RDONLY)\n"
    "    rc = libc.syscall(313, fd, b'', 0)",
    "delete_module": "rc = libc.syscall(176, b'virtio_console', os.O_NONBLOCK)",
    # BPF_MAP_CREATE of a 4-byte array map: a valid request, refused for lack of privilege
    "bpf": "attr = ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128)\n"
    "    rc = libc.syscall(321, 0, attr, 128)",
    "keyctl": "rc = libc.syscall(250, 0, -3, 0, 0, 0)",  # KEYCTL_GET_KEYRING_ID of the session
    "add_key": "rc = libc.syscall(248, b'user', b'fbx', b'secret', 6, -3)",
    "unshare-user": "rc = libc.unshare(0x10000000)",
    "unshare-net": "rc = libc.unshare(0x40000000)",
    "unshare-mount": "rc = libc.unshare(0x00020000)",
    "clone-newuser": "rc = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)\n"
    "    if rc == 0:\n        os._exit(0)",
    "setns": "fd = os.open('/proc/self/ns/mnt', os.O_RDONLY)\n    rc = libc.setns(fd, 0x00020000)",
    "ptrace-agent": "rc = libc.ptrace(16, agent(), 0, 0)",  # PTRACE_ATTACH
    "ptrace-init": "rc = libc.ptrace(16, 1, 0, 0)",
    "process_vm_readv-agent": "buf = ctypes.create_string_buffer(64)\n"
    "    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)\n"
    "    remote = (ctypes.c_void_p * 2)(0x400000, 64)\n"
    "    rc = libc.syscall(310, agent(), local, 1, remote, 1, 0)",
    "pidfd_getfd-agent": "pfd = libc.syscall(434, agent(), 0)\n"
    "    rc = libc.syscall(438, pfd, 3, 0) if pfd >= 0 else pfd",
    "raw-socket": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n    rc = 0",
    "packet-socket": "socket.socket(17, socket.SOCK_RAW, 0)\n    rc = 0",  # AF_PACKET
    "vsock-socket": "socket.socket(40, socket.SOCK_STREAM, 0)\n    rc = 0",  # AF_VSOCK
    "alg-socket": "socket.socket(38, socket.SOCK_SEQPACKET, 0)\n    rc = 0",  # AF_ALG
    "mknod-char-device": "os.mknod(f'/tmp/mem-{os.getpid()}', 0o20600, os.makedev(1, 1))\n"
    "    rc = 0",
    "mknod-block-device": "os.mknod(f'/dev/shm/vda-{os.getpid()}', 0o60600,"
    " os.makedev(254, 0))\n    rc = 0",
    "sethostname": "socket.sethostname('owned')\n    rc = 0",
    "chroot": "os.chroot('/tmp')\n    rc = 0",
    "setuid": "os.setuid(12345)\n    rc = 0",
    "setgroups": "os.setgroups([0, 4, 27])\n    rc = 0",
    # capset: every capability in the effective and permitted sets
    "capset": "hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
    "    data = (ctypes.c_uint32 * 6)(0xffffffff, 0xffffffff, 0, 0x1ff, 0x1ff, 0)\n"
    "    rc = libc.capset(hdr, data)",
    "iopl": "rc = libc.syscall(172, 3)",
    "ioperm": "rc = libc.syscall(173, 0x80, 1, 1)",
    "perf_event_open": "attr = ctypes.create_string_buffer(128)\n"
    "    struct.pack_into('II', attr, 0, 1, 128)\n"  # PERF_TYPE_SOFTWARE, size
    "    rc = libc.syscall(298, attr, 0, -1, -1, 0)",
    "userfaultfd": "rc = libc.syscall(323, 0)",
    "kexec_load": "rc = libc.syscall(246, 0, 0, 0, 0)",
    "reboot-cad-off": "rc = libc.syscall(169, 0xfee1dead, 672274793, 0, 0)",
    "swapon": "rc = libc.syscall(167, b'/tmp/none', 0)",
    "acct": "rc = libc.syscall(163, b'/tmp/acct')",
    "syslog-read": "buf = ctypes.create_string_buffer(4096)\n"
    "    rc = libc.syscall(103, 3, buf, 4096)",
    # setting the clock to the time it already is: harmless if ever allowed
    "clock_settime": "ts = (ctypes.c_long * 2)(int(time.time()), 0)\n"
    "    rc = libc.syscall(227, 0, ts)",
    "open_by_handle_at": "fh = ctypes.create_string_buffer(struct.pack('Ii', 8, 1) + bytes(8))\n"
    "    rc = libc.syscall(304, -100, fh, 0)",
    "io_uring_setup": "params = ctypes.create_string_buffer(120)\n"
    "    rc = libc.syscall(425, 1, params)",
    "personality-no-aslr": "rc = libc.personality(0x0040000)\n"  # ADDR_NO_RANDOMIZE
    "    rc = -1 if rc == -1 else 0",
    "tiocsti": "import fcntl\n    fcntl.ioctl(0, 0x5412, b'x')\n    rc = 0",
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_privileged_system_calls_are_refused(sandbox: Sandbox, name: str) -> None:
    code = PRELUDE + "    " + CALLS[name] + POSTLUDE
    for user in USERS:
        _, out = py(sandbox, code, user=user)
        m = re.search(r"RESULT (-?\d+) (\w*)", out)
        assert m is not None, (name, user, out)
        assert m.group(1) == "-1" and m.group(2) in REFUSED, (name, user, out)


@pytest.mark.parametrize(
    "cmd",
    [
        "unshare -r true",
        "unshare -U true",
        "unshare -m true",
        "unshare -n true",
        "unshare -p -f true",
        "nsenter -t 1 -m true",
        "nsenter -t 1 -U true",
        "mount -t tmpfs none /mnt",  # setuid root in the image: as user too
        "mount -o remount,rw /",
        "mount --bind /tmp /usr",
        "umount /proc",
        "su -c id root </dev/null",
        "chroot /tmp /bin/true",
        "hostname owned",
        "setpriv --reuid=0 --inh-caps=+all --ambient-caps=+all true",
    ],
)
def test_privileged_tools_fail(sandbox: Sandbox, cmd: str) -> None:
    tool = cmd.split()[0]
    assert run(sandbox, f"command -v {tool}")[0] == 0, f"{tool} is not in the image"
    for user in USERS:
        code, out = run(sandbox, cmd, user)
        assert code != 0, (cmd, user, out)
    assert run(sandbox, "hostname")[1].strip() != "owned"


def _status_lines(out: str) -> dict[str, str]:
    return {
        line.split(":")[0]: line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if ":" in line
    }


# gVisor's /proc/<pid>/status has no CapAmb nor NoNewPrivs line: the process asks its kernel
NO_NEW_PRIVS = (
    "import ctypes; libc = ctypes.CDLL(None); "
    "print('NoNewPrivs:', libc.prctl(39, 0, 0, 0, 0)); "  # PR_GET_NO_NEW_PRIVS
    "print('CapAmb:', '%016x' % sum(1 << c for c in range(41) if libc.prctl(47, 1, c, 0, 0) == 1))"
)


def _no_capabilities(values: dict[str, str], what: object) -> None:
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert values.get(cap) == "0000000000000000", what
    assert values.get("NoNewPrivs") == "1" and values.get("Seccomp") == "2", what


def test_no_capabilities_for_any_command_or_cell(sandbox: Sandbox) -> None:
    status = "grep -E '^(Cap(Eff|Prm|Inh|Amb)|NoNewPrivs|Seccomp):' /proc/self/status"
    for user in USERS:
        _, out = run(sandbox, status, user)
        values = _status_lines(out)
        if "NoNewPrivs" not in values:  # gVisor's kernel: asked instead
            _, asked = run(sandbox, f'python3 -c "{NO_NEW_PRIVS}"', user)
            values.update(_status_lines(asked))
        _no_capabilities(values, (user, out))
    # a code cell (the warm interpreter the agent keeps) too
    cell = sandbox.run_code("print(open('/proc/self/status').read())")
    values = _status_lines("".join(cell.logs.stdout))
    if "NoNewPrivs" not in values:
        asked = sandbox.run_code(NO_NEW_PRIVS)
        values.update(_status_lines("".join(asked.logs.stdout)))
    _no_capabilities(values, cell.logs)


def test_setuid_binaries_give_nothing(sandbox: Sandbox) -> None:
    # root makes a setuid-root copy of `id` in every writable place; the user runs it
    places = ("/tmp", "/dev/shm", "/home/user")
    for place in places:
        run(sandbox, f"cp /usr/bin/id {place}/suid-id && chmod 4755 {place}/suid-id", "root")
    tried = 0
    for place in places:
        code, out = run(sandbox, f"{place}/suid-id -u && stat -c %a {place}/suid-id", "user")
        if code == 0:  # root could make it: it must not raise the user's uid
            assert out.split() == ["1000", "4755"], (place, out)
            tried += 1
    assert tried, "root could make a setuid file nowhere: nothing was tried"
    # and the image's own setuid programs run as the caller: su cannot make the user root
    code, out = run(sandbox, "su -c 'id -u' root </dev/null", "user")
    assert code != 0 and "\n0\n" not in f"\n{out}"


# -- sysctls and the kernel's helpers ----------------------------------------------------------

HOST_SYSCTLS = (
    "kernel/core_pattern",
    "kernel/modprobe",
    "kernel/hostname",
    "kernel/domainname",
    "vm/max_map_count",
    "kernel/randomize_va_space",
    "kernel/sysrq",
    "fs/file-max",
)


def _host_sysctls() -> dict[str, str]:
    # those this host's kernel has (one built without modules has no kernel/modprobe)
    paths = [Path("/proc/sys", name) for name in HOST_SYSCTLS]
    return {str(p): p.read_text() for p in paths if p.exists()}


@pytest.fixture
def host_sysctls() -> Iterator[dict[str, str]]:
    """The host's values of sysctls a sandbox might try to write; any change is undone (and
    the test asserts there was none)."""
    before = _host_sysctls()
    try:
        yield before
    finally:
        for name, value in before.items():
            path = Path(name)
            if path.read_text() != value:
                path.write_text(value)


def test_writing_proc_sys_changes_nothing_on_the_host(
    sandbox: Sandbox, host_sysctls: dict[str, str]
) -> None:
    helper = f"/tmp/fbx-helper-{secrets.token_hex(4)}"
    values = {
        "kernel/core_pattern": f"|{helper}",
        "kernel/modprobe": helper,
        "kernel/hostname": "fbx-owned",
        "kernel/domainname": "fbx-owned",
        "vm/max_map_count": "65531",
        "kernel/randomize_va_space": "0",
        "kernel/sysrq": "1",
        "fs/file-max": "1000",
    }
    for name, value in values.items():
        for user in USERS:
            run(sandbox, f"echo '{value}' > /proc/sys/{name}", user)
        for user in USERS:  # the files API: the agent itself writes, as that user
            with contextlib.suppress(FireboxException):
                sandbox.files.write(f"/proc/sys/{name}", value + "\n", user=user)
    assert _host_sysctls() == host_sysctls


HELPER_STATUS = (
    "#!/bin/sh\n"
    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status > {out}.$$\n"
    "mv {out}.$$ {out}\n"
)


def test_no_command_gets_the_kernel_to_run_code_with_capabilities(
    sandbox: Sandbox, host_sysctls: dict[str, str]
) -> None:
    """Root inside may not point the kernel's helpers (core dumps, module loading) at a program
    of its own: the kernel runs those as its full root, with every capability and outside the
    sandbox's seccomp filter, which would undo what the sandbox takes away from commands."""
    helper = f"/tmp/fbx-helper-{secrets.token_hex(4)}"
    out_file = helper + ".out"
    sandbox.files.write(helper, HELPER_STATUS.format(out=out_file), user="root")
    run(
        sandbox,
        f"chmod 755 {helper}; printf '\\377\\377\\377\\377' > /tmp/unknown-binfmt;"
        " chmod 755 /tmp/unknown-binfmt",
        "root",
    )
    routes = []
    for name, value in (("core_pattern", f"|{helper}"), ("modprobe", helper)):
        _, out = run(sandbox, f"echo '{value}' > /proc/sys/kernel/{name} && echo WROTE", "root")
        routes.append(f"{name} by a root command: {'written' if 'WROTE' in out else 'refused'}")
        try:
            sandbox.files.write(f"/proc/sys/kernel/{name}", value + "\n", user="root")
            routes.append(f"{name} by the files API as root: written")
        except FireboxException:
            routes.append(f"{name} by the files API as root: refused")
    # what would make the kernel call them: a core dump, an executable of no known format
    for user in USERS:
        run(sandbox, "ulimit -c unlimited; sh -c 'kill -SEGV $$'; /tmp/unknown-binfmt", user)
    # Where a route was written, the kernel may run the helper a moment later: wait for its
    # report (10 s at most). Where none was, there is nothing that could write one.
    wait = ""
    if any(route.endswith("written") for route in routes):
        wait = f"while [ ! -e {out_file} ] && [ $SECONDS -lt 10 ]; do sleep 0.1; done; "
    _, status = run(sandbox, f"{wait}cat {out_file} 2>/dev/null; true", "root")
    values = _status_lines(status)
    assert not values or (
        values.get("CapEff") == "0000000000000000" and values.get("Seccomp") == "2"
    ), f"the kernel ran the sandbox's helper with {values} ({'; '.join(routes)})"
    assert _host_sysctls() == host_sysctls


# -- devices ------------------------------------------------------------------------------------

DEVICES = """
import os
for path in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/vda", "/dev/sda", "/dev/nvme0n1",
             "/dev/kmsg", "/dev/vdb", "/dev/ttyS0", "/dev/console"):
    for mode, flags in (("read", os.O_RDONLY), ("write", os.O_WRONLY)):
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as e:
            print("refused", mode, path, e.strerror)
            continue
        os.close(fd)
        print("OPENED", mode, path)
"""


def test_devices_of_the_host_cannot_be_opened(sandbox: Sandbox, daemon: Daemon) -> None:
    for user in USERS:
        _, out = py(sandbox, DEVICES, user=user)
        opened = [line for line in out.splitlines() if line.startswith("OPENED")]
        # kernel memory and I/O ports: never; a jail has none of these devices at all. In a
        # microVM they are the guest's own, its disks only for root: whether root can change
        # the root disk every sandbox shares is judged from the host below.
        for line in opened:
            _, _, path = line.split()
            assert path not in ("/dev/mem", "/dev/kmem", "/dev/port"), (user, line)
            assert daemon.isolation == "microvm", (user, line)  # a jail has none of them
            if path in ("/dev/vda", "/dev/vdb", "/dev/sda", "/dev/nvme0n1"):
                assert user == "root", (user, line)


@pytest.mark.backends("microvm")
def test_guest_root_cannot_write_the_shared_root_disk(sandbox: Sandbox, daemon: Daemon) -> None:
    qemu = qemu_pid(daemon, sandbox.sandbox_id)
    args = Path(f"/proc/{qemu}/cmdline").read_bytes().decode().split("\0")
    drive = next(a for a in args if a.startswith("id=root,"))
    assert "readonly=on" in drive.split(","), drive
    image = Path(f"/proc/{qemu}/root") / next(
        opt.removeprefix("file=").lstrip("/") for opt in drive.split(",") if opt.startswith("file=")
    )
    with image.open("rb") as f:
        f.seek(-4096, 2)
        tail = f.read()
    _, out = py(
        sandbox,
        "import os\n"
        "try:\n"
        " fd = os.open('/dev/vda', os.O_WRONLY)\n"
        " os.lseek(fd, -4096, 2); os.write(fd, b'fbx' * 1365); os.fsync(fd); print('WROTE')\n"
        "except OSError as e:\n print('refused', e)\n",
        user="root",
    )
    try:
        with image.open("rb") as f:
            f.seek(-4096, 2)
            assert f.read() == tail, "a guest changed the root disk that every sandbox shares"
    finally:
        with image.open("rb") as f:
            f.seek(-4096, 2)
            changed = f.read() != tail
        if changed:  # put it back for the sandboxes after this one
            with image.open("r+b") as f:
                f.seek(-4096, 2)
                f.write(tail)
    assert "WROTE" not in out, out
