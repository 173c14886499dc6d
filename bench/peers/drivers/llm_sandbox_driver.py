"""llm-sandbox, driven through its own API (``SandboxSession``), in the peers' venv.

    bench/.venv-peers/bin/python llm_sandbox_driver.py docker|bubblewrap [IMAGE]

Each operation is timed here, around llm-sandbox's calls only; see peers_venv.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# appended, not prepended: bench/peers/ must not shadow a package of the venv
sys.path.append(str(Path(__file__).resolve().parent.parent))

from llm_sandbox import SandboxSession  # noqa: E402
from peers_venv import serve  # noqa: E402

PY_CODE = "print(1+1)"

backend = sys.argv[1]
image = sys.argv[2] if len(sys.argv) > 2 else None
if backend == "docker":
    import docker

    # llm-sandbox pulls an image it does not find locally and has no switch against it: make
    # sure it finds ours (no registry is reachable or named here anyway)
    docker.from_env().images.get(image)
    OPTIONS: dict[str, Any] = {
        "image": image,
        "keep_template": True,
        "runtime_configs": {"network_mode": "none"},
    }
else:
    OPTIONS = {}  # bubblewrap: no network unless asked, its default seccomp policy

pending: list[Any] = []  # sessions whose close() is due, off the clock
live: Any = None
idle: list[Any] = []


def session() -> Any:
    # skip_environment_setup: the image already has everything; llm-sandbox's default set-up
    # makes a venv in the sandbox and runs `pip install --upgrade pip` (network) at open()
    return SandboxSession(backend=backend, lang="python", skip_environment_setup=True, **OPTIONS)


def check(output: Any, expect: str | None = None) -> None:
    if output.exit_code != 0 or (expect is not None and output.stdout.strip() != expect):
        raise RuntimeError(f"exit {output.exit_code}: {output.stdout!r} {output.stderr!r}")


def create_first(what: str) -> float:
    """open() a new session and run its first command (`true`) or python; close() later."""
    start = time.perf_counter()
    sbx = session()
    sbx.open()
    out = sbx.execute_command("true") if what == "command" else sbx.run(PY_CODE)
    elapsed = (time.perf_counter() - start) * 1000
    pending.append(sbx)
    check(out, None if what == "command" else "2")
    return elapsed


def close_all(sessions: list[Any]) -> int:
    # A Docker session's close() is container.stop(), which waits out Docker's 10 s grace for
    # the image's /bin/sh (pid 1 ignores SIGTERM) before it kills it: kill the container
    # first (always off the clock), so close() finds it stopped and only removes it.
    def close(s: Any) -> None:
        container = getattr(s, "container", None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.kill()
        s.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(close, sessions))
    count = len(sessions)
    sessions.clear()
    return count


def close_pending() -> int:
    return close_all(pending)


def open_live() -> None:
    global live
    if live is None:
        live = session()
        live.open()


def close_live() -> None:
    global live
    if live is not None:
        close_all([live])
        live = None


def round_trip(what: str) -> float:
    start = time.perf_counter()
    out = live.execute_command("true") if what == "command" else live.run(PY_CODE)
    elapsed = (time.perf_counter() - start) * 1000
    check(out, None if what == "command" else "2")
    return elapsed


def file_throughput(size_mb: int) -> dict[str, Any]:
    """copy_to_runtime then copy_from_runtime of a file of ``size_mb`` MB (random bytes)."""
    open_live()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fbp-lsb-") as tmp:
        src, back = Path(tmp) / "blob", Path(tmp) / "back"
        src.write_bytes(os.urandom(size_mb * 2**20))
        start = time.perf_counter()
        live.copy_to_runtime(str(src), "/sandbox/blob")
        result["write_mb_s"] = size_mb / (time.perf_counter() - start)
        try:
            start = time.perf_counter()
            live.copy_from_runtime("/sandbox/blob", str(back))
            result["read_mb_s"] = size_mb / (time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001  (the peer's own refusal is the figure's reason)
            why = f"copy_from_runtime raised {type(exc).__name__}: {exc}"
            result["read_mb_s"] = {"unsupported": why}
            return result
        if back.stat().st_size != src.stat().st_size:
            raise RuntimeError(f"read back {back.stat().st_size} bytes")
    return result


def idle_open(n: int) -> list[str]:
    """n sessions, each having run python once; their container ids (docker)."""
    for _ in range(n):
        sbx = session()
        sbx.open()
        idle.append(sbx)
        check(sbx.run("print(1)"), "1")
    return [getattr(s.container, "id", "") for s in idle]


def idle_close() -> int:
    return close_all(idle)


def version() -> str:
    from importlib.metadata import version

    return version("llm-sandbox")


def close() -> None:
    close_all(pending + idle + ([live] if live is not None else []))


serve(
    {
        "create_first": create_first,
        "close_pending": close_pending,
        "open_live": open_live,
        "close_live": close_live,
        "round_trip": round_trip,
        "file_throughput": file_throughput,
        "idle_open": idle_open,
        "idle_close": idle_close,
        "version": version,
    },
    close,
)
