"""The in-sandbox agent, run for real on this host, driven through the daemon's AgentClient.
(The client against a fake agent on a socket pair is tests/unit/test_agent_client.py.)

The agent runs exactly as in a sandbox (``python3 -I -S`` from a lib dir whose
``firebox/__init__.py`` is empty, so any import beyond protocol and agent fails), on a socket
pair. Tests run as root on the host, so requests use ``user="root"`` and absolute temp paths.
The shared agent is started as a child subreaper, so the orphan reaper runs in every test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from firebox import protocol
from firebox.agent import privs
from firebox.agent.process_output import KILL_GRACE
from firebox.agent_client import AgentClient, AgentError, AgentGone, ProcessStream

PY = (
    "/usr/bin/python3"
    if os.path.exists("/usr/bin/python3")
    else shutil.which("python3") or "python3"
)
PACKAGE = Path(__file__).resolve().parents[2] / "firebox"
MB = 1_000_000
# How long a test waits for what must happen (an agent's hello, a watch event, a reaped
# orphan): a deadline that holds on a loaded host, never a speed.
WAIT = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent tests run as root")


def agent_code(lib: Path) -> str:
    return (
        f"import sys; sys.path.insert(0, {str(lib)!r}); from firebox.agent.main import main; main()"
    )


# Makes the agent a child subreaper, then execs it: the flag survives exec.
SUBREAPER = (
    "import ctypes, os, sys; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
)


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    client: AgentClient

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hwm_kb(self) -> int:
        """Peak resident memory of the agent so far."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    async def stop(self) -> None:
        await self.client.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def agent_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the backend stages into /opt/firebox/lib: protocol/ and agent/, nothing else."""
    lib = tmp_path_factory.mktemp("agent-lib")
    (lib / "firebox" / "agent").mkdir(parents=True)
    (lib / "firebox" / "__init__.py").write_text("")
    shutil.copytree(
        PACKAGE / "protocol",
        lib / "firebox" / "protocol",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for src in (PACKAGE / "agent").glob("*.py"):
        shutil.copy(src, lib / "firebox" / "agent" / src.name)
    return lib


async def start_agent(lib: Path, subreaper: bool = True, wrap: tuple[str, ...] = ()) -> Agent:
    ours, theirs = socket.socketpair()
    argv = [PY, "-I", "-S", "-c", agent_code(lib)]
    if subreaper:
        argv = [PY, "-I", "-S", "-c", SUBREAPER, *argv[1:]]
    argv = [*wrap, *argv]
    proc = subprocess.Popen(
        argv,
        pass_fds=[theirs.fileno()],
        env={"FIREBOX_AGENT_FD": str(theirs.fileno()), "FIREBOX_BACKEND": "test"},
    )
    theirs.close()
    client = await AgentClient.from_socket(ours)
    await client.wait_hello(WAIT)
    return Agent(proc, client)


@pytest_asyncio.fixture(scope="session")
async def agent(agent_lib: Path) -> AsyncIterator[Agent]:
    a = await start_agent(agent_lib)
    yield a
    await a.stop()


@pytest_asyncio.fixture
async def fresh(agent_lib: Path) -> AsyncIterator[Agent]:
    """An agent of its own, for tests that end it or measure its memory."""
    a = await start_agent(agent_lib)
    yield a
    await a.stop()


@pytest.fixture
def client(agent: Agent) -> AgentClient:
    return agent.client


def sh(cmd: str, **kw: object) -> protocol.ProcessStart:
    return protocol.ProcessStart(cmd=cmd, user="root", **kw)  # type: ignore[arg-type]


async def run(client: AgentClient, req: protocol.ProcessStart) -> tuple[bytes, bytes, object]:
    stream = await client.start_process(req)
    out = {"stdout": b"", "stderr": b""}
    async for fd, data in stream:
        out[fd] += data
    return out["stdout"], out["stderr"], stream.exit


# -- startup and control ----------------------------------------------------------------------


async def test_hello_with_the_sandbox_launch_command(agent_lib: Path) -> None:
    a = await start_agent(agent_lib, subreaper=False)  # its hello came within WAIT
    try:
        hello = await a.client.wait_hello(WAIT)
        assert hello.agent_pid == a.pid
        assert hello.backend == "test"
        assert hello.version == protocol.PROTOCOL_VERSION
        # Nothing it starts holds a capability, root included (securebits NOROOT, locked).
        out, _, _ = await run(a.client, sh("grep -E '^Cap(Inh|Eff|Prm|Amb)' /proc/self/status"))
        lines = out.decode().splitlines()
        assert len(lines) == 4 and all(line.endswith("0000000000000000") for line in lines), out
    finally:
        await a.stop()


async def test_ping_and_unknown_requests(client: AgentClient) -> None:
    assert await client.call(protocol.Ping()) is None

    class Bogus(protocol.Message):
        T = "bogus.thing"

    with pytest.raises(AgentError) as e:
        await client.call(Bogus())
    assert e.value.code == "invalid"
    with pytest.raises(AgentError) as e:
        await client.call(protocol.Result(value=1))  # a reply is not a request
    assert e.value.code == "invalid"
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileList(path="/", user="root", depth=0))
    assert e.value.code == "invalid"
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileStat(path="/", user="mallory"))
    assert e.value.code == "invalid" and "'user'" in e.value.message
    assert await client.call(protocol.Ping()) is None  # still serving


# -- processes --------------------------------------------------------------------------------


async def test_output_streams_before_exit(client: AgentClient, tmp_path: Path) -> None:
    # The second line waits for a file this test writes only once it has read the first: the
    # process can print it only if the first came out while it still ran.
    go = tmp_path / "go"
    stream = await client.start_process(
        sh(f"echo 1; {wait_for_file(go)}; [ -e {go} ] && echo 2 || echo gave-up")
    )
    assert stream.pid > 0
    out = b""
    async with asyncio.timeout(WAIT):
        async for _, data in stream:
            out += data
            if out.startswith(b"1\n"):
                go.touch()
    assert out == b"1\n2\n"
    assert stream.exit == protocol.ProcessExit(exit_code=0, signal=None, timed_out=False)


def wait_for_file(path: Path, seconds: int = 60) -> str:
    """Shell that waits until ``path`` exists, for ``seconds`` at most (then goes on)."""
    return f"while [ ! -e {path} ] && [ $SECONDS -lt {seconds} ]; do sleep 0.01; done"


async def test_exit_codes_and_stderr(client: AgentClient) -> None:
    out, err, ex = await run(client, sh("echo out; echo err >&2; exit 7"))
    assert (out, err) == (b"out\n", b"err\n")
    assert ex == protocol.ProcessExit(exit_code=7)
    _, _, ex = await run(client, sh("kill -TERM $$"))
    assert ex == protocol.ProcessExit(exit_code=128 + 15, signal=15)
    out, _, ex = await run(client, sh("nosuchcommand-xyz"))
    assert ex == protocol.ProcessExit(exit_code=127)


async def test_argv_env_cwd(client: AgentClient, tmp_path: Path) -> None:
    out, _, _ = await run(
        client, protocol.ProcessStart(argv=["printf", "%s|", "a b", "c"], user="root")
    )
    assert out == b"a b|c|"
    req = sh('echo "$FOO|$PWD|$(pwd)|$HOME|$USER|$LANG"', envs={"FOO": "bar"}, cwd=str(tmp_path))
    out, _, _ = await run(client, req)
    assert out.decode() == f"bar|{tmp_path}|{tmp_path}|/root|root|C.UTF-8\n"
    out, _, _ = await run(client, sh("pwd"))
    assert out == b"/root\n"  # the user's home by default


async def test_stdin_then_eof(client: AgentClient) -> None:
    stream = await client.start_process(sh("cat; echo done", stdin=True))
    await client.send_stdin(stream.pid, b"hello\n")
    await client.send_stdin(stream.pid, b"world\n", eof=True)
    out = b""
    async for _, data in stream:
        out += data
    assert out == b"hello\nworld\ndone\n"
    assert stream.exit is not None and stream.exit.exit_code == 0
    with pytest.raises(AgentError) as e:
        await client.send_stdin(stream.pid, b"late")
    assert e.value.code == "not_found"


async def test_list_and_signal_a_background_process(client: AgentClient) -> None:
    stream = await client.start_process(sh("sleep 30", tag="napper", envs={"A": "1"}))
    listed = {p["pid"]: p for p in await client.list_processes()}
    assert listed[stream.pid]["tag"] == "napper"
    assert listed[stream.pid]["cmd"] == "sleep 30"
    assert listed[stream.pid]["envs"] == {"A": "1"}
    await client.signal(stream.pid, signal.SIGTERM)
    async for _ in stream:
        pass
    assert stream.exit == protocol.ProcessExit(exit_code=143, signal=signal.SIGTERM)
    assert stream.pid not in {p["pid"] for p in await client.list_processes()}
    with pytest.raises(AgentError) as e:
        await client.signal(stream.pid, signal.SIGTERM)
    assert e.value.code == "not_found"


async def test_timeout_kills_the_process_group(client: AgentClient) -> None:
    t0 = time.monotonic()
    out, _, ex = await run(client, sh("echo start; sleep 30 & sleep 30", timeout=2))
    # the background sleep, holding stdout, died too: the output ended at the timeout plus
    # the agent's KILL_GRACE, with a loaded host's slack, not at the sleeps' 30 s
    assert time.monotonic() - t0 < 2 + KILL_GRACE + 5
    assert out == b"start\n"
    assert ex == protocol.ProcessExit(exit_code=137, signal=9, timed_out=True)


async def test_start_errors(client: AgentClient, tmp_path: Path) -> None:
    with pytest.raises(AgentError) as e:
        await client.start_process(protocol.ProcessStart(argv=["/no/such/binary"], user="root"))
    assert e.value.code == "not_found" and "/no/such/binary" in e.value.message
    with pytest.raises(AgentError) as e:
        await client.start_process(sh("true", cwd=str(tmp_path / "missing")))
    assert e.value.code == "not_found" and "working directory" in e.value.message
    (tmp_path / "f").write_text("")
    with pytest.raises(AgentError) as e:
        await client.start_process(sh("true", cwd=str(tmp_path / "f")))
    assert e.value.code == "not_a_directory"
    with pytest.raises(AgentError) as e:
        await client.start_process(protocol.ProcessStart(argv=["true"], cmd="true", user="root"))
    assert e.value.code == "invalid"


async def test_detach_leaves_the_process_running(client: AgentClient, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    stream = await client.start_process(sh(f"yes | head -c 5000000; sleep 0.2; touch {marker}"))
    async for _ in stream:
        break  # read one chunk, then go away like a disconnected HTTP client
    await stream.detach()
    deadline = time.monotonic() + WAIT
    while not marker.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert marker.exists()
    assert await client.call(protocol.Ping()) is None


async def read_all(stream: ProcessStream) -> bytes:
    out = b""
    async with asyncio.timeout(WAIT):
        async for _, data in stream:
            out += data
    return out


async def test_attach_after_detach_gets_later_output_and_the_exit(
    client: AgentClient, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    stream = await client.start_process(
        sh(
            f"echo before; head -c 3000000 /dev/zero; touch {ready}; {wait_for_file(go)}; "
            f"[ -e {go} ] && echo after || echo gave-up; exit 3"
        )
    )
    async for _, data in stream:
        assert data.startswith(b"before")
        break
    await stream.detach()
    # Nobody listens while it writes megabytes: only if they are drained does it get on
    deadline = time.monotonic() + WAIT
    while not ready.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert ready.exists()
    attached = await client.attach_process(stream.pid)
    assert attached.pid == stream.pid
    go.touch()
    out = await read_all(attached)
    # what was written before the attach is not repeated (but for the zeros that may still
    # have sat in the pipe when it came)
    assert out.lstrip(b"\0") == b"after\n"
    assert attached.exit == protocol.ProcessExit(exit_code=3)


async def test_several_listeners_each_get_the_output_from_when_they_joined(
    client: AgentClient, tmp_path: Path
) -> None:
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    started = await client.start_process(
        sh(
            f"echo one; {wait_for_file(go1)}; [ -e {go1} ] && echo two || echo gave-up; "
            f"{wait_for_file(go2)}; [ -e {go2} ] && echo three || echo gave-up"
        )
    )
    async for _, data in started:
        assert data == b"one\n"  # read before the attach: not repeated to the attached one
        break
    first = await client.attach_process(started.pid)
    go1.touch()
    async for _, data in first:
        assert data == b"two\n"
        break
    await first.detach()  # one listener leaves: the others and the process carry on
    second = await client.attach_process(started.pid)
    go2.touch()
    assert await read_all(second) == b"three\n"
    assert await read_all(started) == b"two\nthree\n"
    assert started.exit == second.exit == protocol.ProcessExit(exit_code=0)


async def test_attach_to_an_unknown_or_finished_process_is_not_found(
    client: AgentClient,
) -> None:
    with pytest.raises(AgentError) as e:
        await client.attach_process(999_999_999)
    assert e.value.code == "not_found"
    stream = await client.start_process(sh("true"))
    await read_all(stream)
    with pytest.raises(AgentError) as e:
        await client.attach_process(stream.pid)
    assert e.value.code == "not_found"
    assert await client.call(protocol.Ping()) is None


async def test_orphans_are_reaped(agent: Agent) -> None:
    # The subshell exits at once; its sleep is orphaned and reparented to the agent.
    _, _, ex = await run(agent.client, sh("(sleep 0.2 >/dev/null 2>&1 &); exit 0"))
    assert ex == protocol.ProcessExit(exit_code=0)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        kids = children(agent.pid)
        if not kids:
            break
        await asyncio.sleep(0.05)
    assert not children(agent.pid)
    # and Popen's own children kept their exit status all along
    _, _, ex = await run(agent.client, sh("exit 3"))
    assert ex == protocol.ProcessExit(exit_code=3)


def processes() -> Iterator[tuple[str, int, int]]:
    """(state, ppid, pgrp) of every process on the host."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield fields[0], int(fields[1]), int(fields[2])


