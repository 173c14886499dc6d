"""The one way peers run code that needs a third-party package: a driver in the peers' venv.

The peers' packages (llm-sandbox, epicbox and what they pull in) live in ``bench/.venv-peers``
(made by ``bench/peers/install.sh``), never in the project's ``.venv``. A peer that needs them
starts one driver script from ``bench/peers/drivers/`` with that venv's interpreter, for the
time between its ``setup()`` and ``teardown()``, and sends it one JSON request per line:

    {"op": "create_first_command"}  →  {"ok": true, "result": 231.4}

Each operation is timed inside the driver, around the peer's own API calls only, so neither
this pipe nor the driver's imports are on the clock. The driver's stdout is the protocol's;
anything the peer's library prints goes to stderr.

Standard library only: the parent side runs in the project's venv, the child side
(``serve``) in the peers' venv.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent
VENV = PEERS.parent / ".venv-peers"
VENV_PYTHON = VENV / "bin" / "python"
DRIVERS = PEERS / "drivers"


def venv_missing(*modules: str) -> str | None:
    """None if the peers' venv has ``modules``, else why not."""
    if not VENV_PYTHON.exists():
        return f"no peers venv at {VENV} (run bench/peers/install.sh)"
    probe = (
        "import importlib.util as u, sys; sys.exit(any(not u.find_spec(m) for m in sys.argv[1:]))"
    )
    proc = subprocess.run([str(VENV_PYTHON), "-c", probe, *modules], capture_output=True)
    if proc.returncode != 0:
        return f"the peers venv lacks {', '.join(modules)} (run bench/peers/install.sh)"
    return None


class DriverError(RuntimeError):
    pass


class VenvDriver:
    """A driver script running in the peers' venv, stopped by its PID."""

    def __init__(
        self,
        script: str,
        *args: str,
        env: dict[str, str] | None = None,
        user: int | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = [str(VENV_PYTHON), str(DRIVERS / script), *args]
        self.env = {**os.environ, **(env or {})}
        self.user = user
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> VenvDriver:
        ids: dict[str, Any] = {}
        if self.user is not None:
            ids = {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            **ids,
        )
        try:
            self.call("ping")
        except BaseException:
            self.stop(grace=10)
            raise
        return self

    def call(self, op: str, **kwargs: Any) -> Any:
        if self.proc is None or self.proc.stdin is None or self.proc.stdout is None:
            raise DriverError("driver not started")
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise DriverError(f"{self.argv[1]} exited ({self.proc.poll()}) during {op}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise DriverError(f"{Path(self.argv[1]).name} {op}: {answer.get('error')}")
        return answer.get("result")

    def stop(self, grace: float = 120) -> None:
        """Ask the driver to close what it opened and exit; SIGKILL its PID past ``grace`` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                proc.stdin.close()
            proc.wait(grace)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --- the driver's side ----------------------------------------------------------------------


def serve(handlers: dict[str, Callable[..., Any]], close: Callable[[], None]) -> None:
    """Answer requests on stdin until "quit" or EOF, then ``close()`` (what the driver opened)."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the peer library's prints go to stderr, not into the protocol
    sys.stdout = sys.stderr
    handlers = {"ping": lambda: None, **handlers}
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            if op == "quit":
                break
            try:
                answer = {"ok": True, "result": handlers[op](**request)}
            except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises)
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            protocol.write(json.dumps(answer) + "\n")
    finally:
        close()
