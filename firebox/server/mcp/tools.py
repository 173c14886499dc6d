"""The MCP edge's tools (the MCP SDK's ``MCPServer``), onto the daemon's own core: the same
manager, agent calls and checks as firebox's REST API, never a second copy of them.

Every call shows an API key (``X-API-Key`` or ``Authorization: Bearer``): the tools reach
that key's sandboxes only. A firebox error comes back as a tool error with firebox's message
(``ToolError``), which says what to do. Descriptions are written for a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import ValidationError

from firebox import protocol
from firebox.agent_client import AgentError, AgentGone
from firebox.server import activity
from firebox.server.agent_calls import agent_call, agent_error, ensure_capacity
from firebox.server.auth import caller_of
from firebox.server.code import start_cell
from firebox.server.commands import classify_exit
from firebox.server.errors import ApiError
from firebox.server.files import check_path
from firebox.server.live import LiveSandbox
from firebox.server.manager import SandboxManager
from firebox.server.mcp.output import capped, cell_blocks
from firebox.server.mcp.sessions import Sessions
from firebox.server.ports.routes import preview_link
from firebox.server.registry import KeyRecord
from firebox.settings import Network, SandboxSettings

COMMAND_TIMEOUT = 60.0
MAX_FILE = 1 << 20  # bytes a read_file shows a model; more is cut, marked

INSTRUCTIONS = (
    "firebox runs code in isolated sandboxes: small Linux machines with Python (numpy, pandas, "
    "matplotlib), Node.js and bash, no network unless asked for. Call create_sandbox to get "
    "one (or just call run_code / run_command: a sandbox is created on first use and its id "
    "is in the answer; pass that sandbox_id to later calls to keep its state). Variables "
    "persist between run_code calls in the same sandbox and context. Kill a sandbox when done."
)


def build(sessions: Sessions) -> MCPServer:
    mcp = MCPServer("firebox", instructions=INSTRUCTIONS, log_level="WARNING")

    @mcp.tool(structured_output=False)
    async def create_sandbox(
        ctx: Context,
        template: str = "python",
        timeout_seconds: int = 600,
        allow_internet_access: bool = False,
        allow_out: list[str] | None = None,
    ) -> str:
        """Create a new sandbox and return its sandbox_id. It ends after timeout_seconds
        (1..86400) unless killed earlier. It has no network unless allow_internet_access is
        true or allow_out lists domains/IPs it may reach (e.g. ["pypi.org",
        "files.pythonhosted.org"]); private addresses are never reachable."""
        mgr, caller = _caller(ctx)
        network = Network(allow_out=allow_out) if allow_out else None
        live = await _create(mgr, caller, template, timeout_seconds, allow_internet_access, network)
        return (
            f"created sandbox {live.id} ({live.spec.template}, {live.backend}); pass "
            f"sandbox_id={live.id!r} to use it"
        )

    @mcp.tool()
    async def run_code(
        ctx: Context,
        code: str,
        language: str = "python",
        sandbox_id: str | None = None,
        context_id: str | None = None,
        timeout_seconds: float = 60,
    ) -> Any:
        """Run code in the sandbox's stateful interpreter (python by default; also javascript,
        typescript, bash) and return what it printed, its result, charts as images and their
        data, and any error with its traceback. State (variables, imports) persists across
        calls in the same sandbox and context. Use plt.show() to return a chart."""
        live, note = await _sandbox(ctx, sessions, sandbox_id)
        cell = await _api(
            start_cell(
                live, code, context_id=context_id, language=language, timeout=timeout_seconds
            )
        )
        out: dict[str, list[str]] = {"stdout": [], "stderr": []}
        results: list[Any] = []
        error = None
        with _agent_errors(live):
            first = await cell.first  # None: over already, having shown nothing
            events = [] if first is None else [first, *[e async for e in cell.stream]]
        for kind, value in events:
            if kind in out:
                out[kind].append(value)
            elif kind == "result":
                results.append(value)
            elif kind == "error":
                error = value
        ended = protocol.as_dict(cell.stream.done or protocol.CodeDone())
        blocks, structured = cell_blocks(
            "".join(out["stdout"]), "".join(out["stderr"]), results, error, ended
        )
        if note:
            blocks.insert(0, TextContent(type="text", text=note))
        return CallToolResult(content=list(blocks), structured_content=structured)

    @mcp.tool(structured_output=False)
    async def run_command(
        ctx: Context,
        command: str,
        sandbox_id: str | None = None,
        user: str = "user",
        timeout_seconds: float = COMMAND_TIMEOUT,
    ) -> str:
        """Run a shell command (bash -c) in the sandbox and return its stdout, stderr and exit
        code. It is killed at timeout_seconds. A non-zero exit is an error whose text holds
        the output. user is "user" (default) or "root" (root inside the sandbox only)."""
        live, note = await _sandbox(ctx, sessions, sandbox_id)
        ensure_capacity(live)
        req = protocol.ProcessStart(
            cmd=command,
            envs=live.envs,
            user=user,
            timeout=timeout_seconds or None,
            output_limit=live.output_limit,
        )
        proc = await _api(agent_call(live, activity.start_process(live, req)))
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        with _agent_errors(live):
            async for fd, data in proc:
                out.setdefault(fd, []).append(data)
        assert proc.exit is not None
        stdout = b"".join(out["stdout"]).decode("utf-8", "replace")
        stderr = b"".join(out["stderr"]).decode("utf-8", "replace")
        _, why = classify_exit(live, proc.exit)
        text = f"exit code {proc.exit.exit_code}"
        if why:
            text += f" ({why})"
        if stdout:
            text += "\nstdout:\n" + capped(stdout, "stdout")
        if stderr:
            text += "\nstderr:\n" + capped(stderr, "stderr")
        if note:
            text = note + "\n" + text
        if proc.exit.exit_code != 0:
            raise ToolError(f"the command failed: {text}")
        return text

    @mcp.tool(structured_output=False)
    async def read_file(ctx: Context, path: str, sandbox_id: str | None = None) -> str:
        """Read a text file in the sandbox (up to 1 MB shown; more is cut, marked)."""
        live, _ = await _sandbox(ctx, sessions, sandbox_id)
        data = bytearray()
        with _agent_errors(live):
            async for chunk in live.agent.read_file(check_path(path), "user"):
                data += chunk
                if len(data) > MAX_FILE:
                    break
        text = bytes(data[:MAX_FILE]).decode("utf-8", "replace")
        if len(data) > MAX_FILE:
            text += f"\n[firebox: the file goes on past {MAX_FILE} bytes; read it in parts]"
        return text

    @mcp.tool(structured_output=False)
    async def write_file(
        ctx: Context, path: str, content: str, sandbox_id: str | None = None
    ) -> str:
        """Write text to a file in the sandbox (created with its directories, or replaced)."""
        live, note = await _sandbox(ctx, sessions, sandbox_id)

        async def body() -> Any:
            yield content.encode()

        with _agent_errors(live):
            info = await live.agent.write_file(check_path(path), "user", body())
        return (note + "\n" if note else "") + f"wrote {info.get('size')} bytes to {path}"

    @mcp.tool(structured_output=False)
    async def list_files(
        ctx: Context, path: str = "/home/user", sandbox_id: str | None = None
    ) -> str:
        """List a directory in the sandbox: one entry a line, with its type and size."""
        live, _ = await _sandbox(ctx, sessions, sandbox_id)
        raw = await _api(
            agent_call(live, live.agent.call(protocol.FileList(path=check_path(path), user="user")))
        )
        lines = [f"{e.get('type'):9} {e.get('size'):>10}  {e.get('path')}" for e in raw]
        return "\n".join(lines) or f"{path} is empty"

    @mcp.tool(structured_output=False)
    async def upload_from_url(
        ctx: Context, url: str, path: str, sandbox_id: str | None = None
    ) -> str:
        """Download url into path in the sandbox. The sandbox fetches it itself, through its
        network policy: it must have been created with allow_internet_access or with the
        URL's host in allow_out, else the download is refused."""
        live, note = await _sandbox(ctx, sessions, sandbox_id)
        if not url.startswith(("http://", "https://")):
            raise ToolError(f"{url!r} is not an http:// or https:// URL")
        req = protocol.ProcessStart(
            argv=["curl", "-fsSL", "--max-time", "120", "-o", check_path(path), url],
            envs=live.envs,
            timeout=150,
            output_limit=64 << 10,
        )
        proc = await _api(agent_call(live, activity.start_process(live, req)))
        said = b""
        async for _, data in proc:
            said += data
        assert proc.exit is not None
        if proc.exit.exit_code != 0:
            hint = (
                ""
                if live.policy.opens_anything
                else (" (this sandbox has no network: create one with allow_out=[the URL's host])")
            )
            raise ToolError(f"the download failed: {said.decode('utf-8', 'replace').strip()}{hint}")
        return (note + "\n" if note else "") + f"downloaded {url} to {path}"

    @mcp.tool(structured_output=False)
    async def get_preview_url(ctx: Context, port: int, sandbox_id: str) -> str:
        """A URL that opens the server listening on port in the sandbox (bound to 0.0.0.0 or
        127.0.0.1 there) in a person's browser. The link works once, within five minutes;
        programs send the sandbox's traffic token in the Firebox-Traffic-Token header to the
        host instead."""
        mgr, caller = _caller(ctx)
        live = await _api(mgr.usable(caller.id, sandbox_id))
        if not 0 < port < 65536:
            raise ToolError(f"port {port} must be 1..65535")
        state = ctx.request_context.request.app.state  # type: ignore[union-attr]
        link = preview_link(state, live.id, port)
        return f"open {link.url} (once, within 5 minutes); the host is {link.host}"

    @mcp.tool(structured_output=False)
    async def pause_sandbox(ctx: Context, sandbox_id: str) -> str:
        """Pause a sandbox: its files, processes and variables are kept, and it uses no CPU
        until resumed. Calls into it fail until resume_sandbox."""
        mgr, caller = _caller(ctx)
        await _api(mgr.pause(caller.id, sandbox_id))
        return f"paused sandbox {sandbox_id}"

    @mcp.tool(structured_output=False)
    async def resume_sandbox(
        ctx: Context, sandbox_id: str, timeout_seconds: int | None = None
    ) -> str:
        """Resume a paused sandbox where it was; timeout_seconds, if given, is its new time to
        live from now (when longer than what it had left)."""
        mgr, caller = _caller(ctx)
        await _api(mgr.resume(caller.id, sandbox_id, timeout_seconds))
        return f"sandbox {sandbox_id} is running"

    @mcp.tool(structured_output=False)
    async def kill_sandbox(ctx: Context, sandbox_id: str) -> str:
        """Kill a sandbox: it ends and everything in it is gone."""
        mgr, caller = _caller(ctx)
        await _api(mgr.kill(caller.id, sandbox_id))
        sessions.forget(sandbox_id)
        return f"killed sandbox {sandbox_id}"

    return mcp