def children(pid: int) -> list[str]:
    """States of the processes (zombies included) whose parent is ``pid``."""
    return [state for state, ppid, _ in processes() if ppid == pid]


def group_alive(pgid: int) -> bool:
    return any(pgrp == pgid and state != "Z" for state, _, pgrp in processes())


async def test_channel_eof_kills_process_groups_and_ends_the_agent(fresh: Agent) -> None:
    stream = await fresh.client.start_process(sh("sleep 60 & sleep 60"))
    pgid = stream.pid
    await fresh.client.close()
    assert fresh.proc.wait(WAIT) == 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and group_alive(pgid):
        await asyncio.sleep(0.05)
    assert not group_alive(pgid)


async def test_agent_death_fails_pending_calls(fresh: Agent) -> None:
    stream = await fresh.client.start_process(sh("sleep 30"))
    fresh.proc.kill()
    t0 = time.monotonic()
    with pytest.raises(AgentGone):
        async for _ in stream:
            pass
    # at once (the channel's EOF), not at the sleep's 30 s; the bound only has a loaded host's
    # slack
    assert time.monotonic() - t0 < 10
    assert fresh.client.closed
    with pytest.raises(AgentGone):
        await fresh.client.call(protocol.Ping())
    os.killpg(stream.pid, signal.SIGKILL)


