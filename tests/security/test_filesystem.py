"""Filesystem: sandbox code and the files API reach nothing of the host's files.

The files-API cases run through both edges: firebox's own SDK and API, and E2B's SDK through
the E2B edge (the ``sdk`` and ``any_sandbox`` fixtures).

Judged by what the host sees: a marker file on the host holding a random secret never shows in
anything a sandbox returns, host files are unchanged after write attempts, and nothing appears
on the host. Paths are tried through the files API (as "user" and as "root") and from commands
inside the sandbox: absolute, `..`, `~`, /proc/<pid>/root, symlinks made inside. /proc and
/sys are probed for anything of the host: its processes, secrets, kernel memory, layout.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2b import SandboxException

from firebox import FireboxException, Sandbox, images
from tests.conftest import Daemon
from tests.security.helpers import py, run

USERS = ("user", "root")
# What a refused file call raises: through firebox's SDK, or E2B's (the any_sandbox fixture)
FILE_ERRORS = (FireboxException, SandboxException)


def _paths_to(target: Path) -> list[str]:
    rel = "../" * 12 + str(target).lstrip("/")
    return [
        str(target),
        rel,
        "/home/user/" + rel,
        "/tmp/../" + rel,
        f"/proc/self/root{target}",
        f"/proc/1/root{target}",
        f"/proc/self/cwd/{rel}",
        "~/" + rel,
    ]


def _host_only_files(daemon: Daemon, marker: Path) -> list[Path]:
    return [
        marker,
        daemon.home / "admin.key",
        daemon.home / "firebox.db",
        Path(__file__),  # the host's checkout
    ]


# -- the files API ---------------------------------------------------------------------------


def test_files_api_reads_never_reach_host_files(
    any_sandbox: Any, marker: tuple[Path, str], daemon: Daemon
) -> None:
    path, secret = marker
    for target in _host_only_files(daemon, path):
        for p in _paths_to(target):
            for user in USERS:
                try:
                    data = any_sandbox.files.read(p, format="bytes", user=user)
                except FILE_ERRORS:
                    continue
                assert secret.encode() not in data and daemon.key.encode() not in data, p
                assert b"_paths_to" not in data, p  # this very file's text


def test_symlinks_pointing_out_stay_inside(
    any_sandbox: Any, marker: tuple[Path, str], daemon: Daemon
) -> None:
    path, secret = marker
    any_sandbox.commands.run(f"ln -s {path} /home/user/link; ln -s {daemon.home} /home/user/dlink")
    for p in ("/home/user/link", "link", "dlink/admin.key"):
        for user in USERS:
            with pytest.raises(FILE_ERRORS):
                any_sandbox.files.read(p, user=user)
    # writing through a link that points at a host path creates nothing on the host
    escape = Path("/tmp") / f"firebox-escape-{uuid.uuid4().hex}"
    any_sandbox.commands.run(f"ln -s {escape} /home/user/out")
    any_sandbox.files.write("/home/user/out", "written through a link")
    assert not escape.exists()
    assert any_sandbox.files.read(str(escape)) == "written through a link"  # the sandbox's own /tmp
    # a link to the host file's directory, written through; and the host path itself (for
    # root that is the sandbox's own /root, a tmpfs: whatever lands there stays inside)
    any_sandbox.commands.run(f"ln -s {path.parent} /tmp/rootdir", user="root")
    for user in USERS:
        for p in (f"/tmp/rootdir/{path.name}", str(path)):
            try:
                any_sandbox.files.write(p, "overwrite", user=user)
            except FILE_ERRORS:
                assert user == "user" or p != str(path), p
    with pytest.raises(FILE_ERRORS):
        any_sandbox.files.write(str(path), "overwrite", user="user")
    assert path.read_text() == secret


def test_writes_with_dotdot_land_inside(any_sandbox: Any) -> None:
    name = f"firebox-escape-{uuid.uuid4().hex}"
    info = any_sandbox.files.write("../../../../../../tmp/" + name, "x")
    assert info.path == f"/tmp/{name}"
    assert not Path("/tmp", name).exists()
    for target in (f"/root/{name}", f"/etc/{name}", f"/var/lib/{name}"):
        with pytest.raises(FILE_ERRORS):
            any_sandbox.files.write(target, "x")
        assert not os.path.exists(target)
    for user in USERS:
        for target in (f"/etc/{name}", f"/usr/{name}", f"/var/lib/{name}", f"/work/{name}"):
            with contextlib.suppress(FILE_ERRORS):
                any_sandbox.files.write(target, "x", user=user)
            assert not os.path.exists(target), target


def test_rename_remove_and_mkdir_never_touch_the_host(
    any_sandbox: Any, marker: tuple[Path, str], daemon: Daemon
) -> None:
    path, secret = marker
    name = f"firebox-escape-{uuid.uuid4().hex}"
    any_sandbox.files.write("/home/user/mine", "mine")
    for user in USERS:
        for p in _paths_to(path) + _paths_to(daemon.home / "admin.key"):
            with contextlib.suppress(FILE_ERRORS):
                any_sandbox.files.remove(p, user=user)
            try:
                moved = any_sandbox.files.rename(p, f"/home/user/stolen-{user}", user=user)
            except FILE_ERRORS:
                continue
            # whatever was there was the sandbox's own file, never the host's
            assert any_sandbox.files.read(moved.path, user=user) != secret
        for p in (f"/tmp/../../../../root/{name}", f"/proc/1/root/tmp/{name}", f"/work/{name}"):
            with contextlib.suppress(FILE_ERRORS):
                any_sandbox.files.make_dir(p, user=user)
            try:
                any_sandbox.files.rename("/home/user/mine", p, user=user)
                any_sandbox.files.rename(p, "/home/user/mine", user=user)
            except FILE_ERRORS:
                pass
    assert path.read_text() == secret
    assert (daemon.home / "admin.key").read_text().strip() == daemon.key
    for host_path in (f"/root/{name}", f"/tmp/{name}", f"/work/{name}"):
        assert not os.path.exists(host_path), host_path
    with pytest.raises(FILE_ERRORS):
        any_sandbox.files.watch_dir(str(daemon.home))


def test_listing_the_root_shows_the_image_not_the_host(any_sandbox: Any) -> None:
    for user in USERS:
        names = {e.name for e in any_sandbox.files.list("/", user=user)}
        assert {"usr", "etc", "home", "tmp"} <= names
        assert "work" not in names  # the host's /work (this checkout) is not there
        with pytest.raises(FILE_ERRORS):
            any_sandbox.files.list("/work", user=user)
        for p in ("/proc/1/root", "/proc/self/root", "/" + "../" * 8):
            try:
                inner = {e.name for e in any_sandbox.files.list(p, user=user)}
            except FILE_ERRORS:
                continue  # /proc/1/root of the sandbox's init is not the user's to look into
            assert "work" not in inner and "usr" in inner, p


def test_odd_file_metadata_does_not_break_the_files_api(
    sandbox: Sandbox, backend_name: str
) -> None:
    handle = sandbox.files.watch_dir("/home/user")
    try:
        sandbox.commands.run(
            "python3 -c \"import os; open('far', 'w'); os.utime('far', (1e13, 1e13));"
            " open(b'bad\\xff', 'w'); os.symlink(b'\\xfe', b'link\\xfd')\""
        )
        names = {e.name for e in sandbox.files.list("/home/user")}
        assert {"far", "bad\ufffd", "link\ufffd"} <= names
        # clamped to the API's 9999 on tmpfs (jail); ext4 (a microVM's disk) stops at 2446;
        # gVisor's kernel wraps such a time into some year of its own: still a valid answer
        year = sandbox.files.get_info("far").modified_time.year
        assert year in (9999, 2446) or backend_name == "gvisor", year
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while "bad\ufffd" not in seen and time.monotonic() < deadline:
            seen |= {e.name for e in handle.get_new_events()}
            time.sleep(0.05)
        assert "bad\ufffd" in seen
    finally:
        handle.stop()


# -- commands inside the sandbox -----------------------------------------------------------


def test_host_files_outside_the_image_are_invisible(
    sandbox: Sandbox, daemon: Daemon, marker: tuple[Path, str]
) -> None:
    path, secret = marker
    for user in USERS:
        code, out = run(sandbox, f"cat {path}; ls /work /root 2>&1; cat /etc/hostname", user)
        assert secret not in out
        assert "main" not in out.split()  # /work/main is the host's checkout
    # the daemon's state dir, admin key and registry do not exist inside
    code, out = run(sandbox, f"ls {daemon.home} {daemon.home}/admin.key", "root")
    assert code != 0 and daemon.key not in out
    code, out = run(
        sandbox,
        "grep -rE 'e2b_[0-9a-f]{20}|fbx_' /etc /opt /home /tmp 2>/dev/null | head -1",
        "root",
    )
    assert daemon.key not in out


def test_proc_root_and_dotdot_tricks_inside_stay_inside(
    sandbox: Sandbox, marker: tuple[Path, str], daemon: Daemon
) -> None:
    path, secret = marker
    name = f"firebox-escape-{uuid.uuid4().hex}"
    tricks = (
        f"cat {path}; cat /proc/1/root{path}; cat /proc/self/root{path}",
        f"for p in /proc/[0-9]*; do cat $p/root{path} $p/cwd/{path.name}; done",
        f"cd / && cd ../../../.. && cat ./{str(path).lstrip('/')}",
        f"cat /../../../..{path}; cat /proc/self/cwd/{'../' * 10}{str(path).lstrip('/')}",
        # symlinks made inside, followed by the shell and by python
        f"ln -sf / /tmp/up-$$; cat /tmp/up-$${path}",
        f"ln -sf /proc/1/root /tmp/r1-$$; cat /tmp/r1-$${path}; ls /tmp/r1-$$/",
        f"ln -sf {path} /tmp/l-$$; cat /tmp/l-$$",
        f"cat {daemon.home}/admin.key /proc/1/root{daemon.home}/admin.key",
        # an fd of / opened early, then openat with ..: the mount namespace's root holds
        "python3 -c \"import os; d = os.open('/', os.O_RDONLY); "
        f"print(open(os.path.join('/proc/self/fd', str(d), '{'../' * 10}' + "
        f"'{str(path).lstrip('/')}')).read())\"",
        # writes: nothing of these may appear on the host
        f"touch /proc/1/root/tmp/{name} /../../tmp/{name} /proc/self/cwd/../../root/{name}",
        f"mkdir -p /tmp/../../../../work/{name}; echo x > {path}",
    )
    for user in USERS:
        for trick in tricks:
            _, out = run(sandbox, trick, user)
            assert secret not in out and daemon.key not in out, (user, trick, out[-500:])
            assert "main" not in out.split(), (user, trick)  # /work/main: the host's checkout
    assert path.read_text() == secret
    for host_path in (f"/tmp/{name}", f"/root/{name}", f"/work/{name}"):
        assert not os.path.exists(host_path), host_path


def test_the_root_image_is_read_only(sandbox: Sandbox) -> None:
    name = f"evil-{secrets.token_hex(4)}"
    for user in USERS:
        code, out = run(sandbox, f"touch /usr/bin/{name} /etc/{name}", user)
        assert code != 0
    code, out = run(sandbox, f"ls /usr/bin/{name} /etc/{name}", "root")
    assert code != 0
    # and on the host: the image (shared by every sandbox of its template) is unchanged
    rootfs = images.image_path(images.DEFAULT_TEMPLATE)
    assert rootfs is not None
    assert not (rootfs / "usr" / "bin" / name).exists()
    assert not (rootfs / "etc" / name).exists()


def test_shared_memory_is_there_for_the_user_and_capped(sandbox: Sandbox) -> None:
    r = sandbox.commands.run(
        "python3 -c 'import multiprocessing as m; m.Lock(); print(\"ok\")'; df -k /dev/shm"
    )
    assert r.stdout.startswith("ok\n")
    size_kb = int(r.stdout.splitlines()[-1].split()[1])
    assert size_kb <= 256 * 1024


# -- /proc and /sys ----------------------------------------------------------------------------

PROBE = r"""
import os, sys
LIMIT, TOTAL = 65536, 4 << 20
out = sys.stdout.buffer
total = 0

