"""epicbox, driven through its own API (create/start/destroy, run, working_directory), in the
peers' venv.

    bench/.venv-peers/bin/python epicbox_driver.py IMAGE

epicbox runs every command in a new container (``/bin/sh -c COMMAND``) and removes it after;
a ``working_directory()`` (a Docker volume mounted at /sandbox) is what carries files from one
run to the next. Each operation is timed here, around epicbox's calls only; see peers_venv.py.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# appended, not prepended: bench/peers/ must not shadow a package of the venv
sys.path.append(str(Path(__file__).resolve().parent.parent))

import epicbox  # noqa: E402
from peers_venv import serve  # noqa: E402

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # epicbox logs every step at INFO

PY = "python3 -c 'print(1+1)'"
# epicbox's defaults are 1 s of CPU, 5 s real time and 64 MB; a 100 MB file needs more room
ROOMY = {"cputime": 60, "realtime": 120, "memory": 512}

image = sys.argv[1]
epicbox.configure(
    profiles=[epicbox.Profile("python", image, network_disabled=True)],
    docker_url=os.environ["DOCKER_HOST"],
)
stack = ExitStack()
workdir: Any = None


def command(what: str) -> str:
    return "true" if what == "command" else PY


def check(result: dict[str, Any], what: str) -> None:
    if result["exit_code"] != 0 or (what == "python" and result["stdout"].strip() != b"2"):
        raise RuntimeError(f"epicbox: {result}")


def create_first(what: str) -> float:
    """create() a sandbox for the command and start() it to its result; destroy() after."""
    start = time.perf_counter()
    sandbox = epicbox.create("python", command(what))
    result = epicbox.start(sandbox)
    elapsed = (time.perf_counter() - start) * 1000
    epicbox.destroy(sandbox)
    check(result, what)
    return elapsed


def close_pending() -> int:
    return 0  # create_first destroys its sandbox itself, after the clock


def open_live() -> None:
    global workdir
    if workdir is None:
        workdir = stack.enter_context(epicbox.working_directory())


def round_trip(what: str) -> float:
    """run() in the working directory: create, start, wait and destroy a container."""
    start = time.perf_counter()
    result = epicbox.run("python", command(what), workdir=workdir)
    elapsed = (time.perf_counter() - start) * 1000
    check(result, what)
    return elapsed


def file_throughput(size_mb: int) -> dict[str, Any]:
    """Write: create(files=[one file of size_mb MB]) returned: the container's creation, then
    the file put into the working directory, the one way epicbox writes files. Read: none."""
    open_live()
    data = os.urandom(size_mb * 2**20)
    start = time.perf_counter()
    sandbox = epicbox.create(
        "python", "true", files=[{"name": "blob", "content": data}], limits=ROOMY, workdir=workdir
    )
    elapsed = time.perf_counter() - start
    check(epicbox.start(sandbox), "command")
    epicbox.destroy(sandbox)
    size = epicbox.run("python", "stat -c %s blob", workdir=workdir)["stdout"].strip()
    if int(size) != len(data):
        raise RuntimeError(f"wrote {size!r} bytes")
    why = "epicbox has no call that reads a file back (a run returns stdout and stderr only)"
    return {"write_mb_s": size_mb / elapsed, "read_mb_s": {"unsupported": why}}


def version() -> str:
    from importlib.metadata import version

    return version("epicbox")


serve(
    {
        "create_first": create_first,
        "close_pending": close_pending,
        "open_live": open_live,
        "round_trip": round_trip,
        "file_throughput": file_throughput,
        "version": version,
    },
    stack.close,
)