# -- many things at once ----------------------------------------------------------------------


async def test_concurrent_operations(client: AgentClient, tmp_path: Path) -> None:
    # A barrier: each process marks its arrival, then waits until all six have arrived, so
    # each can only print its number if all six ran at once (60 s at most, then "alone").
    arrived = tmp_path / "arrived"
    arrived.mkdir()

    async def proc(i: int) -> bytes:
        cmd = (
            f"touch {arrived}/s{i}; set -- {arrived}/s*; "
            f"while [ $# -lt 6 ] && [ $SECONDS -lt 60 ]; do sleep 0.01; set -- {arrived}/s*; done; "
            f"[ $# -ge 6 ] && echo {i} || echo alone"
        )
        out, _, _ = await run(client, sh(cmd))
        return out

    async def upload(i: int) -> int:
        async def body() -> AsyncIterator[bytes]:
            yield bytes([i]) * 300_000

        info = await client.write_file(str(tmp_path / f"f{i}"), "root", body())
        return int(info["size"])

    async with asyncio.timeout(2 * 60):
        results = await asyncio.gather(
            *(proc(i) for i in range(6)),
            *(upload(i) for i in range(4)),
            *(client.call(protocol.Ping()) for _ in range(4)),
            client.call(protocol.FileStat(path=str(tmp_path), user="root")),
        )
    assert results[:6] == [f"{i}\n".encode() for i in range(6)]  # all six overlapped
    assert results[6:10] == [300_000] * 4
    for i in range(4):
        assert (tmp_path / f"f{i}").read_bytes() == bytes([i]) * 300_000


