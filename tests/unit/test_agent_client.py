"""The daemon's AgentClient against a fake agent on a socket pair: this test plays the agent's
side by hand, frame by frame, to misbehave as a real agent would not. (The real agent is
tests/integration/test_agent.py.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from firebox import protocol
from firebox.agent_client import AgentClient, AgentGone, AgentTimeout

WAIT = 10.0  # seconds the fake agent's side waits for what the client must send


@pytest.fixture
def fake_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(WAIT)  # a read of the fake agent's side never hangs the test
    yield a, b
    a.close()
    b.close()


async def frames(theirs: socket.socket, n: int) -> list[protocol.Frame]:
    """The next ``n`` frames the client sent, read off the event loop (which must keep running
    for the client to send them)."""

    def read() -> list[protocol.Frame]:
        decoder, got = protocol.FrameDecoder(), []
        while len(got) < n:
            data = theirs.recv(65536)  # socket.timeout after WAIT: the client sent too little
            assert data, "the client closed the channel"
            got += decoder.feed(data)
        return got

    return await asyncio.to_thread(read)


async def test_client_drops_an_agent_that_ignores_credit(
    fake_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = fake_pair
    client = await AgentClient.from_socket(ours)
    theirs.sendall(protocol.encode(0, protocol.Hello(agent_pid=1)))
    await client.wait_hello(WAIT)
    download = client.read_file("/x", "root")
    task = asyncio.ensure_future(download.__anext__())
    request = (await frames(theirs, 1))[0]  # the read request, on its channel
    for _ in range(protocol.WINDOW + 1):  # one frame beyond the window
        theirs.sendall(protocol.encode(request.channel, protocol.Data(), b"x"))
    assert await task == b"x"
    deadline = time.monotonic() + WAIT
    while not client.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert client.closed
    with pytest.raises(AgentGone):
        async for _ in download:
            pass


async def test_client_times_out_and_cancels(
    fake_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = fake_pair
    client = await AgentClient.from_socket(ours)
    with pytest.raises(TimeoutError):
        await client.wait_hello(0.05)  # no agent ever says hello: a lower bound, not a speed
    with pytest.raises(AgentTimeout) as e:
        await client.call(protocol.Ping(), timeout=0.05)
    assert e.value.code == "timeout"
    assert [f.type for f in await frames(theirs, 2)] == ["ping", "cancel"]
    await client.close()
