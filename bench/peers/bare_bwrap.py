"""Floor: bubblewrap alone over firebox's python image, as an unprivileged uid.

The same sandbox bench_core.py measures as its second floor: every namespace, the image
read-only as /, fresh /proc, /dev and /tmp, the uid firebox's first sandbox runs as.
"""

from __future__ import annotations

import subprocess

from .base import (
    PY_CODE,
    PY_COMMAND,
    Peer,
    Samples,
    Unsupported,
    need_binaries,
    need_root,
    no_rootfs_reason,
    rootfs,
    timed,
    unprivileged_uid,
)
from .idle import idle_pss

BWRAP = "/usr/bin/bwrap"


class BareBwrap(Peer):
    name = "bare_bwrap"
    kind = "floor"
    notes = {
        "create_to_first_command": f"`bwrap --unshare-all --unshare-user --die-with-parent "
        f"--ro-bind <firebox python rootfs> / --proc /proc --dev /dev --tmpfs /tmp -- "
        f"/usr/bin/python3 -c '{PY_COMMAND}'` as uid {unprivileged_uid()}, spawned and "
        "waited for: namespaces, mounts and the interpreter's start-up",
        "create_to_first_python": f"the same bwrap running python3 -c '{PY_CODE}'",
        "command_round_trip": "none: no live sandbox, every command is a new bwrap",
        "python_round_trip": "none: no live sandbox, every command is a new bwrap",
        "file_throughput": "none: no files API",
        "idle_memory_mb": "PSS of the whole tree (outer bwrap, bwrap as pid 1 of the sandbox, "
        "python3 waiting on stdin), from /proc/<pid>/smaps_rollup; n of them up at once",
    }

    def available(self) -> str | None:
        return need_root() or need_binaries(BWRAP) or no_rootfs_reason()

    def argv(self, *command: str) -> list[str]:
        return [
            BWRAP,
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--ro-bind",
            str(rootfs()),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--",
            *command,
        ]

    def _ids(self) -> dict[str, object]:
        uid = unprivileged_uid()
        return {"user": uid, "group": uid, "extra_groups": []}

    def _run(self, code: str) -> None:
        argv = self.argv("/usr/bin/python3", "-c", code)
        out = subprocess.run(argv, check=True, capture_output=True, **self._ids())  # type: ignore[call-overload]
        assert out.stdout.strip(), "no output"

    def create_to_first_command(self, runs: int) -> Samples:
        return timed(lambda: self._run(PY_COMMAND), runs)

    def create_to_first_python(self, runs: int) -> Samples:
        return timed(lambda: self._run(PY_CODE), runs)

    def command_round_trip(self, runs: int) -> Samples:
        return Unsupported("no live sandbox: every command is a new bwrap")

    def python_round_trip(self, runs: int) -> Samples:
        return Unsupported("no live sandbox: every command is a new bwrap")

    def idle_memory_mb(self, n: int) -> Samples:
        code = "import sys; print(1, flush=True); sys.stdin.read()"
        return idle_pss([self.argv("/usr/bin/python3", "-c", code)] * n, **self._ids())