# -- files ------------------------------------------------------------------------------------


async def test_large_file_round_trip_keeps_agent_memory_flat(fresh: Agent, tmp_path: Path) -> None:
    path = str(tmp_path / "big" / "blob.bin")
    size = 50 * MB
    rng = random.Random(1)
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 20))
            sent.update(chunk)
            left -= len(chunk)
            yield chunk

    before = fresh.hwm_kb()
    info = await fresh.client.write_file(path, "root", body())
    assert info["size"] == size and info["type"] == "file" and info["path"] == path
    assert info["permissions"] == "-rw-r--r--"  # with the type character, as E2B
    got = hashlib.sha256()
    download = fresh.client.read_file(path, "root")
    async for chunk in download:
        got.update(chunk)
    assert download.size == size
    assert got.hexdigest() == sent.hexdigest()
    assert fresh.hwm_kb() - before < 20_000, "the agent buffered the file"
    assert not [p for p in os.listdir(tmp_path / "big") if p.endswith(".upload")]


async def test_slow_reader_backpressures_process_output(fresh: Agent) -> None:
    before = fresh.hwm_kb()
    stream = await fresh.client.start_process(sh("head -c 50000000 /dev/zero"))
    total = 0
    most_queued = 0
    async for _, data in stream:
        total += len(data)
        most_queued = max(most_queued, len(stream._ch.items) if stream._ch else 0)
        await asyncio.sleep(0.001)  # a slow HTTP client
    assert total == 50 * MB
    assert most_queued <= protocol.WINDOW + 1
    assert fresh.hwm_kb() - before < 20_000, "the agent buffered the output"


