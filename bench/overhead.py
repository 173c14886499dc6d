"""The daemon's own overhead per API call, measured from outside the daemon.

The daemon's ``Server-Timing`` header covers a call only up to its answer's first byte, and not
uvicorn's own work, so a call's whole time is split from outside, by measuring its layers apart in
rounds: each round makes every call below once, in an order shuffled anew, from one event loop
(uvloop, as the daemon's) of the benchmark's process, so that whatever else the host does falls
on all of them alike. The layers:

  * the HTTP floor: a bare ASGI app (no FastAPI, no auth, no agent) served by the same server
    stack as ``firebox serve`` (``uvicorn.run`` with its defaults: uvloop, httptools) in a
    process of its own, called with the SDK's own async HTTP client (``AsyncApiClient``,
    keep-alive): a small JSON answer to a GET, and a two-line NDJSON answer, streamed, to a
    POST of the body ``commands.run("true")`` sends (the shape of a command's answer);
  * the daemon's fixed cost: ``GET /health`` (FastAPI, no auth) and ``GET /sandboxes/{id}``
    (auth, lookup, JSON; never reaches the agent), same client;
  * the call through the daemon: ``POST /sandboxes/{id}/commands`` of ``true`` (and ``/code``
    of ``x += 1``) read whole by the same client, and the async SDK's ``commands.run("true")``
    and ``run_code("x += 1")`` (the totals);
  * the agent alone: a sandbox of the same backend started in this process with the same code
    the daemon uses (``firebox.server.pool.boot``: backend start, then ``AgentClient`` and the
    agent's hello), no daemon and no HTTP: a ``ProcessStart`` of ``true`` as the daemon builds
    it, until its exit; a ``CodeRun`` of ``x += 1`` until it is done.

Beside them, the daemon's own ``Server-Timing`` header on the plain calls (``app``: arrival to
the answer's first byte; ``agent``: the part spent waiting for the agent's first reply), kept
per call as ``<call>.app`` and ``<call>.agent``.

Derived, as the median over rounds of each round's difference: the daemon's own share of a
command = POST − agent alone − HTTP floor (streamed); the SDK's own = SDK − POST; the fixed
cost of an authenticated call = ``GET /sandboxes/{id}`` − HTTP floor (GET); and by the header,
the daemon's own work to a command's first byte = app − agent.

    python bench/overhead.py --floor-server PORT      (the floor, as overhead.py starts it)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the repository on sys.path, for the floor server's run)
import uvloop

from firebox import AsyncSandbox
from firebox._async._http import AsyncApiClient
from firebox._core.config import ConnectionConfig
from firebox._core.requests import run_body, sandbox_path
from firebox.testing import LocalDaemon, free_port

OUTPUT_LIMIT = 64 << 20  # the daemon's --max-output-mb default, as it passes it to the agent
COMMAND_BODY = run_body("true", None, "user", None, 60, None, None)  # commands.run("true")
CODE_BODY = {"code": "x += 1", "language": None, "context_id": None, "envs": {}, "timeout": None}
# the in-process sandbox's host ids: far from the daemons' (which start at uid_base, slot 0)
UID_OFFSET = 2048 * 65536


# --- the HTTP floor ---------------------------------------------------------------------------


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """GET: a small JSON body; POST: the body read, then two NDJSON lines streamed (chunked), as
    a command's start and end."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for line in (b'{"type":"start","pid":7}\n', b'{"type":"end","exit_code":0}\n'):
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b'{"status":"ok","version":"floor","backend":"none"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def floor_server() -> Iterator[str]:
    """The floor in a process of its own on a free loopback port; stopped by its PID."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--floor-server", str(port)],
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTP floor server did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the daemon's own word: Server-Timing ------------------------------------------------------

# calls whose answer's Server-Timing is kept: ``app`` (arrival to the answer's first byte) and
# ``agent`` (the part of it spent waiting for the agent's first reply to a request)
SERVER_TIMED = ("health", "get_sandbox", "raw_command", "raw_code")


def server_timing(answer: object) -> dict[str, float]:
    """{"app": ms, "agent": ms} from an answer's ``Server-Timing`` header, if it has one."""
    value = getattr(answer, "headers", {}).get("server-timing", "")
    out = {}
    for part in value.split(","):
        name, _, dur = part.strip().partition(";dur=")
        with contextlib.suppress(ValueError):
            out[name] = float(dur)
    return out


