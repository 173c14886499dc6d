"""The async SDK against the real daemon: the same surface as the sync one, awaited."""

from __future__ import annotations

import asyncio

import pytest

from firebox import AsyncSandbox, CommandExitException, SandboxNotFoundException
from tests.conftest import Daemon


async def test_async_sandbox_end_to_end(daemon: Daemon) -> None:
    async with await AsyncSandbox.create(metadata={"sdk": "async"}) as sbx:
        assert (await sbx.get_info()).metadata == {"sdk": "async"}
        chunks: list[str] = []
        r = await sbx.commands.run("echo one; echo two", on_stdout=chunks.append)
        assert r.stdout == "one\ntwo\n" and "".join(chunks) == r.stdout
        with pytest.raises(CommandExitException):
            await sbx.commands.run("exit 4")
        await sbx.files.write("a/b.bin", bytes(range(256)))
        assert await sbx.files.read("a/b.bin", format="bytes") == bytes(range(256))
        assert [e.name for e in await sbx.files.list("a")] == ["b.bin"]
        handle = await sbx.commands.run("cat", background=True, stdin=True)
        await handle.send_stdin("piped\n")
        await handle.close_stdin()
        assert (await handle.wait()).stdout == "piped\n"
        listed = [s.sandbox_id for s in await AsyncSandbox.list(metadata={"sdk": "async"})]
        assert listed == [sbx.sandbox_id]
        sandbox_id = sbx.sandbox_id
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.connect(sandbox_id)


async def test_many_async_commands_at_once(daemon: Daemon) -> None:
    async with await AsyncSandbox.create() as sbx:
        results = await asyncio.gather(
            *(sbx.commands.run(f"sleep 0.2; echo {i}") for i in range(20))
        )
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(20)]


async def test_async_handles_read_in_a_task_and_connect(daemon: Daemon) -> None:
    async with await AsyncSandbox.create() as sbx:
        seen = asyncio.Event()
        handle = await sbx.commands.run(
            "cat", background=True, stdin=True, on_stdout=lambda s: seen.set()
        )
        await handle.send_stdin("hello\n")
        await asyncio.wait_for(seen.wait(), 60)  # nothing iterates: the handle's task read it
        assert handle.stdout == "hello\n"
        connected = await sbx.commands.connect(handle.pid)
        await handle.send_stdin("again\n")
        await handle.close_stdin()
        chunks = [chunk async for chunk in connected]
        assert "".join(c[0] for c in chunks if c[0] is not None) == "again\n"
        assert all(len(c) == 3 and c[1] is None and c[2] is None for c in chunks)
        assert (await connected.wait()).exit_code == 0
        assert (await handle.wait()).stdout == "hello\nagain\n"


async def test_async_watch_dir_calls_on_event_as_events_come(daemon: Daemon) -> None:
    async with await AsyncSandbox.create() as sbx:
        await sbx.files.make_dir("watched")
        seen: list[str] = []
        handle = await sbx.files.watch_dir("watched", on_event=lambda e: seen.append(e.name))
        try:
            await sbx.files.write("watched/a.txt", "x")
            deadline = asyncio.get_running_loop().time() + 30
            while "a.txt" not in seen and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)  # never asking: the events come on their own
            assert "a.txt" in seen
        finally:
            await handle.stop()
        assert [e.name for e in await sbx.files.list("watched", depth=None)] == ["a.txt"]
