"""The MCP edge (``/mcp``) through the MCP SDK's own client over streamable HTTP: the tools are
listed; a chart comes back as an image and its data; a failing command is a tool error with
firebox's message; files round trip; a session's own sandbox ends with the session; another
key's sandbox is out of reach; no key, no MCP."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.daemon_only  # the daemon's own edge, the same whatever the backend

TOOLS = {
    "create_sandbox",
    "run_code",
    "run_command",
    "read_file",
    "write_file",
    "list_files",
    "kill_sandbox",
    "pause_sandbox",
    "resume_sandbox",
    "get_preview_url",
    "upload_from_url",
}


@asynccontextmanager
async def _client(daemon: Daemon, key: str | None = None, mode: str = "auto") -> AsyncIterator[Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"X-API-Key": key or daemon.key}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(f"{daemon.url}/mcp", http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


def _text(result: Any) -> str:
    return "\n".join(b.text for b in result.content if getattr(b, "type", "") == "text")


def _sandbox_id(text: str) -> str:
    return "sbx_" + text.split("sbx_", 1)[1][:16]


def test_tools_a_chart_a_failure_and_files(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with _client(daemon) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names >= TOOLS, names
            made = await c.call_tool("create_sandbox", {"timeout_seconds": 300})
            assert not made.is_error, _text(made)
            sid = _sandbox_id(_text(made))
            try:
                chart = await c.call_tool(
                    "run_code",
                    {
                        "sandbox_id": sid,
                        "code": "import matplotlib.pyplot as plt\n"
                        "plt.bar(['a', 'b'], [3, 5]); plt.title('two'); plt.show()\n"
                        "print('drawn')",
                    },
                )
                assert not chart.is_error, _text(chart)
                images = [b for b in chart.content if getattr(b, "type", "") == "image"]
                assert images and images[0].mime_type == "image/png"
                assert base64.b64decode(images[0].data)[:8] == b"\x89PNG\r\n\x1a\n"
                assert "drawn" in _text(chart)
                charts = [r["chart"] for r in chart.structured_content["results"] if r.get("chart")]
                assert charts and charts[0]["type"] == "bar" and charts[0]["title"] == "two"

                failed = await c.call_tool(
                    "run_command", {"sandbox_id": sid, "command": "echo oops >&2; exit 3"}
                )
                assert failed.is_error and "exit code 3" in _text(failed)
                assert "oops" in _text(failed)
                gone = await c.call_tool(
                    "run_command", {"sandbox_id": "sbx_0000000000000000", "command": "true"}
                )
                assert gone.is_error and "is not running" in _text(gone)

                wrote = await c.call_tool(
                    "write_file",
                    {"sandbox_id": sid, "path": "/home/user/n.txt", "content": "héllo"},
                )
                assert not wrote.is_error, _text(wrote)
                read = await c.call_tool(
                    "read_file", {"sandbox_id": sid, "path": "/home/user/n.txt"}
                )
                assert _text(read) == "héllo"
                listed = await c.call_tool("list_files", {"sandbox_id": sid})
                assert "/home/user/n.txt" in _text(listed)
            finally:
                await c.call_tool("kill_sandbox", {"sandbox_id": sid})

    asyncio.run(scenario())


def test_a_sessions_own_sandbox_ends_with_the_session(daemon: Daemon) -> None:
    async def scenario() -> str:
        async with _client(daemon, mode="legacy") as c:  # the session era: a session to end
            ran = await c.call_tool("run_code", {"code": "x = 41\nx + 1"})
            assert not ran.is_error, _text(ran)
            assert "42" in _text(ran)
            sid = _sandbox_id(_text(ran))
            again = await c.call_tool("run_code", {"code": "x"})  # the same sandbox: x is there
            assert "41" in _text(again) and "created sandbox" not in _text(again)
            with daemon.client() as api:
                assert api.get(f"/sandboxes/{sid}").status_code == 200
            return sid

    sid = asyncio.run(scenario())
    with daemon.client() as api:
        for _ in range(100):
            if api.get(f"/sandboxes/{sid}").status_code == 404:
                break
            time.sleep(0.1)
        assert api.get(f"/sandboxes/{sid}").status_code == 404


def test_another_keys_sandbox_is_out_of_reach_and_no_key_no_mcp(daemon: Daemon) -> None:
    other = daemon.new_key("mcp-other")

    async def scenario() -> None:
        async with _client(daemon) as mine:
            made = await mine.call_tool("create_sandbox", {})
            sid = _sandbox_id(_text(made))
            try:
                async with _client(daemon, other) as theirs:
                    r = await theirs.call_tool("run_command", {"sandbox_id": sid, "command": "id"})
                    assert r.is_error and "is not running" in _text(r)
                    r = await theirs.call_tool("kill_sandbox", {"sandbox_id": sid})
                    assert r.is_error
            finally:
                await mine.call_tool("kill_sandbox", {"sandbox_id": sid})

    asyncio.run(scenario())
    r = httpx.post(
        f"{daemon.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_pause_resume_preview_and_a_refused_download(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with _client(daemon) as c:
            sid = _sandbox_id(_text(await c.call_tool("create_sandbox", {})))
            try:
                await c.call_tool("run_code", {"sandbox_id": sid, "code": "kept = 'yes'"})
                paused = await c.call_tool("pause_sandbox", {"sandbox_id": sid})
                assert not paused.is_error, _text(paused)
                refused = await c.call_tool("run_code", {"sandbox_id": sid, "code": "kept"})
                assert refused.is_error and "resume" in _text(refused)
                resumed = await c.call_tool("resume_sandbox", {"sandbox_id": sid})
                assert not resumed.is_error, _text(resumed)
                after = await c.call_tool("run_code", {"sandbox_id": sid, "code": "kept"})
                assert "yes" in _text(after)

                link = _text(
                    await c.call_tool("get_preview_url", {"sandbox_id": sid, "port": 8000})
                )
                url = link.split()[1]
                host = url.split("//", 1)[1].split("/", 1)[0]
                assert host.startswith("8000-sbx-")
                with httpx.Client(base_url=daemon.url, headers={"Host": host}) as browser:
                    opened = browser.get(url.split(host, 1)[1])
                    assert (
                        opened.status_code == 303
                        and "firebox_traffic=" in opened.headers["set-cookie"]
                    )

                denied = await c.call_tool(
                    "upload_from_url",
                    {"sandbox_id": sid, "url": "https://example.org/x", "path": "/tmp/x"},
                )
                assert denied.is_error and "no network" in _text(denied)
            finally:
                await c.call_tool("kill_sandbox", {"sandbox_id": sid})

    asyncio.run(scenario())


def test_the_same_tools_over_stdio(daemon: Daemon) -> None:
    """`firebox mcp`, as a desktop agent starts it: the SDK's stdio client, the same tools."""
    import os
    import sys

    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "firebox.cli", "mcp"],
        env={**{k: v for k, v in os.environ.items() if k != "FIREBOX_API_KEY"}, **daemon.env()},
    )

    async def scenario() -> str:
        async with Client(params) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names >= TOOLS, names
            ran = await c.call_tool("run_command", {"command": "echo via-stdio $((40+2))"})
            assert not ran.is_error, _text(ran)
            assert "via-stdio 42" in _text(ran)
            return _sandbox_id(_text(ran))

    sid = asyncio.run(scenario())
    with daemon.client() as api:  # its session's sandbox, ended with the session
        deadline = time.monotonic() + 30
        while api.get(f"/sandboxes/{sid}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.get(f"/sandboxes/{sid}").status_code == 404
