"""Peer: gVisor (Debian's runsc, a 2022 build) on its ptrace platform, no network.

Each sandbox is an OCI bundle generated here over firebox's python image (read-only root,
a tmpfs /tmp), made with ``runsc create`` + ``runsc start`` (its init: ``sleep infinity``);
commands are ``runsc exec``. State lives under a temp dir of our own (``--root``), the
sandboxes' cgroups under a parent of our own, removed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .base import (
    PY_CODE,
    Peer,
    Samples,
    Throughput,
    Unsupported,
    cgroup_procs,
    clock_ms,
    collect,
    need_binaries,
    need_root,
    no_rootfs_reason,
    pss_mb,
    remove_cgroup,
    rootfs,
    run_checked,
    timed,
)
from .idle import IDLE_SECONDS

RUNSC = "/usr/bin/runsc"
PLATFORM = "ptrace"
TIMEOUT = 120  # s, for any one runsc command
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]  # `runsc spec`'s defaults


class Gvisor(Peer):
    name = "gvisor"
    notes = {
        "create_to_first_command": f"`runsc --platform={PLATFORM} --network=none create` of a "
        "generated bundle (firebox's python rootfs read-only, tmpfs /tmp, init `sleep "
        "infinity`), `runsc start`, then `runsc exec <id> /usr/bin/true` returned; "
        "`runsc kill` + `runsc delete` after the clock (the figure's sandboxes together, at "
        "its end: a delete takes 1-2 s)",
        "create_to_first_python": f"the same, with `runsc exec <id> python3 -c '{PY_CODE}'`",
        "command_round_trip": "`runsc exec <id> /usr/bin/true` in a live sandbox (each exec "
        "is a runsc process that talks to the sandbox over its control socket)",
        "python_round_trip": f"`runsc exec <id> python3 -c '{PY_CODE}'` in a live sandbox: "
        "a new interpreter each time (runsc has no stateful python)",
        "file_throughput": "none: runsc has no files API",
        "idle_memory_mb": "PSS summed over the processes of the sandbox's cgroup (the gofer, "
        "the sentry and its ptrace stub processes), each sandbox having run python once, "
        "after a few idle seconds; n sandboxes up at once",
    }

    def __init__(self) -> None:
        self.tmp: Path | None = None
        self.cgroup_parent = f"fbpeers-runsc-{os.getpid()}-{id(self):x}"
        self.live: list[str] = []

    def available(self) -> str | None:
        if reason := need_root() or need_binaries(RUNSC) or no_rootfs_reason():
            return reason
        if self.tmp is not None:
            return None  # set up already: it ran
        try:
            self.setup()
            cid = self._create()
            self._exec(cid, "/usr/bin/true")
        except Exception as exc:  # noqa: BLE001  (a skip, with its reason)
            return f"runsc cannot run a sandbox here: {exc}"
        finally:
            self.teardown()
        return None

    def setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="fbp-runsc-"))
        (self.tmp / "state").mkdir()

    def _runsc(self, *args: str) -> list[str]:
        assert self.tmp is not None, "setup() first"
        root = f"--root={self.tmp / 'state'}"
        return [RUNSC, root, f"--platform={PLATFORM}", "--network=none", *args]

    def _bundle(self, cid: str) -> Path:
        assert self.tmp is not None
        bundle = self.tmp / "bundles" / cid
        bundle.mkdir(parents=True)
        caps = {k: CAPS for k in ("bounding", "effective", "inheritable", "permitted")}
        spec = {
            "ociVersion": "1.0.0",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": ["/usr/bin/sleep", "infinity"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": caps,
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": True,
            },
            "root": {"path": str(rootfs()), "readonly": True},
            "hostname": "peer",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {
                    "destination": "/sys",
                    "type": "sysfs",
                    "source": "sysfs",
                    "options": ["nosuid", "noexec", "nodev", "ro"],
                },
            ],
            "linux": {
                "cgroupsPath": f"/{self.cgroup_parent}/{cid}",
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            },
        }
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))
        return bundle

    def _create(self) -> str:
        """A started sandbox; its id. Its init holds no pipe of ours: stdin and stdout are
        /dev/null and stderr a file (the init inherits the stdio of `runsc create`)."""
        cid = f"fbp-{uuid.uuid4().hex[:12]}"
        bundle = self._bundle(cid)
        self.live.append(cid)
        log = bundle / "stderr"
        for args in (("create", "--bundle", str(bundle), cid), ("start", cid)):
            with open(log, "wb") as err:
                proc = subprocess.run(
                    self._runsc(*args),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=TIMEOUT,
                )
            if proc.returncode != 0:
                raise RuntimeError(f"runsc {args[0]}: {log.read_text(errors='replace')[-800:]}")
        return cid

    def _exec(self, cid: str, *command: str) -> bytes:
        return run_checked(self._runsc("exec", cid, *command), timeout=TIMEOUT).stdout

    def _destroy(self, cid: str) -> None:
        subprocess.run(self._runsc("kill", cid, "KILL"), capture_output=True, timeout=TIMEOUT)
        subprocess.run(self._runsc("delete", "--force", cid), capture_output=True, timeout=TIMEOUT)
        self.live.remove(cid)

    def _destroy_all(self, cids: list[str]) -> None:
        """Several at once: `runsc delete` takes a second or two apiece, all of it waiting."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._destroy, cids))

    def _first(self, *command: str) -> float:
        start = time.perf_counter()
        cid = self._create()
        out = self._exec(cid, *command)
        elapsed = clock_ms(start)
        if command[0] != "/usr/bin/true":
            assert out.strip() == b"2", out
        return elapsed

    def _firsts(self, runs: int, *command: str) -> Samples:
        """Sandboxes are destroyed together after the figure (idle until then), not one by one
        between creates: off the clock either way, and `runsc delete` is slow."""
        try:
            return collect(lambda: self._first(*command), runs)
        finally:
            self._destroy_all(list(self.live))

    def create_to_first_command(self, runs: int) -> Samples:
        return self._firsts(runs, "/usr/bin/true")

    def create_to_first_python(self, runs: int) -> Samples:
        return self._firsts(runs, "python3", "-c", PY_CODE)

    def command_round_trip(self, runs: int) -> Samples:
        cid = self._create()
        try:
            return timed(lambda: self._exec(cid, "/usr/bin/true"), runs)
        finally:
            self._destroy(cid)

    def python_round_trip(self, runs: int) -> Samples:
        cid = self._create()
        try:
            return timed(lambda: self._exec(cid, "python3", "-c", PY_CODE), runs)
        finally:
            self._destroy(cid)

    def file_throughput(self, size_mb: int = 100) -> Throughput:
        return Unsupported("runsc has no files API")

    def idle_memory_mb(self, n: int) -> Samples:
        cids = []
        try:
            for _ in range(n):
                cids.append(self._create())
                self._exec(cids[-1], "python3", "-c", "print(1)")
            time.sleep(IDLE_SECONDS)
            return [pss_mb(cgroup_procs(f"{self.cgroup_parent}/{cid}")) for cid in cids]
        finally:
            self._destroy_all(cids)

    def _ours(self, pid: int) -> bool:
        """``pid`` is still a runsc process of this state root (not a recycled PID)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--root={self.tmp and self.tmp / 'state'}".encode() in argv

    def teardown(self) -> None:
        if self.tmp is None:
            return
        for cid in list(self.live):
            self._destroy(cid)
        # what `runsc delete` left running (it should leave nothing): by the PIDs runsc recorded
        for state in (self.tmp / "state").glob("*.state"):
            try:
                recorded = json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            pids = [recorded.get("goferPid"), (recorded.get("sandbox") or {}).get("pid")]
            for pid in pids:
                if isinstance(pid, int) and pid > 0 and self._ours(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        left = remove_cgroup(self.cgroup_parent)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = None
        if left:
            raise RuntimeError(f"gvisor: cgroups still in use: {left}")
