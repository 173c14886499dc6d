"""A real firebox cluster on this machine, made by the tests and removed after them.

    with Cluster(nodes=3, gateways=2) as cluster:
        sbx = Sandbox.create(**cluster.sdk(0))             # through the first gateway
        cluster.nodes[1].kill()                            # as if its host died

What it starts, each stopped by its PID:

- PostgreSQL (``Postgres``): Debian's server in a temporary data directory, run as the
  ``postgres`` user (it refuses root), trusting connections from loopback and the bridge;
- an OCI registry (tests/registry.py): Debian's ``docker-registry``, where nodes push and pull
  built templates;
- a Linux bridge (``Bridge``) and per node a network namespace (``Namespace``) with a veth on
  the bridge: each node has an address of its own, as on separate hosts, and everything it
  sends stays on this bridge;
- nodes (``Node``): ``firebox serve`` inside its namespace, with its own home, image directory
  (the built guest images hard-linked, never built templates: those a node gets from the
  registry only) and cgroup parent;
- gateways (``Gateway``): ``firebox gateway`` on loopback in the root namespace.

Everything is undone in reverse order, also when a test or the setup fails half-way: each
step's undo is registered as soon as the step succeeded. Nothing is found or stopped by name:
processes by the PIDs started here, or by membership of a cgroup or a namespace made here.
Needs root, ``ip`` (iproute2), ``nsenter``, PostgreSQL and docker-registry; ``unavailable()``
says why not.

Set FIREBOX_CLUSTER_LOGS to a directory to keep every process's log there after teardown.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from firebox.confine.cgroups import PARENT_ENV
from firebox.testing import descendants
from tests.registry import Registry

REGISTRY_BIN = Path("/usr/bin/docker-registry")
NODE_PORT = 7070
SUBNET = "10.251"  # 10.251.<x>.0/24, <x> per run
START_DEADLINE = 120.0  # seconds for a node or gateway to answer /health (a loaded host)
SERVICE_DEADLINE = 60.0  # for PostgreSQL and the registry to answer
STOP_DEADLINE = 60.0  # for a SIGTERM'd daemon to end its sandboxes and exit
KILL_DEADLINE = 15.0  # for SIGKILL'd processes to be gone
TOOL_DEADLINE = 120.0  # for one command (ip, initdb, db migrate)
LOG_TAIL = 4000
KEEP_LOGS_ENV = "FIREBOX_CLUSTER_LOGS"


class Unavailable(Exception):
    """This machine cannot run the cluster (not root, no PostgreSQL, …): a reason to skip."""


# -- small helpers ---------------------------------------------------------------------------


def run(argv: Sequence[str], timeout: float = TOOL_DEADLINE, **kw: Any) -> str:
    """A command's stdout; RuntimeError with its stderr if it fails."""
    out = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({out.returncode}): {(out.stderr or out.stdout)[-2000:]}"
        )
    return out.stdout


