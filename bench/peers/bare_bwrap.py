"""Floor: bubblewrap alone over firebox's python image, as an unprivileged uid.

The second floor: every namespace, the image
read-only as /, fresh /proc, /dev and /tmp, the uid firebox's first sandbox runs as.
"""

from __future__ import annotations

from .bare_python import BarePython
from .base import (
    PY_CODE,
    PY_COMMAND,
    need_binaries,
    need_root,
    no_rootfs_reason,
    rootfs,
    unprivileged_uid,
)

BWRAP = "/usr/bin/bwrap"


class BareBwrap(BarePython):
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