async def test_read_errors_come_before_the_first_chunk(client: AgentClient, tmp_path: Path) -> None:
    chunks = client.read_file(str(tmp_path / "missing"), "root").__aiter__()
    with pytest.raises(AgentError) as e:
        await chunks.__anext__()
    assert e.value.code == "not_found" and "missing" in e.value.message
    with pytest.raises(AgentError) as e:
        async with client.read_file(str(tmp_path), "root"):
            pass
    assert e.value.code == "is_a_directory"
    (tmp_path / "empty").write_bytes(b"")
    assert [c async for c in client.read_file(str(tmp_path / "empty"), "root")] == []


async def test_write_errors(client: AgentClient, tmp_path: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x"

    (tmp_path / "dir").mkdir()
    with pytest.raises(AgentError) as e:
        await client.write_file(str(tmp_path / "dir"), "root", body())
    assert e.value.code == "is_a_directory"
    (tmp_path / "file").write_text("keep")
    with pytest.raises(AgentError) as e:
        await client.write_file(str(tmp_path / "file" / "sub"), "root", body())
    assert e.value.code == "not_a_directory"

    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("the HTTP client went away")

    with pytest.raises(RuntimeError):
        await client.write_file(str(tmp_path / "file"), "root", broken())
    deadline = time.monotonic() + WAIT  # the cancel reaches the agent asynchronously
    while sorted(os.listdir(tmp_path)) != ["dir", "file"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]
    assert (tmp_path / "file").read_text() == "keep"  # never half-replaced
    # a new file's upload that breaks leaves nothing, its empty placeholder included
    with pytest.raises(RuntimeError):
        await client.write_file(str(tmp_path / "new"), "root", broken())
    deadline = time.monotonic() + WAIT
    while sorted(os.listdir(tmp_path)) != ["dir", "file"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sorted(os.listdir(tmp_path)) == ["dir", "file"]


async def test_full_disk_is_no_space_and_leaves_no_temp_file(
    agent_lib: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) for a tiny tmpfs")
    # A 1 MB tmpfs in a mount namespace of the agent's own.
    wrap = (
        "unshare",
        "-m",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=1m tmpfs {disk} && exec "$@"',
        "-",
    )
    a = await start_agent(agent_lib, subreaper=False, wrap=wrap)
    try:
        target = str(disk / "f.bin")
        old = await a.client.write_file(target, "root", one(b"old"))

        async def big() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"\0" * MB

        with pytest.raises(AgentError) as e:
            await a.client.write_file(target, "root", big())
        assert e.value.code == "no_space" and target in e.value.message
        entries = await a.client.call(protocol.FileList(path=str(disk), user="root"))
        assert [x["name"] for x in entries] == ["f.bin"]  # the temp file is gone
        assert [c async for c in a.client.read_file(target, "root")] == [b"old"]
        assert old["size"] == 3
    finally:
        await a.stop()


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_overwrite_keeps_mode(client: AgentClient, tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("old")
    script.chmod(0o750)

    async def body() -> AsyncIterator[bytes]:
        yield b"#!/bin/sh\n"

    info = await client.write_file(str(script), "root", body())
    assert info["mode"] == 0o750 and script.read_bytes() == b"#!/bin/sh\n"


async def test_list_with_depth(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.txt").write_text("x")
    (tmp_path / "top.txt").write_text("hello")
    (tmp_path / "link").symlink_to(tmp_path / "a")

    async def names(depth: int) -> list[str]:
        entries = await client.call(protocol.FileList(path=str(tmp_path), user="root", depth=depth))
        return sorted(os.path.relpath(e["path"], tmp_path) for e in entries)

    assert await names(1) == ["a", "link", "top.txt"]
    assert await names(2) == ["a", "a/b", "link", "top.txt"]
    assert await names(5) == ["a", "a/b", "a/b/deep.txt", "link", "top.txt"]  # link not entered
    entries = await client.call(protocol.FileList(path=str(tmp_path), user="root"))
    by_name = {e["name"]: e for e in entries}
    assert by_name["link"]["type"] == "dir"  # a symlink reports its target's type, as E2B's
    assert by_name["link"]["symlink_target"] == str(tmp_path / "a")
    assert by_name["a"]["type"] == "dir" and by_name["top.txt"]["size"] == 5
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileList(path=str(tmp_path / "top.txt"), user="root"))
    assert e.value.code == "not_a_directory"


async def test_stat(client: AgentClient, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("abc")
    f.chmod(0o640)
    info = await client.call(protocol.FileStat(path=str(f), user="root"))
    assert info["name"] == "f.txt" and info["type"] == "file" and info["size"] == 3
    assert info["permissions"] == "-rw-r-----" and info["mode"] == 0o640
    assert info["owner"] == "root" and info["group"] == "root"
    assert abs(info["modified_time"] - f.stat().st_mtime) < 1e-3
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileStat(path=str(tmp_path / "nope"), user="root"))
    assert e.value.code == "not_found" and str(tmp_path / "nope") in e.value.message
    # relative paths and ~ start at the user's home
    home = await client.call(protocol.FileStat(path="~", user="root"))
    assert home["path"] == "/root"


async def test_mkdir_rename_remove(client: AgentClient, tmp_path: Path) -> None:
    d = str(tmp_path / "x" / "y")
    assert await client.call(protocol.FileMakeDir(path=d, user="root")) is True
    assert await client.call(protocol.FileMakeDir(path=d, user="root")) is False
    (tmp_path / "file").write_text("1")
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileMakeDir(path=str(tmp_path / "file"), user="root"))
    assert e.value.code == "not_a_directory"
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileMakeDir(path=str(tmp_path / "file" / "z"), user="root"))
    assert e.value.code == "not_a_directory"

    new = str(tmp_path / "x" / "moved")
    info = await client.call(
        protocol.FileRename(old_path=str(tmp_path / "file"), new_path=new, user="root")
    )
    assert info["path"] == new and info["type"] == "file"
    assert not (tmp_path / "file").exists()
    with pytest.raises(AgentError) as e:
        await client.call(
            protocol.FileRename(old_path=str(tmp_path / "gone"), new_path=new, user="root")
        )
    assert e.value.code == "not_found"

    await client.call(protocol.FileRemove(path=new, user="root"))
    assert not os.path.exists(new)
    await client.call(protocol.FileRemove(path=str(tmp_path / "x"), user="root"))
    assert not (tmp_path / "x").exists()
    # removing what is not there is no error, as in E2B
    assert await client.call(protocol.FileRemove(path=str(tmp_path / "x"), user="root")) is None


def test_as_user_checks_permissions_as_that_user(tmp_path: Path) -> None:
    # setfsuid is per thread: switch in a thread of our own, as the agent's handlers do.
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    seen: list[object] = []

    def probe() -> None:
        with privs.as_user(65534, 65534, "nobody"):
            try:
                secret.read_text()
                seen.append("read")
            except PermissionError:
                seen.append("denied")
        seen.append(secret.read_text())  # root again afterwards

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen == ["denied", "root only"]


# -- watch ------------------------------------------------------------------------------------


async def test_watch_reports_changes(client: AgentClient, tmp_path: Path) -> None:
    watch = await client.watch(str(tmp_path), "root", recursive=True)
    seen: list[tuple[str, str]] = []

    async def collect(until: set[tuple[str, str]]) -> None:
        async with asyncio.timeout(WAIT):
            async for ev in watch:
                seen.append((ev.type, ev.name))
                if until <= set(seen):
                    return

    (tmp_path / "a.txt").write_text("hi")
    (tmp_path / "a.txt").chmod(0o600)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "c.txt").write_text("x")
    await collect(
        {
            ("create", "a.txt"),
            ("write", "a.txt"),
            ("chmod", "a.txt"),
            ("rename", "a.txt"),
            ("rename", "b.txt"),
            ("remove", "b.txt"),
            ("create", "sub"),
            ("create", "sub/deeper"),
            ("create", "sub/deeper/c.txt"),
        }
    )
    # a later file in a directory the watch found on its own
    seen.clear()
    (tmp_path / "sub" / "deeper" / "d.txt").write_text("y")
    await collect({("create", "sub/deeper/d.txt"), ("write", "sub/deeper/d.txt")})
    await watch.cancel()
    assert await client.call(protocol.Ping()) is None


