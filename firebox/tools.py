"""firebox's sandbox tools for LLM APIs that take tools as JSON schemas (OpenAI's, Anthropic's)
rather than MCP: the very tools the daemon serves over MCP (server/mcp), listed and called
through its ``/mcp`` with the MCP SDK's client, so there is one definition of each.

    from firebox.tools import Tools

    tools = Tools()                     # FIREBOX_URL / FIREBOX_API_KEY, as the SDK finds them
    openai_tools = tools.openai()       # [{"type": "function", "function": {...}}, ...]
    anthropic_tools = tools.anthropic() # [{"name": ..., "description": ..., "input_schema": ...}]
    reply = tools.call("run_code", {"code": "1 + 1"})
    reply.text, reply.images, reply.is_error, reply.structured
    reply.openai_content(), reply.anthropic_content()   # what to send back to the model

A ``Tools`` keeps one MCP session for its life (``close()``, or use it as a context manager):
calls that name no sandbox share the session's own, which ends with it.
"""

from __future__ import annotations

import builtins
import contextlib
import secrets
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from firebox._core.config import resolve_config

T = TypeVar("T")
SESSION_HEADER = "Firebox-Mcp-Session"  # the daemon's own MCP session (server/mcp/sessions.py)


@dataclass(frozen=True)
class ToolReply:
    """What a tool call answered: its text, its images (base64 PNG or JPEG, with their MIME
    type), structured data (a cell's results and chart data), and whether it failed (then
    ``text`` says why, in firebox's words)."""

    text: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (mime type, base64 data)
    structured: dict[str, Any] | None = None
    is_error: bool = False

    def openai_content(self) -> str:
        """A tool message's content for OpenAI's Chat Completions: text (images are not
        allowed in tool messages there; their data is in ``structured``)."""
        return self.text if not self.is_error else f"error: {self.text}"

    def anthropic_content(self) -> list[dict[str, Any]]:
        """A ``tool_result``'s content blocks for Anthropic's Messages API: text and images."""
        blocks: list[dict[str, Any]] = [{"type": "text", "text": self.text or "(no output)"}]
        for mime, data in self.images:
            source = {"type": "base64", "media_type": mime, "data": data}
            blocks.append({"type": "image", "source": source})
        return blocks


class Tools:
    def __init__(self, api_key: str | None = None, api_url: str | None = None) -> None:
        config = resolve_config(api_key, api_url)
        self._url = f"{config.api_url}/mcp"
        self._headers = {"X-API-Key": config.api_key, SESSION_HEADER: secrets.token_hex(16)}
        self._schemas: list[Any] | None = None
        self._loop = _Loop()

    # -- the tools as each API takes them -----------------------------------------------------

    def list(self) -> builtins.list[Any]:
        """The daemon's tools (MCP ``Tool`` objects: name, description, input_schema)."""
        if self._schemas is None:
            self._schemas = self._loop.run(self._list())
        return list(self._schemas)

    def openai(self) -> builtins.list[dict[str, Any]]:
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": _plain_schema(t.input_schema),
                },
            }
            for t in self.list()
        ]

    def anthropic(self) -> builtins.list[dict[str, Any]]:
        return [
            {
                "name": t.name,
                "description": t.description or "",
                "input_schema": _plain_schema(t.input_schema),
            }
            for t in self.list()
        ]

    # -- running a call ------------------------------------------------------------------------

    def call(self, name: str, arguments: Mapping[str, Any] | str | None = None) -> ToolReply:
        """Run one tool call the model asked for (``arguments`` as a dict, or the JSON string
        OpenAI gives); a failure is a reply with ``is_error``, for the model to read."""
        import json

        given: Any = arguments
        if isinstance(given, str):
            try:
                given = json.loads(given or "{}")
            except ValueError as e:
                return ToolReply(f"the arguments are not JSON: {e}", is_error=True)
        if not isinstance(given, Mapping | type(None)):
            return ToolReply("the arguments must be a JSON object", is_error=True)
        return self._loop.run(self._call(name, dict(given or {})))

    def close(self) -> None:
        """End the session: the sandbox calls without one shared is killed."""
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(self._url, headers=self._headers, timeout=10)
        self._loop.close()

    def __enter__(self) -> Tools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- MCP -------------------------------------------------------------------------------------

    async def _list(self) -> builtins.list[Any]:
        async with self._client() as c:
            return list((await c.list_tools()).tools)

    async def _call(self, name: str, arguments: dict[str, Any]) -> ToolReply:
        async with self._client() as c:
            result = await c.call_tool(name, arguments)
        texts, images = [], []
        for block in result.content:
            kind = getattr(block, "type", "")
            if kind == "text":
                texts.append(block.text)
            elif kind == "image":
                images.append((block.mime_type, block.data))
        return ToolReply("\n".join(texts), images, result.structured_content, result.is_error)

    def _client(self) -> Any:
        from contextlib import asynccontextmanager

        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        @asynccontextmanager
        async def client() -> Any:
            timeout = httpx2.Timeout(30, read=900)
            async with httpx2.AsyncClient(headers=self._headers, timeout=timeout) as http:
                transport = streamable_http_client(self._url, http_client=http)
                async with Client(transport) as c:  # type: ignore[arg-type]
                    yield c

        return client()


def _plain_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's input schema as both APIs take it: an object schema, no ``title`` noise."""
    out = {k: v for k, v in schema.items() if k != "title"}
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    props = out["properties"]
    out["properties"] = {
        k: {kk: vv for kk, vv in v.items() if kk != "title"} if isinstance(v, dict) else v
        for k, v in props.items()
    }
    return out


class _Loop:
    """An event loop on a thread of its own, so that the sync API may be called from
    anywhere (a script, or a thread of an app that runs its own loop)."""

    def __init__(self) -> None:
        import asyncio

        self._asyncio = asyncio
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
