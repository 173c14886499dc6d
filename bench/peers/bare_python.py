"""Floor: the host's python3 by its real path (/usr/bin/python3.11), no sandbox at all."""

from __future__ import annotations

import subprocess

from .base import PY_CODE, PY_COMMAND, PYTHON, Peer, Samples, Unsupported, timed
from .idle import idle_pss


class BarePython(Peer):
    name = "bare_python"
    kind = "floor"
    notes = {
        "create_to_first_command": f"{PYTHON} -c '{PY_COMMAND}' spawned and waited for "
        "(subprocess.run): the start-up of the interpreter every python sandbox runs",
        "create_to_first_python": f"{PYTHON} -c '{PY_CODE}', the same way",
        "command_round_trip": "none: no live sandbox, every command is a new process",
        "python_round_trip": "none: no live sandbox, every command is a new process",
        "file_throughput": "none: no sandbox, no files API",
        "idle_memory_mb": f"PSS of one idle `{PYTHON} -c 'import sys; sys.stdin.read()'` "
        "(after it has started), from /proc/<pid>/smaps_rollup; n of them up at once",
    }

    # What a floor runs, and as whom: bare_bwrap wraps the same command in bubblewrap.
    def argv(self, *command: str) -> list[str]:
        return list(command)

    def _ids(self) -> dict[str, object]:
        return {}

    def _run(self, code: str) -> None:
        argv = self.argv(PYTHON, "-c", code)
        out = subprocess.run(argv, check=True, capture_output=True, **self._ids())  # type: ignore[call-overload]
        assert out.stdout.strip(), "no output"

    def create_to_first_command(self, runs: int) -> Samples:
        return timed(lambda: self._run(PY_COMMAND), runs)

    def create_to_first_python(self, runs: int) -> Samples:
        return timed(lambda: self._run(PY_CODE), runs)

    def command_round_trip(self, runs: int) -> Samples:
        return Unsupported("no live sandbox: every command is a new process")

    def python_round_trip(self, runs: int) -> Samples:
        return Unsupported("no live sandbox: every command is a new process")

    def idle_memory_mb(self, n: int) -> Samples:
        code = "import sys; print(1, flush=True); sys.stdin.read()"
        return idle_pss([self.argv(PYTHON, "-c", code)] * n, **self._ids())


__all__ = ["BarePython"]