def dump(path):
    # non-blocking: /dev/kmsg and /proc/kmsg would wait for the next kernel message
    global total
    if total > TOTAL:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    data = b""
    try:
        while len(data) < LIMIT:
            chunk = os.read(fd, LIMIT)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    finally:
        os.close(fd)
    if not data:
        return
    total += len(data)
    out.write(b"\n== " + path.encode() + b"\n" + data)

FILES = ["/proc/kcore", "/proc/sched_debug", "/proc/timer_list", "/proc/kallsyms",
         "/proc/keys", "/proc/key-users", "/proc/modules", "/proc/iomem", "/proc/ioports",
         "/proc/vmallocinfo", "/proc/slabinfo", "/proc/mounts", "/proc/self/mountinfo",
         "/proc/self/cgroup", "/proc/1/cgroup", "/proc/1/mountinfo", "/proc/1/environ",
         "/proc/kmsg", "/proc/config.gz", "/proc/lockdep", "/proc/sys/kernel/hostname",
         "/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/etc/machine-id",
         "/run/machine-id", "/var/lib/dbus/machine-id"]
for path in FILES:
    dump(path)
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for name in ("cmdline", "comm", "status", "environ", "cgroup"):
            dump(f"/proc/{pid}/{name}")
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                dump(f"/proc/{pid}/task/{tid}/comm")
        except OSError:
            pass