# --- the rounds -------------------------------------------------------------------------------


async def _rounds(
    backend_name: str, daemon: LocalDaemon, sandbox_id: str, floor: str, runs: int, home: Path
) -> dict[str, list[float]]:
    from firebox import protocol
    from firebox.backends.owner import Owner
    from firebox.backends.select import select
    from firebox.server.boot import boot, spec_for
    from firebox.server.config import ServerConfig

    config = ServerConfig(home=home, isolation=backend_name)
    config.uid_base += UID_OFFSET
    backend = select(backend_name, Owner.of_process("bench-overhead"), config.uid_base)
    try:
        spec = spec_for("python", config.limits)
        await backend.prepare(spec)
        booted = await boot(backend, spec)
        agent = booted.agent
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(booted.discard)
            api = AsyncApiClient(ConnectionConfig(daemon.url, daemon.key))
            stack.push_async_callback(api.aclose)
            bare = AsyncApiClient(ConnectionConfig(floor, "none"))
            stack.push_async_callback(bare.aclose)
            sbx = await AsyncSandbox.connect(sandbox_id, api_key=daemon.key, api_url=daemon.url)
            stack.push_async_callback(sbx.aclose)

            async def agent_command() -> None:
                req = protocol.ProcessStart(cmd="true", timeout=60, output_limit=OUTPUT_LIMIT)
                proc = await agent.start_process(req)
                async for _ in proc:
                    pass
                assert proc.exit is not None and proc.exit.exit_code == 0, proc.exit

            async def agent_code(src: str = "x += 1") -> None:
                cell = await agent.run_code(protocol.CodeRun(code=src, output_limit=OUTPUT_LIMIT))
                async for kind, value in cell:
                    assert kind != "error", value

            commands, code = sandbox_path(sandbox_id, "commands"), sandbox_path(sandbox_id, "code")
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "http_floor_get": lambda: bare.request("GET", "/health"),
                "http_floor_stream": lambda: bare.request("POST", "/cmd", json=COMMAND_BODY),
                "health": lambda: api.request("GET", "/health"),
                "get_sandbox": lambda: api.request("GET", sandbox_path(sandbox_id)),
                "agent_command": agent_command,
                "raw_command": lambda: api.request("POST", commands, json=COMMAND_BODY),
                "sdk_command": lambda: sbx.commands.run("true"),
                "agent_code": agent_code,
                "raw_code": lambda: api.request("POST", code, json=CODE_BODY),
                "sdk_code": lambda: sbx.run_code("x += 1"),
            }
            await agent_code("x = 0")
            await sbx.run_code("x = 0")
            # as warm as the daemon's live sandbox, which has run the round-trip figures (under
            # TCG a path's first runs are translated anew, and slower)
            for _ in range(runs):
                await agent_command()
                await agent_code()
            out: dict[str, list[float]] = {k: [] for k in calls}
            warmup = 3
            order = list(calls)
            shuffle = random.Random(6).shuffle
            for i in range(warmup + runs):
                shuffle(order)  # no call always follows the same one
                for name in order:
                    start = time.perf_counter()
                    answer = await calls[name]()
                    elapsed = (time.perf_counter() - start) * 1000
                    if i < warmup:
                        continue
                    out[name].append(elapsed)
                    if name in SERVER_TIMED:
                        for part, ms in server_timing(answer).items():
                            out.setdefault(f"{name}.{part}", []).append(ms)
            return out
    finally:
        await backend.close()


