"""The supervisor's relay (firebox/supervisor/main.py), run in a thread against socket pairs:
whole frames only, whichever daemon comes and goes; nothing the agent wrote is lost while no
daemon is connected; the agent's end ends it all."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox import protocol
from firebox.supervisor.main import Supervisor


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.agent, theirs = socket.socketpair()
        self.out_r, self.out_w = os.pipe()
        self.listen = tmp / "s.sock"
        self.tail = tmp / "s.tail"
        self.sup = Supervisor(theirs, self.out_r, str(self.listen), str(self.tail))
        self.thread = threading.Thread(target=self.sup.run, daemon=True)
        self.thread.start()

    def daemon(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.listen))
        s.settimeout(5)
        return s


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.agent.close()
    os.close(r.out_w)
    r.thread.join(5)


def _frame(channel: int, n: int) -> bytes:
    return protocol.encode(channel, protocol.Data(), bytes([n]) * 100)


def _read_frames(sock: socket.socket, count: int) -> list[bytes]:
    decoder = protocol.FrameDecoder()
    frames: list[protocol.Frame] = []
    while len(frames) < count:
        data = sock.recv(65536)
        assert data, "the stream ended"
        frames += decoder.feed(data)
    return [f.payload[:1] for f in frames]


def test_half_a_frame_from_a_daemon_that_dies_never_reaches_the_agent(rig: Rig) -> None:
    first = rig.daemon()
    whole = _frame(3, 7)
    first.sendall(whole[:20])  # then it dies mid-frame
    time.sleep(0.1)
    first.close()
    second = rig.daemon()
    second.sendall(_frame(5, 9))
    rig.agent.settimeout(5)
    got = rig.agent.recv(65536)
    assert got == _frame(5, 9)


def test_what_the_agent_writes_with_no_daemon_waits_for_the_next(rig: Rig) -> None:
    first = rig.daemon()
    rig.agent.sendall(_frame(1, 1))
    assert _read_frames(first, 1) == [b"\x01"]
    first.close()
    time.sleep(0.1)
    rig.agent.sendall(_frame(1, 2) + _frame(1, 3))  # nobody listens now
    second = rig.daemon()
    assert _read_frames(second, 2) == [b"\x02", b"\x03"]


def test_the_agents_end_ends_the_daemons_channel_and_the_supervisor(rig: Rig) -> None:
    daemon = rig.daemon()
    os.write(rig.out_w, b"bwrap: something went wrong\n")
    rig.agent.close()
    assert daemon.recv(10) == b""
    os.close(rig.out_w)
    rig.thread.join(5)
    assert not rig.thread.is_alive()
    assert not rig.listen.exists()
    assert b"something went wrong" in rig.tail.read_bytes()
    rig.out_w = os.open(os.devnull, os.O_WRONLY)  # for the fixture's close
    rig.agent = socket.socket()


def test_the_tail_keeps_only_the_last_8_kib(rig: Rig) -> None:
    os.write(rig.out_w, b"x" * 20000 + b"the end")
    deadline = time.monotonic() + 5
    while not (rig.tail.exists() and rig.tail.read_bytes().endswith(b"the end")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(rig.tail.read_bytes()) == 8192