for top in ("/sys/firmware", "/sys/kernel", "/sys/class/dmi", "/sys/devices/virtual/dmi",
            "/sys/fs/cgroup", "/sys/hypervisor"):
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in ("debug", "tracing", "slab")]
        for name in files:
            dump(os.path.join(root, name))
"""


@pytest.fixture
def host_process() -> Iterator[tuple[str, str]]:
    """A process on the host with a distinctive name and command line: (comm, token)."""
    comm = "fbxh" + secrets.token_hex(5)  # 14 characters: within comm's 15
    token = "fbx-host-process-" + secrets.token_hex(8)
    code = (
        "import ctypes, sys, time\n"
        f"ctypes.CDLL(None).prctl(15, b'{comm}', 0, 0, 0)\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, token], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield comm, token
    finally:
        proc.kill()  # by its PID
        proc.wait(10)


def test_proc_and_sys_give_nothing_of_the_host(
    sandbox: Sandbox,
    daemon: Daemon,
    marker: tuple[Path, str],
    host_process: tuple[str, str],
) -> None:
    path, secret = marker
    comm, token = host_process
    host_ids = [
        p.read_text().strip()
        for p in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
        if p.exists() and p.read_text().strip()
    ]
    fingerprints = {
        "the marker file's secret": secret,
        "the admin key": daemon.key,
        "the daemon's home": str(daemon.home),
        "the daemon's cgroup parent (the host's cgroup layout)": daemon.cgroup_parent,
        "a host process's name": comm,
        "a host process's command line": token,
        "the daemon's command line": f"serve --port {daemon.port}",
        **{f"the host's machine id {i}": v for i, v in enumerate(host_ids)},
    }
    for user in USERS:
        _, out = py(sandbox, PROBE, user=user, timeout=120)
        assert "== /proc/self/status" in out or "== /proc/1/status" in out, out[:500]
        for what, value in fingerprints.items():
            assert value not in out, f"{what} is visible to {user}: {_around(out, value)}"
        # no kernel memory, and no kernel addresses (KASLR) for anyone inside
        for dev in ("/proc/kcore", "/dev/mem", "/dev/kmem", "/dev/port"):
            assert f"== {dev}\n" not in out, (user, dev)
        addresses = set(re.findall(r"^([0-9a-f]{16}) [tTdDbBrR] ", out, re.M))
        assert addresses <= {"0" * 16}, (user, sorted(addresses)[:3])


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    header = text.rfind("\n== ", 0, i)
    return text[header : header + 200] + " … " + text[max(i - 100, 0) : i + 100]


def test_no_host_process_is_visible(sandbox: Sandbox) -> None:
    # counting processes with a command line: a microVM's own kernel threads have none
    for user in USERS:
        _, out = run(sandbox, "grep -lsz . /proc/[0-9]*/cmdline | wc -l", user)
        assert 0 < int(out.split()[0]) < 20, (user, out)