def measure(backend_name: str, daemon: LocalDaemon, sandbox_id: str, runs: int) -> dict[str, Any]:
    """``runs`` rounds of every layer, against ``daemon`` and its live sandbox ``sandbox_id``
    and a sandbox of the same backend started here; the samples (ms) of each layer. The
    sandbox started here has its cgroup under a parent of its own, removed after, and host ids
    far from the daemons'."""
    from firebox.confine import cgroups

    home = Path(tempfile.mkdtemp(prefix="firebox-bench-agent-"))
    before = os.environ.get(cgroups.PARENT_ENV)
    os.environ[cgroups.PARENT_ENV] = f"firebox-bench-agent-{os.getpid()}"
    try:
        with floor_server() as floor:
            return uvloop.run(_rounds(backend_name, daemon, sandbox_id, floor, runs, home))
    finally:
        if before is None:
            os.environ.pop(cgroups.PARENT_ENV, None)
        else:
            os.environ[cgroups.PARENT_ENV] = before
        forget_home(home)
        shutil.rmtree(home, ignore_errors=True)


def forget_home(home: Path) -> None:
    """Remove the (empty) per-daemon directories firebox keeps beside the images for ``home``:
    the jail's disks' parent, the microVMs' state directory and the gVisor bundles'."""
    from firebox.images.cache import image_root

    key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    for d in (
        image_root() / "jail-rw" / key,
        image_root() / "vm" / key,
        image_root() / "gvisor" / key,
    ):
        with contextlib.suppress(OSError):
            d.rmdir()


# --- what the table says ------------------------------------------------------------------------

# derived figure: (layer, + or −) terms, per round
DERIVED: dict[str, list[tuple[str, int]]] = {
    "daemon_http_sdk_command": [("sdk_command", 1), ("agent_command", -1)],
    "daemon_own_command": [("raw_command", 1), ("agent_command", -1), ("http_floor_stream", -1)],
    "sdk_own_command": [("sdk_command", 1), ("raw_command", -1)],
    "daemon_own_code": [("raw_code", 1), ("agent_code", -1), ("http_floor_stream", -1)],
    "daemon_fixed_get": [("get_sandbox", 1), ("http_floor_get", -1)],
    "daemon_fixed_health": [("health", 1), ("http_floor_get", -1)],
    # by the daemon's own Server-Timing: its work to the first byte, the agent's wait taken out
    "st_daemon_command_first_byte": [("raw_command.app", 1), ("raw_command.agent", -1)],
    "st_daemon_get_sandbox": [("get_sandbox.app", 1)],
    "st_daemon_health": [("health.app", 1)],
    # the client's round trip beyond the daemon's whole time, for a plain answer: HTTP, client
    "st_outside_get_sandbox": [("get_sandbox", 1), ("get_sandbox.app", -1)],
}
SHARES = {"daemon_own_command_share": ("daemon_own_command", "sdk_command"),
          "daemon_own_code_share": ("daemon_own_code", "sdk_code")}  # fmt: skip


def breakdown(samples: dict[str, list[float]]) -> dict[str, float]:
    """Medians over rounds of each round's differences (ms), and the daemon's shares."""
    out: dict[str, float] = {}
    for name, terms in DERIVED.items():
        if all(layer in samples for layer, _ in terms):
            rounds = zip(*(samples[layer] for layer, _ in terms), strict=True)
            per_round = [
                sum(sign * v for (_, sign), v in zip(terms, r, strict=True)) for r in rounds
            ]
            out[name] = statistics.median(per_round)
    for name, (part, whole) in SHARES.items():
        if part in out and whole in samples:
            out[name] = out[part] / statistics.median(samples[whole])
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--floor-server":
        import uvicorn

        # as `firebox serve` runs its app (firebox/cli.py): uvicorn's defaults otherwise
        uvicorn.run(floor_app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        print(__doc__)
