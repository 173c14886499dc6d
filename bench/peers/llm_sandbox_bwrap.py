"""Peer: llm-sandbox (PyPI) on its bubblewrap backend, as an unprivileged uid."""

from __future__ import annotations

from .base import PY_CODE, Samples, Unsupported, need_binaries, unprivileged_uid
from .driven import DriverPeer
from .peers_venv import venv_missing


class LlmSandboxBwrap(DriverPeer):
    name = "llm_sandbox_bwrap"
    script = "llm_sandbox_driver.py"
    modules = ("llm_sandbox",)
    notes = {
        "create_to_first_command": "SandboxSession(backend='bubblewrap', lang='python', "
        "skip_environment_setup=True).open() then execute_command('true') returned, as uid "
        f"{unprivileged_uid()}; close() after the clock. open() makes a private host temp "
        "dir and runs /bin/true once in a bwrap to prove it can; every command is a new "
        "`bwrap --unshare-all … --seccomp FD -- /bin/sh -c CMD` whose seccomp filter is "
        "compiled for that command. Its root is the HOST's /usr, /bin, /lib… read-only "
        "(llm-sandbox can only bind host paths at the same place), not firebox's image",
        "create_to_first_python": f"the same, then run('{PY_CODE}') returned: the code "
        "copied into the session's host dir, then a bwrap running /usr/bin/python3 on it",
        "command_round_trip": "execute_command('true') in an open session: a new bwrap",
        "python_round_trip": f"run('{PY_CODE}') in an open session: a new bwrap and "
        "interpreter each time; nothing lives between commands",
        "file_throughput": "copy_to_runtime(100 MB file → /sandbox/blob) then "
        "copy_from_runtime back: host file copies into/out of the session's host dir",
        "idle_memory_mb": "none: an idle session holds no process (a host directory only)",
    }

    def available(self) -> str | None:
        if reason := need_binaries("/usr/bin/bwrap") or super().available():
            return reason
        if venv_missing("llm_sandbox.bubblewrap"):
            return "the llm-sandbox in the peers venv has no bubblewrap backend"
        return None

    def driver_args(self) -> list[str]:
        return ["bubblewrap"]

    def driver_user(self) -> int | None:
        return unprivileged_uid()

    def driver_env(self) -> dict[str, str]:
        return {"HOME": "/tmp", "TMPDIR": "/tmp"}

    def idle_memory_mb(self, n: int) -> Samples:
        return Unsupported(
            "an idle llm-sandbox bubblewrap session holds no process: each command is a new "
            "bwrap, the session between them a host directory"
        )