def tail(path: Path, size: int = LOG_TAIL) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return f"(no log at {path})"


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` right now (a race with other programs is
    possible: callers that bind it later retry)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def wait_http(
    url: str, proc: subprocess.Popen[bytes], deadline: float, what: str, log: Path
) -> None:
    """Until ``url`` answers 200; RuntimeError with the log's end if ``proc`` exits first or
    the deadline passes. Proxies in the environment are ignored: this is local traffic."""
    end = time.monotonic() + deadline
    while True:
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); the end of {log}:\n{tail(log)}")
        if time.monotonic() > end:
            raise RuntimeError(f"{what} did not answer {url} in {deadline:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def kill_pids(pids: Sequence[int] | set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile (with its parent)
            os.kill(pid, signal.SIGKILL)


def stop_process(
    proc: subprocess.Popen[bytes] | None,
    sig: int = signal.SIGTERM,
    deadline: float = STOP_DEADLINE,
    with_children: bool = True,
) -> None:
    """``sig`` to ``proc`` by its PID, SIGKILL if it outlives ``deadline`` (its children too:
    a SIGKILL'd PostgreSQL or registry must not leave a worker behind)."""
    if proc is None or proc.poll() is not None:
        return
    children = descendants(proc.pid) if with_children else []
    proc.send_signal(sig)
    try:
        proc.wait(deadline)
    except subprocess.TimeoutExpired:
        kill_pids([proc.pid, *children])
        proc.wait(KILL_DEADLINE)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount this process sees."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), before.split()[4])
        found.append((point, after.split()[0]))
    return found


def unmount_under(path: Path) -> None:
    """Lazily unmount whatever is mounted at or below ``path``, deepest first (a node's
    sandbox disks, after it was killed), so that removing ``path`` removes only its files."""
    prefix = str(path.resolve())
    points = [p for p, _ in _mounts() if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=TOOL_DEADLINE)
    if left := [p for p, _ in _mounts() if p == prefix or p.startswith(prefix + "/")]:
        raise RuntimeError(f"still mounted under {path}: {left}")


def remove_tree(path: Path) -> None:
    """Remove ``path`` once nothing is mounted below it (never a mounted filesystem's
    files)."""
    if path.exists():
        unmount_under(path)
        shutil.rmtree(path)


# -- cgroups: v1 (one hierarchy per controller) or v2 (one) -----------------------------------


def cgroup_dirs(parent: str) -> list[Path]:
    """``parent``'s directory in every mounted cgroup hierarchy that has one."""
    roots = {Path(p) for p, kind in _mounts() if kind in ("cgroup", "cgroup2")}
    return sorted(d for root in roots if (d := root / parent).is_dir())


def cgroup_pids(parent: str) -> set[int]:
    """Every process in ``parent`` or a cgroup below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(parent):
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):  # removed meanwhile
                    pids |= {int(p) for p in Path(dirpath, "cgroup.procs").read_text().split()}
    return pids


def _thaw(parent: str) -> None:
    # a frozen task (a paused jail) takes its SIGKILL only once thawed
    for top in cgroup_dirs(parent):
        for dirpath, _, files in os.walk(top):
            with contextlib.suppress(OSError):
                if "freezer.state" in files:
                    Path(dirpath, "freezer.state").write_text("THAWED")
                if "cgroup.freeze" in files:
                    Path(dirpath, "cgroup.freeze").write_text("0")


def kill_cgroups(parent: str, deadline: float = KILL_DEADLINE) -> None:
    """SIGKILL every process under ``parent`` until none is left."""
    end = time.monotonic() + deadline
    while pids := cgroup_pids(parent):
        if time.monotonic() > end:
            raise RuntimeError(f"processes left in cgroup {parent} after SIGKILL: {sorted(pids)}")
        _thaw(parent)
        kill_pids(pids)
        time.sleep(0.05)


def remove_cgroups(parent: str) -> None:
    """Kill what is left under ``parent``, then remove its directories, deepest first."""
    kill_cgroups(parent)
    end = time.monotonic() + KILL_DEADLINE
    for top in cgroup_dirs(parent):
        for dirpath, _, _ in os.walk(top, topdown=False):
            while True:  # a cgroup whose last task just died may be busy for a moment
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)


# -- what cannot run here ---------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (pg_config may be a client-only package's)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, RuntimeError):
        bindir = Path(run(["pg_config", "--bindir"], timeout=10).strip())
        if (bindir / "postgres").exists() and (bindir / "initdb").exists():
            return bindir
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def postgres_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "PostgreSQL is run here as its own user: the tests need root to switch to it"
    if postgres_bindir() is None:
        return "PostgreSQL's server is not installed (apt-get install postgresql)"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user to run PostgreSQL as"
    return None


def unavailable() -> str | None:
    """Why a cluster cannot be started on this machine, or None."""
    if reason := postgres_unavailable():
        return reason
    if not REGISTRY_BIN.exists():
        return f"{REGISTRY_BIN} is not installed (apt-get install docker-registry)"
    for tool in ("ip", "nsenter", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        builtin_images()
    except Unavailable as e:
        return str(e)
    probe = f"fbx-probe-{os.getpid()}"
    try:
        run(["ip", "netns", "add", probe], timeout=10)
    except (RuntimeError, subprocess.SubprocessError) as e:
        return f"network namespaces cannot be made here: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


# -- PostgreSQL -------------------------------------------------------------------------------


class Postgres:
    """A PostgreSQL server of its own: ``initdb`` in a temporary directory, the server run as
    the ``postgres`` user as our child (stopped by its PID), a database ``firebox``.

    ``listen``: the addresses it listens on (loopback first); ``trust``: the networks whose
    connections it takes without a password (loopback always; a cluster adds the bridge);
    ``parent``: where its directory is made (then the caller removes it), else in /tmp."""

    def __init__(
        self,
        listen: Sequence[str] = ("127.0.0.1",),
        trust: Sequence[str] = (),
        parent: Path | None = None,
    ) -> None:
        reason = postgres_unavailable()
        bindir = postgres_bindir()
        if reason or bindir is None:
            raise Unavailable(reason or "PostgreSQL's server is not installed")
        self.bindir = bindir
        self.listen = list(listen)
        self.trust = ["127.0.0.1/32", *trust]
        self.dir = Path(tempfile.mkdtemp(prefix="firebox-pg-", dir=parent))
        self._own_dir = parent is None
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    def url_at(self, host: str, database: str = "firebox") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        """For processes in the root namespace (tests, gateways)."""
        return self.url_at("127.0.0.1")

    @property
    def url_from_bridge(self) -> str:
        """For nodes in their namespaces: the bridge's address (the second listened on)."""
        return self.url_at(self.listen[1])

    def _as_postgres(self) -> dict[str, Any]:
        # the server refuses to run as root: Popen switches user itself, so the PID we hold is
        # the server's own (runuser would stand between)
        return {"user": "postgres", "group": "postgres", "extra_groups": [], "cwd": self.dir}

    @staticmethod
    def _env() -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}

    def start(self) -> Postgres:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dir.chmod(0o700)
        data = self.dir / "data"
        run(
            [
                str(self.bindir / "initdb"),
                "-D", str(data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            env=self._env(),
            **self._as_postgres(),
        )  # fmt: skip
        hba = ["local all all trust"] + [f"host all all {net} trust" for net in self.trust]
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        for _ in range(3):  # the port may be taken between our probe and the server's bind
            self.port = free_port(*self.listen)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port),
                        "-c", f"listen_addresses={','.join(self.listen)}",
                        "-c", f"unix_socket_directories={self.dir}",
                        # a test database: nothing to keep across a power loss
                        "-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off",
                        "-c", "max_connections=200",
                    ],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, env=self._env(), **self._as_postgres(),
                )  # fmt: skip
            if self._wait_ready():
                run([str(self.bindir / "createdb"), *self._client_args(), "firebox"])
                return self
            stop_process(self.proc, signal.SIGINT, 10)
        raise RuntimeError(f"PostgreSQL did not start:\n{tail(self.log_path)}")

    def _client_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        end = time.monotonic() + SERVICE_DEADLINE
        while self.proc.poll() is None and time.monotonic() < end:
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), *self._client_args(), "-t", "2"],
                capture_output=True,
                timeout=10,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def create_database(self, name: str) -> str:
        """Another empty database; its URL (from loopback)."""
        run([str(self.bindir / "createdb"), *self._client_args(), name])
        return self.url_at("127.0.0.1", name)

    def stop(self) -> None:
        # SIGINT: "fast" shutdown (sessions are cut, no waiting for clients to leave)
        stop_process(self.proc, signal.SIGINT, 30)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def migrate(url: str) -> str:
    """``firebox db migrate``: the cluster's schema in the database at ``url``."""
    return run([sys.executable, "-m", "firebox.cli", "db", "migrate", "--cluster-db", url])


# -- the OCI registry: the tests' own (tests/registry.py), on the bridge, deletes allowed ----


# -- the network: a bridge, a namespace per node ----------------------------------------------


def _ip_lines(*args: str) -> str:
    return run(["ip", *args], timeout=10)


class Bridge:
    """A Linux bridge ``fbxbr<id>`` with 10.251.<x>.1/24: the network of this run's nodes.

    ``<x>`` and ``<id>`` come from our PID (so that two runs at once pick apart) and are
    checked free: no interface or route of this host uses the subnet or the names."""

    def __init__(self) -> None:
        links = set(re.findall(r"^\d+: ([^:@]+)", _ip_lines("-o", "link", "show"), re.M))
        netns = {line.split()[0] for line in _ip_lines("netns", "list").splitlines() if line}
        in_use = _ip_lines("-o", "-4", "addr", "show") + _ip_lines(
            "-4", "route", "show", "table", "all"
        )
        pid = os.getpid()
        self.x = next(
            (
                x
                for x in ((pid + n) % 250 + 1 for n in range(250))
                if f"{SUBNET}.{x}." not in in_use
            ),
            0,
        )
        if not self.x:
            raise RuntimeError(f"every {SUBNET}.x.0/24 is in use on this host")
        # <id>: our PID in hex (≤ 6 digits), a suffix if a stale run left its names behind;
        # every interface name stays within the kernel's 15 characters
        self.id = next(
            i
            for i in (f"{pid:x}" + (f"{n:x}" if n else "") for n in range(16))
            if f"fbxbr{i}" not in links
            and f"fbx-{i}-1" not in netns
            and not any(link.startswith(f"fbxv{i}n") for link in links)
        )
        self.name = f"fbxbr{self.id}"
        self.address = f"{SUBNET}.{self.x}.1"
        self.subnet = f"{SUBNET}.{self.x}.0/24"
        self._rules: list[list[str]] = []  # iptables rules we inserted, to delete after

    def host(self, index: int) -> str:
        """The address of namespace ``index`` (1, 2, …)."""
        return f"{SUBNET}.{self.x}.{10 + index}"

    def create(self) -> Bridge:
        try:
            run(["ip", "link", "add", self.name, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.address}/24", "dev", self.name])
            run(["ip", "link", "set", self.name, "up"])
            self._open_firewall()
        except BaseException:
            self.remove()
            raise
        return self

    def _open_firewall(self) -> None:
        """Let this bridge's traffic through a host firewall, if one filters.

        Traffic between the root namespace and a node (to PostgreSQL, the registry, the
        node's API) passes the INPUT and OUTPUT chains; with br_netfilter loaded
        (/proc/sys/net/bridge/bridge-nf-call-iptables = 1) traffic between two nodes, merely
        bridged, passes FORWARD too. Where a chain accepts everything (this machine) nothing
        is changed; else an ACCEPT rule for this bridge alone is inserted, and deleted at
        removal. Global settings (the sysctl) are never touched."""
        if shutil.which("iptables") is None:
            return
        bridged = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
        wanted = {
            "INPUT": ["-i", self.name],
            "OUTPUT": ["-o", self.name],
        }
        if bridged.exists() and bridged.read_text().strip() == "1":
            wanted["FORWARD"] = ["-i", self.name, "-o", self.name]
        for chain, match in wanted.items():
            try:
                rules = run(["iptables", "-w", "5", "-S", chain], timeout=10).split("\n")
            except RuntimeError:
                return  # no iptables kernel support: nothing filters
            if [r for r in rules if r] == [f"-P {chain} ACCEPT"]:
                continue
            rule = [chain, *match, "-m", "comment", "--comment", f"firebox-test-{self.id}"]
            rule += ["-j", "ACCEPT"]
            run(["iptables", "-w", "5", "-I", *rule], timeout=10)
            self._rules.append(rule)

    def remove(self) -> None:
        """Delete what was made (tolerant of a partial creation)."""
        for rule in reversed(self._rules):
            subprocess.run(["iptables", "-w", "5", "-D", *rule], capture_output=True, timeout=10)
        self._rules.clear()
        subprocess.run(["ip", "link", "del", self.name], capture_output=True, timeout=10)

    def exists(self) -> bool:
        return Path("/sys/class/net", self.name).exists()


class Namespace:
    """Network namespace ``fbx-<id>-<index>``: a veth ``fbxv<id>n<index>`` on the bridge,
    whose peer inside is ``eth0`` with the index's address; ``lo`` up.

    No default route unless asked (``default_route``): everything a node reaches (the other
    nodes, PostgreSQL and the registry on the bridge's address) is on the bridge's subnet,
    and a packet to anywhere else then fails at once ("network unreachable"). With a default
    route via the bridge it would be dropped silently (the host does not forward), so a DNS
    lookup, e.g. Python's ``socket.getfqdn`` of the node's address, would wait out every
    resolver timeout (seconds) before failing."""

    def __init__(self, bridge: Bridge, index: int, default_route: bool = False) -> None:
        self.bridge = bridge
        self.index = index
        self.default_route = default_route
        self.name = f"fbx-{bridge.id}-{index}"
        self.veth = f"fbxv{bridge.id}n{index}"
        assert len(self.veth) <= 15 and len(bridge.name) <= 15, "interface names: 15 chars"
        self.address = bridge.host(index)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> Namespace:
        ns = ["ip", "-n", self.name]
        try:
            run(["ip", "netns", "add", self.name])
            # the peer is made inside the namespace: no "eth0" ever exists in the root one
            run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
                 "netns", self.name])  # fmt: skip
            run(["ip", "link", "set", self.veth, "master", self.bridge.name, "up"])
            run([*ns, "addr", "add", f"{self.address}/24", "dev", "eth0"])
            run([*ns, "link", "set", "eth0", "up"])
            run([*ns, "link", "set", "lo", "up"])
            if self.default_route:
                run([*ns, "route", "add", "default", "via", self.bridge.address])
        except BaseException:
            self.remove()
            raise
        return self

    def pids(self) -> set[int]:
        """Every process in this namespace (the kernel's view, not names)."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10
        )
        return {int(p) for p in out.stdout.split()} if out.returncode == 0 else set()

    def kill_all(self, deadline: float = KILL_DEADLINE) -> None:
        """SIGKILL whatever still runs in the namespace (a node's supervisors, zygotes)."""
        end = time.monotonic() + deadline
        while pids := self.pids():
            if time.monotonic() > end:
                raise RuntimeError(f"processes left in netns {self.name}: {sorted(pids)}")
            kill_pids(pids)
            time.sleep(0.05)

    def remove(self) -> None:
        """Delete the namespace and its veth pair (tolerant of a partial creation)."""
        try:
            if Path(self.path).exists():
                self.kill_all()
        finally:
            subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=10)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)

    def enter(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace's network, and only its network.

        Not ``ip netns exec``: that also unshares the mount namespace and remounts /sys,
        which hides /sys/fs/cgroup (a daemon there finds no cgroups) and keeps the daemon's
        mounts (its jails' disks) from the next daemon that re-adopts them. ``nsenter`` execs
        the command, so the PID Popen holds is the command's own."""
        return ["nsenter", f"--net={self.path}", "--", *argv]


# -- guest images for a node ------------------------------------------------------------------


def builtin_images() -> list[Path]:
    """The built entries of firebox's own templates (the guest images of ``firebox image
    build``) in the host's image directory: what every node starts with."""
    from firebox import images
    from firebox.images.cache import image_root, ready_rootfs

    found = []
    for template in images.known_templates():
        recipe = images.current_recipe(template)
        if ready_rootfs(recipe, image_root()) is not None:
            found.append(image_root() / recipe.name)
    if not any(p.name.startswith(f"{images.DEFAULT_TEMPLATE}-") for p in found):
        raise Unavailable(
            f"the guest image {images.DEFAULT_TEMPLATE!r} is not built in {image_root()} "
            "(firebox image build)"
        )
    return found


def workdir_for_images() -> Path:
    """A new directory for the cluster's files, on the filesystem of the host's image
    directory (hard links cannot cross filesystems), traversable by the sandboxes' host uids
    (bubblewrap binds a node's images and agent code with their rights)."""
    from firebox.images.cache import image_root

    tmp = Path(tempfile.gettempdir())
    if not image_root().is_dir():
        raise Unavailable(f"no guest images in {image_root()} (firebox image build)")
    same = tmp.stat().st_dev == image_root().stat().st_dev
    path = Path(
        tempfile.mkdtemp(prefix="firebox-cluster-", dir=tmp if same else image_root().parent)
    )
    path.chmod(0o755)
    return path


# -- nodes and gateways -----------------------------------------------------------------------


class _Process:
    """A firebox process we start and stop by its PID, logging to a file of its own."""

    what = "process"
    name = ""

    def __init__(self, root: Path, health_url: str) -> None:
        self.root = root
        self.health_url = health_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.what}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the SDK's settings of whoever runs the tests are not this process's
        for name in ("FIREBOX_URL", "FIREBOX_API_KEY", PARENT_ENV):
            env.pop(name, None)
        return env

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start it without waiting (several start at once; ``wait_ready`` after)."""
        assert not self.running, f"{self} is running already"
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== started {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                # its own session: a Ctrl-C of the test run reaches the tests, whose teardown
                # stops it, not the process first
                start_new_session=True,
            )

    def wait_ready(self, deadline: float = START_DEADLINE) -> None:
        assert self.proc is not None
        try:
            wait_http(self.health_url, self.proc, deadline, str(self), self.log_path)
        except RuntimeError:
            self.kill_process()
            raise

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers past STOP_DEADLINE."""
        stop_process(self.proc, signal.SIGTERM, STOP_DEADLINE, with_children=False)

    def kill_process(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(KILL_DEADLINE)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, size: int = LOG_TAIL) -> str:
        return tail(self.log_path, size)


class Node(_Process):
    """``firebox serve`` as one node of the cluster, in its own network namespace.

    Its home, image directory and cgroup parent are its own, as if it were on a host of its
    own: the image directory holds hard links of the host's built guest images only, so a
    template built on another node reaches it only through the OCI registry."""

    what = "node"

    def __init__(
        self,
        name: str,
        ns: Namespace,
        root: Path,
        *,
        cluster_db: str,
        domain: str,
        key_file: Path,
        template_registry: str = "",
        lease_seconds: float | None = None,
        on_stop: str = "end",
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.ns = ns
        self.address = ns.address
        self.port = NODE_PORT
        self.url = f"http://{self.address}:{self.port}"
        super().__init__(root, f"{self.url}/health")
        self.home = root / "home"
        self.image_dir = root / "images"
        # the test run's PID in it: a concurrent run's nodes of the same name are others
        self.cgroup_parent = f"firebox-cluster-{os.getpid()}-{name}"
        self.cluster_db = cluster_db
        self.domain = domain
        self.key_file = key_file
        self.template_registry = template_registry
        self.lease_seconds = lease_seconds
        self.on_stop = on_stop
        self.args = list(args)

    def __str__(self) -> str:
        return f"node {self.name} ({self.url})"

    def prepare(self) -> None:
        """Its home, and its image directory with the host's built guest images in it."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.image_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for entry in builtin_images():
            if not (self.image_dir / entry.name).exists():
                # hard links: instant, no space; sandboxes get the tree read-only
                run(["cp", "-a", "-l", str(entry), str(self.image_dir / entry.name)])

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "firebox.cli", "serve",
            "--host", self.address, "--port", str(self.port),
            "--isolation", "jail", "--on-stop", self.on_stop, "--pool-size", "0",
            "--cluster-db", self.cluster_db, "--node-name", self.name,
            "--advertise-url", self.url, "--domain", self.domain,
            "--admin-key-file", str(self.key_file),
        ]  # fmt: skip
        if self.template_registry:
            argv += ["--template-registry", self.template_registry]
            argv += ["--template-registry-insecure"]
        if self.lease_seconds is not None:
            argv += ["--lease-seconds", f"{self.lease_seconds:g}"]
        return self.ns.enter([*argv, *self.args])

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "FIREBOX_HOME": str(self.home),
            "FIREBOX_IMAGE_DIR": str(self.image_dir),
            PARENT_ENV: self.cgroup_parent,
        }

    def launch(self) -> None:
        self.prepare()
        super().launch()

    def sandbox_pids(self) -> set[int]:
        """Every process in this node's sandboxes' cgroups."""
        return cgroup_pids(self.cgroup_parent)

    def kill(self) -> None:
        """As if its host died: SIGKILL of the daemon, then of every process in its
        sandboxes' cgroups (their holders: bubblewrap and what runs under it)."""
        self.kill_process()
        kill_cgroups(self.cgroup_parent)

    def close(self) -> None:
        """Stop it and remove every trace but its files (the cluster's, removed with its
        directory after its logs were kept): what still runs in its cgroups or namespace
        (sandboxes a ``keep`` stop left, supervisors), its cgroups, its supervisors' run
        directory, its sandboxes' disks' mounts."""
        errors: list[BaseException] = []
        for step in (
            self.stop,
            lambda: kill_cgroups(self.cgroup_parent),
            self.ns.kill_all,
            lambda: remove_cgroups(self.cgroup_parent),
            self._remove_run_dir,
            lambda: unmount_under(self.root),
        ):
            try:
                step()
            except Exception as e:  # noqa: BLE001 (each step is tried; the first error raised)
                errors.append(e)
        if errors:
            raise errors[0]

    def _remove_run_dir(self) -> None:
        from firebox.backends.owner import Owner

        shutil.rmtree(Owner.of_home(self.home).run_dir, ignore_errors=True)


class Gateway(_Process):
    """``firebox gateway`` on loopback in the root namespace; a restart keeps its port."""

    what = "gateway"

    def __init__(
        self,
        name: str,
        root: Path,
        *,
        cluster_db: str,
        domain: str,
        key_file: Path,
        lease_seconds: float | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(root, f"{self.url}/health")
        self.cluster_db = cluster_db
        self.domain = domain
        self.key_file = key_file
        self.lease_seconds = lease_seconds
        self.args = list(args)

    def __str__(self) -> str:
        return f"gateway {self.name} ({self.url})"

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "firebox.cli", "gateway",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--cluster-db", self.cluster_db, "--domain", self.domain,
            "--admin-key-file", str(self.key_file),
        ]  # fmt: skip
        if self.lease_seconds is not None:
            argv += ["--lease-seconds", f"{self.lease_seconds:g}"]
        return [*argv, *self.args]

    def close(self) -> None:
        self.stop()


# -- the whole cluster ------------------------------------------------------------------------


class Cluster:
    """PostgreSQL, the schema, an OCI registry, ``nodes`` nodes each in a namespace of its
    own, ``gateways`` gateways; ``key`` is the admin key every process was given.

    ``node_args``: more ``firebox serve`` options per node index (0, 1, …), e.g.
    ``{2: ["--max-sandboxes", "3"]}``; ``node_common_args`` for every node.
    ``on_stop``: what a stopped node does with its sandboxes (``keep``: they run on for its
    restart to re-adopt); teardown removes them either way."""

    def __init__(
        self,
        nodes: int = 3,
        gateways: int = 2,
        *,
        lease_seconds: float = 3.0,
        domain: str = "cluster.firebox.test",
        on_stop: str = "end",
        node_args: Mapping[int, Sequence[str]] | None = None,
        node_common_args: Sequence[str] = (),
        gateway_args: Sequence[str] = (),
        template_registry: bool = True,
    ) -> None:
        self.n_nodes = nodes
        self.n_gateways = gateways
        self.lease_seconds = lease_seconds
        self.domain = domain
        self.on_stop = on_stop
        self.node_args = dict(node_args or {})
        self.node_common_args = list(node_common_args)
        self.gateway_args = list(gateway_args)
        self.use_template_registry = template_registry
        self.key = ""
        self.nodes: list[Node] = []
        self.gateways: list[Gateway] = []
        self.namespaces: list[Namespace] = []
        self.timings: dict[str, float] = {}
        self._stack = contextlib.ExitStack()
        self._last = 0.0

    # what the tests use

    @property
    def db_url(self) -> str:
        return self.postgres.url

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def sdk(self, gateway: int = 0, key: str | None = None) -> dict[str, str]:
        """Options for ``Sandbox.create``/``connect`` through one gateway."""
        return {"api_key": key or self.key, "api_url": self.gateways[gateway].url}

    def client(self, gateway: int = 0, key: str | None = None) -> httpx.Client:
        """The REST API through one gateway, with a key (the admin's unless given)."""
        return httpx.Client(
            base_url=self.gateways[gateway].url,
            headers={"X-API-Key": key or self.key},
            timeout=60,
            trust_env=False,
        )

    def db(self) -> Any:
        """A connection to the cluster's database (psycopg, autocommit)."""
        import psycopg

        return psycopg.connect(self.db_url, autocommit=True)

    def logs(self, size: int = LOG_TAIL) -> str:
        """The end of every node's and gateway's log: for a failing test's message."""
        parts = [f"--- {p} ---\n{p.log_tail(size)}" for p in [*self.nodes, *self.gateways]]
        return "\n".join(parts)

    # up and down

    def start(self) -> Cluster:
        began = self._last = time.monotonic()
        reason = unavailable()
        if reason:
            raise Unavailable(reason)
        stack = self._stack
        try:
            self.workdir = workdir_for_images()
            stack.callback(remove_tree, self.workdir)
            stack.callback(self._keep_logs)
            self.key = "fbx_" + secrets.token_hex(20)
            self.key_file = self.workdir / "admin.key"
            self.key_file.write_text(self.key + "\n")
            self.key_file.chmod(0o600)

            self.bridge = Bridge()
            stack.callback(self.bridge.remove)
            self.bridge.create()
            self._lap("bridge")

            self.postgres = Postgres(
                listen=("127.0.0.1", self.bridge.address),
                trust=(self.bridge.subnet,),
                parent=self.workdir,
            )
            stack.callback(self.postgres.close)
            self.postgres.start()
            migrate(self.postgres.url)
            self._lap("postgres")

            self.registry: Registry | None = None
            if self.use_template_registry:
                # deletes allowed: a template deleted is deleted there too
                self.registry = Registry(
                    self.workdir / "registry", host=self.bridge.address, deletes=True
                )
                stack.callback(self.registry.stop)
                self.registry.start()
                self._lap("registry")

            for i in range(1, self.n_nodes + 1):
                ns = Namespace(self.bridge, i)
                stack.callback(ns.remove)
                self.namespaces.append(ns.create())
            self._lap("network")

            for i, ns in enumerate(self.namespaces):
                node = Node(
                    f"node-{i + 1}",
                    ns,
                    self.workdir / f"node-{i + 1}",
                    cluster_db=self.postgres.url_from_bridge,
                    domain=self.domain,
                    key_file=self.key_file,
                    template_registry=(
                        f"{self.registry.addr}/firebox-templates" if self.registry else ""
                    ),
                    lease_seconds=self.lease_seconds,
                    on_stop=self.on_stop,
                    args=[*self.node_common_args, *self.node_args.get(i, ())],
                )
                stack.callback(node.close)
                self.nodes.append(node)
            # their image directories first, side by side (hard links: a second each)
            with ThreadPoolExecutor(len(self.nodes) or 1) as pool:
                list(pool.map(Node.prepare, self.nodes))
            self._lap("images")
            self._start_all(self.nodes)
            self._lap("nodes")

            for i in range(self.n_gateways):
                gw = Gateway(
                    f"gateway-{i + 1}",
                    self.workdir / f"gateway-{i + 1}",
                    cluster_db=self.postgres.url,
                    domain=self.domain,
                    key_file=self.key_file,
                    lease_seconds=self.lease_seconds,
                    args=self.gateway_args,
                )
                stack.callback(gw.close)
                self.gateways.append(gw)
            self._start_all(self.gateways)
            self._lap("gateways")
        except BaseException:
            self.close()
            raise
        self.timings["up"] = time.monotonic() - began
        return self

    def _lap(self, phase: str) -> None:
        """How long ``phase`` of the start took (``timings``: seconds per phase, and "up",
        "down" in all)."""
        now = time.monotonic()
        self.timings[phase] = now - self._last
        self._last = now

    @staticmethod
    def _start_all(processes: Sequence[_Process]) -> None:
        # launched together, waited for one by one: the slowest sets the time, not the sum
        for p in processes:
            p.launch()
        for p in processes:
            p.wait_ready()

    def _keep_logs(self) -> None:
        # after every process stopped, before the directory holding the logs goes
        where = os.environ.get(KEEP_LOGS_ENV)
        if not where:
            return
        dest = Path(where) / f"cluster-{os.getpid()}-{time.strftime('%H%M%S')}"
        dest.mkdir(parents=True, exist_ok=True)
        for p in [*self.nodes, *self.gateways]:
            with contextlib.suppress(OSError):
                shutil.copy(p.log_path, dest / f"{p.name}.log")
        for name, path in (("postgres", "postgres"), ("registry", "registry")):
            service = getattr(self, name, None)
            if service is not None:
                with contextlib.suppress(OSError):
                    shutil.copy(service.log_path, dest / f"{path}.log")

    def close(self) -> None:
        began = time.monotonic()
        try:
            self._stack.close()
        finally:
            self.timings["down"] = time.monotonic() - began

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def leftovers(cluster: Cluster) -> list[str]:
    """What of ``cluster`` is still on this host after its teardown: should be nothing (its
    namespaces, bridge and veths, processes, cgroups, mounts, directories, firewall rules)."""
    found = []
    netns = run(["ip", "netns", "list"], timeout=10)
    for ns in cluster.namespaces:
        if ns.name in netns:
            found.append(f"netns {ns.name} (processes {sorted(ns.pids())})")
        if Path("/sys/class/net", ns.veth).exists():
            found.append(f"veth {ns.veth}")
    bridge = getattr(cluster, "bridge", None)
    if bridge is not None:
        if bridge.exists():
            found.append(f"bridge {bridge.name}")
        found += [f"iptables rule {' '.join(rule)}" for rule in bridge._rules]
    services = [getattr(cluster, "postgres", None), getattr(cluster, "registry", None)]
    for p in [*cluster.nodes, *cluster.gateways, *services]:
        proc = getattr(p, "proc", None)
        if proc is not None and proc.poll() is None:
            found.append(f"process {proc.pid} ({p})")
    for node in cluster.nodes:
        found += [f"cgroup {d}" for d in cgroup_dirs(node.cgroup_parent)]
        from firebox.backends.owner import Owner

        if (run_dir := Owner.of_home(node.home).run_dir).exists():
            found.append(f"directory {run_dir}")
    workdir = getattr(cluster, "workdir", None)
    dirs = [workdir, *(getattr(s, "dir", None) for s in services)]
    for path in dirs:
        if path is not None and path.exists():
            found.append(f"directory {path}")
    if workdir is not None:
        found += [f"mount {m}" for m, _ in _mounts() if m.startswith(f"{workdir}/")]
    return found
