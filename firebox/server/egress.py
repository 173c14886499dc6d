"""The daemon's egress proxy: the only way out of a sandbox, and only where its policy allows.

Design (docs/security.md, "Egress"): a sandbox has no network device but loopback, on both
backends. A sandbox whose policy opens anything gets a proxy port inside (the agent listens on
127.0.0.1:3128, agent/egress.py) and the proxy variables in its processes' environment; each
connection to that port travels over the agent's channel to this module, which:

1. reads the request head: ``CONNECT host:port`` (HTTPS, any TCP) or an absolute-form HTTP
   request (``GET http://host/path``);
2. checks the name against the policy, resolves it itself (``Resolver``) and checks every
   address it got (egress_policy.py), so a name resolving to a private address is refused;
3. connects to the first address that passed, from the host, and relays bytes both ways.

Refusals are HTTP answers the client shows (403 with the reason), and a line in the daemon's
log. Nothing here listens on the host: the host side of every connection is outgoing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from firebox.agent_client import AgentClient, AgentError, AgentGone, NetConnection
from firebox.server import telemetry
from firebox.server.egress_policy import (
    Address,
    FloorCheck,
    Network,
    Policy,
    PolicyError,
    normalize_name,
)

log = logging.getLogger("firebox.egress")

PORT = 3128  # inside the sandbox, on its own loopback
HEAD_MAX = 64 * 1024  # a request head longer than this is refused
HEAD_DEADLINE = 30.0  # for the client to send its request head
RESOLVE_DEADLINE = 5.0
CONNECT_DEADLINE = 10.0
IDLE_DEADLINE = 300.0  # a connection with no bytes either way this long is closed
LISTEN_DEADLINE = 10.0  # for the agent to open the proxy port
CLOSE_DEADLINE = 10.0  # for the agent to deliver the last bytes and close, after both ends
READ_SIZE = 256 * 1024
# Request headers that concern the hop to the proxy, never forwarded to the origin.
HOP_HEADERS = {b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive"}


class Resolver:
    """Names to addresses, by the host's resolver or by the operator's fixed entries
    (``--egress-resolve name=addr``, as curl's ``--resolve``: a mirror's name, or a test's)."""

    def __init__(self, fixed: Mapping[str, Sequence[str]] | None = None) -> None:
        self.fixed = {
            normalize_name(name): [ipaddress.ip_address(a) for a in addrs]
            for name, addrs in (fixed or {}).items()
        }

    async def resolve(self, name: str) -> list[Address]:
        if name in self.fixed:
            return list(self.fixed[name])
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RESOLVE_DEADLINE):
            infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        seen: list[Address] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if address not in seen:
                seen.append(address)
        return seen


def parse_resolve(entries: Sequence[str]) -> dict[str, list[str]]:
    """``name=addr[,addr…]`` entries of ``--egress-resolve``; PolicyError for a bad one."""
    fixed: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, addrs = entry.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            fixed[normalize_name(name)] = [str(ipaddress.ip_address(a)) for a in addrs.split(",")]
        except ValueError:
            raise PolicyError(
                f"--egress-resolve {entry!r}: give name=address[,address…], "
                "e.g. mirror.internal=192.0.2.10"
            ) from None
    return fixed


def host_addresses() -> frozenset[Address]:
    """This host's own addresses (every interface, v4 and v6): closed to sandboxes."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        # a local IPv4 address shows in the routing trie as "|-- addr" then "/32 host LOCAL"
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for above, line in zip(lines, lines[1:], strict=False):
            if "/32 host LOCAL" in line and "|--" in above:
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(above.split("|--")[1].strip()))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            with contextlib.suppress(ValueError, IndexError):
                found.add(ipaddress.IPv6Address(int(raw, 16)))
    return frozenset(found)


@dataclass(slots=True)
class EgressSettings:
    """The daemon's side of egress: operator overrides, shared by every sandbox."""

    resolver: Resolver = field(default_factory=Resolver)
    permitted: tuple[Network, ...] = ()  # --egress-permit: ranges lifted off the floor

    def floor(self) -> FloorCheck:
        return FloorCheck(host_addresses=host_addresses(), permitted=self.permitted)