async def test_watch_shows_an_upload_as_a_plain_write(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("1")
    watch = await client.watch(str(tmp_path), "root", recursive=False)
    await client.write_file(str(tmp_path / "old.txt"), "root", one(b"2"))
    await client.write_file(str(tmp_path / "new.txt"), "root", one(b"3"))
    want = {("write", "old.txt"), ("create", "new.txt"), ("write", "new.txt")}
    seen: set[tuple[str, str]] = set()
    async with asyncio.timeout(WAIT):
        async for ev in watch:
            seen.add((ev.type, ev.name))
            if want <= seen:
                break
    await watch.cancel()
    assert seen == want  # nothing of the temporary file, no rename


async def test_upload_metadata(client: AgentClient, tmp_path: Path) -> None:
    target = str(tmp_path / "m.txt")
    try:
        info = await client.write_file(target, "root", one(b"x"), metadata={"author": "ada"})
    except AgentError as e:
        if "extended attributes" in e.message:
            pytest.skip("this filesystem holds no user extended attributes")
        raise
    assert info["metadata"] == {"author": "ada"}
    assert os.getxattr(target, "user.e2b.author") == b"ada"
    stat = await client.call(protocol.FileStat(path=target, user="root"))
    assert stat["metadata"] == {"author": "ada"}
    # a new upload without metadata replaces what the file had
    assert (await client.write_file(target, "root", one(b"y")))["metadata"] is None


async def test_watch_ends_when_its_directory_goes(client: AgentClient, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    watch = await client.watch(str(tmp_path / "w"), "root", recursive=False)
    (tmp_path / "w").rmdir()
    async with asyncio.timeout(WAIT):
        events = [(ev.type, ev.name) async for ev in watch]
    assert events == []


async def test_watch_errors(client: AgentClient, tmp_path: Path) -> None:
    with pytest.raises(AgentError) as e:
        await client.watch(str(tmp_path / "missing"), "root", recursive=False)
    assert e.value.code == "not_found"
    (tmp_path / "f").write_text("")
    with pytest.raises(AgentError) as e:
        await client.watch(str(tmp_path / "f"), "root", recursive=False)
    assert e.value.code == "not_a_directory"


# -- acting as a non-root user ------------------------------------------------------------------
#
# The host has no "user" account, so these run the agent's serve loop inside this process
# with /etc/passwd swapped for one where "user" is nobody (65534) with a home of its own.


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temp dir others may traverse (pytest's own are root-only all the way up)."""
    path = Path(tempfile.mkdtemp(prefix="firebox-agent-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest_asyncio.fixture
async def as_nobody(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AgentClient, Path]]:
    from firebox.agent import main, users
    from firebox.agent.channel import Conn

    home = open_dir / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    passwd = open_dir / "passwd"
    passwd.write_text(
        "root:x:0:0:root:/root:/bin/bash\nuser:x:65534:65534::" + str(home) + ":/bin/bash\n"
    )
    monkeypatch.setattr(users, "PASSWD", str(passwd))
    ours, theirs = socket.socketpair()
    server = threading.Thread(
        target=main.serve, args=(Conn(theirs.fileno()), main._handlers()), daemon=True
    )
    server.start()
    client = await AgentClient.from_socket(ours)
    yield client, home
    await client.close()
    server.join(5)
    theirs.close()


async def test_user_processes_and_files_are_the_users(
    as_nobody: tuple[AgentClient, Path], open_dir: Path
) -> None:
    client, home = as_nobody
    req = protocol.ProcessStart(cmd="id -u; id -g; id -G; echo $HOME $USER; pwd")
    out, _, ex = await run(client, req)
    assert out.decode().split() == ["65534", "65534", "65534", str(home), "user", str(home)]

    async def body() -> AsyncIterator[bytes]:
        yield b"mine"

    info = await client.write_file("notes/a.txt", "user", body())  # relative to the home
    assert info["path"] == str(home / "notes" / "a.txt")
    st = (home / "notes" / "a.txt").stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert (home / "notes").stat().st_uid == 65534

    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)
    (locked / "secret").write_text("root only")
    (locked / "secret").chmod(0o600)
    with pytest.raises(AgentError) as e:
        await client.write_file(str(locked / "x"), "user", body())
    assert e.value.code == "permission_denied" and "'user'" in e.value.message
    with pytest.raises(AgentError) as e:
        await client.call(protocol.FileList(path=str(locked)))
    assert e.value.code == "permission_denied"
    with pytest.raises(AgentError) as e:
        async for _ in client.read_file(str(locked / "secret"), "user"):
            pass
    assert e.value.code == "permission_denied"
    with pytest.raises(AgentError) as e:
        await client.start_process(protocol.ProcessStart(cmd="true", cwd=str(locked)))
    assert e.value.code == "permission_denied"
    # root, through the same agent, still may
    chunks = [c async for c in client.read_file(str(locked / "secret"), "root")]
    assert chunks == [b"root only"]


async def test_what_it_starts_can_be_interrupted_however_it_was_started(agent_lib: Path) -> None:
    # A daemon run by nohup or from a shell's background ignores SIGHUP, SIGINT and SIGQUIT,
    # and an ignored signal stays ignored across exec: the agent must not pass that on, or a
    # command (a bash cell's `sleep`) could not be interrupted at its timeout.
    ignoring = ("/bin/sh", "-c", 'trap "" HUP INT QUIT; exec "$@"', "sh")
    a = await start_agent(agent_lib, wrap=ignoring)
    try:
        out, _, exit = await run(a.client, sh("grep SigIgn /proc/self/status"))
        ignored = int(out.split()[1], 16)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
            assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored: {out!r}"
        stream = await a.client.start_process(sh("sleep 30"))
        await a.client.signal(stream.pid, signal.SIGINT)
        async with asyncio.timeout(WAIT):
            async for _ in stream:
                pass
        assert stream.exit is not None and stream.exit.signal == signal.SIGINT
    finally:
        await a.stop()


# -- ports: a connection to a server in the sandbox --------------------------------------------


async def test_net_connect_carries_a_connection_both_ways(client: AgentClient) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_upper() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(4096)
            conn.sendall(data.upper() * 1000)  # more than one frame back

    thread = threading.Thread(target=echo_upper, daemon=True)
    thread.start()
    try:
        conn = await client.net_connect(port)
        await conn.write(b"hello\n", WAIT)
        got = b""
        while chunk := await conn.read():
            got += chunk
        assert got == b"HELLO\n" * 1000
        conn.close()
    finally:
        server.close()
        thread.join(WAIT)


async def test_net_connect_to_a_port_nobody_listens_on(client: AgentClient) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()
    with pytest.raises(AgentError) as e:
        await client.net_connect(port)
    assert e.value.code == "connection_refused"
    assert f"nothing listens on port {port}" in e.value.message
    with pytest.raises(AgentError) as e:
        await client.net_connect(70000)
    assert e.value.code == "invalid"


# -- a command on a terminal -------------------------------------------------------------------


async def _read_until(stream: ProcessStream, needle: bytes, seen: bytearray) -> None:
    async with asyncio.timeout(WAIT):
        while needle not in seen:
            fd, data = await stream.__anext__()
            assert fd == "pty"
            seen += data


async def test_a_shell_on_a_terminal_echoes_resizes_and_takes_ctrl_c(client: AgentClient) -> None:
    req = protocol.ProcessStart(
        argv=["/bin/bash", "--norc", "--noprofile", "-i"],
        user="root",
        pty={"cols": 100, "rows": 30},
        envs={"PS1": "PROMPT$ "},
    )
    stream = await client.start_process(req)
    seen = bytearray()
    await _read_until(stream, b"PROMPT$ ", seen)
    await client.send_stdin(stream.pid, b"echo typed-$((6*7))\r")
    await _read_until(stream, b"typed-42", seen)
    assert b"echo typed-$((6*7))" in seen  # the terminal echoed what was typed
    await client.send_stdin(stream.pid, b"stty size\r")
    await _read_until(stream, b"30 100", seen)
    await client.resize(stream.pid, 132, 43)
    await client.send_stdin(stream.pid, b"stty size\r")
    await _read_until(stream, b"43 132", seen)
    await client.send_stdin(stream.pid, b"sleep 60; echo not-interrupted\r")
    await asyncio.sleep(0.5)
    await client.send_stdin(stream.pid, b"\x03")  # Ctrl-C: SIGINT to the foreground job
    await client.send_stdin(stream.pid, b"echo after-$((1+1))\r")
    await _read_until(stream, b"after-2", seen)
    assert b"\nnot-interrupted" not in seen  # typed (echoed), never printed on a line of its own
    await client.send_stdin(stream.pid, b"exit 7\r")
    async with asyncio.timeout(WAIT):
        async for fd, _ in stream:
            assert fd == "pty"
    assert stream.exit is not None and stream.exit.exit_code == 7


async def test_resizing_a_command_without_a_terminal_is_refused(client: AgentClient) -> None:
    stream = await client.start_process(sh("sleep 30"))
    try:
        with pytest.raises(AgentError) as e:
            await client.resize(stream.pid, 80, 24)
        assert e.value.code == "invalid" and "no terminal" in e.value.message
    finally:
        await client.signal(stream.pid, 9)
        async for _ in stream:
            pass
    with pytest.raises(AgentError) as e:
        await client.start_process(
            protocol.ProcessStart(cmd="true", user="root", pty={"cols": 0, "rows": 5})
        )
    assert e.value.code == "invalid"