@contextlib.contextmanager
def _agent_errors(live: LiveSandbox) -> Iterator[None]:
    """The agent failing mid-call: a tool error with the message the REST API would give."""
    try:
        yield
    except (AgentError, AgentGone) as e:
        raise ToolError(agent_error(e, live).message) from None


def _caller(ctx: Context) -> tuple[SandboxManager, KeyRecord]:
    """The daemon's manager and the key the request shows; a tool error without one."""
    request = ctx.request_context.request
    if request is None:
        raise ToolError("this MCP server runs in the firebox daemon, over HTTP")
    state = request.app.state
    record = caller_of(state.registry, ctx.headers or {})
    if record is None:
        raise ToolError("no valid API key: send it in the X-API-Key header of the MCP requests")
    return state.manager, record


async def _api(call: Any) -> Any:
    """``call``'s value; a firebox error as a tool error with its message."""
    try:
        return await call
    except ApiError as e:
        raise ToolError(e.message) from None


async def _create(
    mgr: SandboxManager,
    caller: KeyRecord,
    template: str,
    timeout: int,
    internet: bool,
    network: Network | None,
) -> LiveSandbox:
    try:
        settings = SandboxSettings(
            template=template,
            timeout=timeout,
            allow_internet_access=internet,
            network=network,
        )
    except ValidationError as e:
        raise ToolError(f"invalid sandbox settings: {e.errors()[0].get('msg')}") from None
    return await _api(mgr.create(caller.id, settings))  # type: ignore[no-any-return]


async def _sandbox(
    ctx: Context, sessions: Sessions, sandbox_id: str | None
) -> tuple[LiveSandbox, str]:
    """The sandbox a call names, or the session's own (made on first use): with a note for
    the model when one was just made."""
    mgr, caller = _caller(ctx)
    if sandbox_id:
        return await _api(mgr.usable(caller.id, sandbox_id)), ""
    session = sessions.key(ctx)
    owned = sessions.sandbox(session, caller.id)
    if owned is not None:
        with contextlib.suppress(ApiError):
            return await mgr.usable(caller.id, owned), ""
    live = await _create(mgr, caller, "python", 600, False, None)
    sessions.remember(ctx, session, caller.id, live.id, mgr)
    return live, (
        f"[created sandbox {live.id} for this session; pass sandbox_id={live.id!r} to keep "
        "using it]"
    )