@dataclass(slots=True)
class Request:
    host: str  # a name (lower case) or an IP literal
    port: int
    connect: bool  # CONNECT (a tunnel) or a plain HTTP request to forward
    head: bytes  # for plain HTTP: the head rewritten for the origin
    rest: bytes  # bytes the client sent after the head


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SandboxEgress:
    """One sandbox's proxy: keeps an accept outstanding at its agent and serves what comes."""

    def __init__(
        self, sandbox_id: str, agent: AgentClient, policy: Policy, settings: EgressSettings
    ) -> None:
        self.sandbox_id = sandbox_id
        self.agent = agent
        self.policy = policy
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the proxy port in the sandbox; raises AgentError/AgentGone if it cannot."""
        first = await self.agent.net_accept(PORT, timeout=LISTEN_DEADLINE)
        self._task = asyncio.create_task(self._serve(first))

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._conns) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, pending: NetConnection) -> None:
        try:
            while True:
                await pending.connected()
                task = asyncio.create_task(self._handle(pending))
                self._conns.add(task)
                task.add_done_callback(self._conns.discard)
                pending = await self.agent.net_accept(PORT, timeout=LISTEN_DEADLINE)
        except (AgentGone, AgentError) as e:
            log.debug("egress of %s ended: %s", self.sandbox_id, e)
        finally:
            pending.close()

    async def _handle(self, conn: NetConnection) -> None:
        try:
            try:
                request = await _read_request(conn)
                upstream = await self._open(request)
            except Refused as e:
                telemetry.EGRESS_CONNECTIONS.labels(verdict="refused").inc()
                log.info("egress of %s refused: %s", self.sandbox_id, e.reason)
                await _answer(conn, e.status, e.reason)
                await conn.finish(CLOSE_DEADLINE)
                return
            reader, writer = upstream
            telemetry.EGRESS_CONNECTIONS.labels(verdict="allowed").inc()
            try:
                if request.connect:
                    await conn.write(b"HTTP/1.1 200 Connection established\r\n\r\n", IDLE_DEADLINE)
                else:
                    writer.write(request.head)
                if request.rest:
                    writer.write(request.rest)
                await _relay(conn, reader, writer)
                await conn.finish(CLOSE_DEADLINE)
            finally:
                writer.close()
        except (AgentGone, AgentError, OSError, TimeoutError) as e:
            log.debug("egress connection of %s ended: %s", self.sandbox_id, e)
        finally:
            conn.close()

    async def _open(self, request: Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        name: str | None = request.host
        try:
            addresses: list[Address] = [ipaddress.ip_address(request.host)]
            name = None
        except ValueError:
            refused = self.policy.refuses_name(request.host)
            if refused is not None:
                raise Refused(403, f"egress to {request.host} denied: {refused.reason}") from None
            try:
                addresses = await self.settings.resolver.resolve(request.host)
            except (OSError, TimeoutError) as e:
                raise Refused(502, f"cannot resolve {request.host}: {e}") from None
        floor = self.settings.floor()
        refusals = []
        for address in addresses:
            verdict = self.policy.decide(name, address, floor)
            if not verdict.allowed:
                refusals.append(verdict.reason)
                continue
            log.info(
                "egress of %s to %s (%s) port %d: %s",
                self.sandbox_id, request.host, address, request.port, verdict.reason,
            )  # fmt: skip
            try:
                async with asyncio.timeout(CONNECT_DEADLINE):
                    return await asyncio.open_connection(str(address), request.port)
            except (OSError, TimeoutError) as e:
                refusals.append(f"connecting to {address} port {request.port} failed: {e}")
        if not addresses:
            raise Refused(502, f"{request.host} has no address")
        raise Refused(403, f"egress to {request.host} denied: " + "; ".join(refusals))


async def _read_request(conn: NetConnection) -> Request:
    buf = b""
    async with asyncio.timeout(HEAD_DEADLINE):
        while b"\r\n\r\n" not in buf:
            if len(buf) > HEAD_MAX:
                raise Refused(431, "the request head is too large")
            data = await conn.read()
            if not data:
                raise Refused(400, "the connection ended before a request")
            buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "not an HTTP proxy request") from None
    if method == "CONNECT":
        host, port = _host_port(target, None)
        return Request(host, port, True, b"", rest)
    if not target.startswith("http://"):
        raise Refused(400, "only CONNECT and absolute http:// requests go through this proxy")
    authority, _, path = target[len("http://") :].partition("/")
    host, port = _host_port(authority, 80)
    kept = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in HOP_HEADERS]
    first = f"{method} /{path} {version}".encode()
    origin_head = b"\r\n".join([first, *kept, b"Connection: close"]) + b"\r\n\r\n"
    return Request(host, port, False, origin_head, rest)


def _host_port(authority: str, default: int | None) -> tuple[str, int]:
    authority = authority.rsplit("@", 1)[-1]
    if authority.startswith("["):  # [v6]:port
        host, _, tail = authority[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = authority.partition(":")
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        port = None
    if port is None or not 0 < port < 65536 or not host:
        raise Refused(400, f"{authority!r} is not host:port")
    return normalize_name(host), port


async def _answer(conn: NetConnection, status: int, reason: str) -> None:
    phrase = {400: "Bad Request", 403: "Forbidden", 431: "Too Large", 502: "Bad Gateway"}
    body = f"firebox: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with contextlib.suppress(AgentGone, AgentError, TimeoutError):
        await conn.write(head + body, HEAD_DEADLINE)
        await conn.write_eof()


async def _relay(
    conn: NetConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Both directions until both ended; a side silent for IDLE_DEADLINE ends it all."""
    sent_out = telemetry.EGRESS_BYTES.labels(direction="out")
    came_in = telemetry.EGRESS_BYTES.labels(direction="in")

    async def out() -> None:  # sandbox → far side
        while True:
            async with asyncio.timeout(IDLE_DEADLINE):
                data = await conn.read()
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            sent_out.inc(len(data))
            writer.write(data)
            async with asyncio.timeout(IDLE_DEADLINE):
                await writer.drain()

    async def back() -> None:  # far side → sandbox
        while True:
            async with asyncio.timeout(IDLE_DEADLINE):
                data = await reader.read(READ_SIZE)
            if not data:
                await conn.write_eof()
                return
            came_in.inc(len(data))
            await conn.write(data, IDLE_DEADLINE)

    tasks = [asyncio.create_task(out()), asyncio.create_task(back())]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # an error or a timeout on one side ends both
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
