"""The jail's host id ranges must not overlap ids the host hands out."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from firebox.confine.uids import UidSlots, id_conflicts
from firebox.protocol import display


def test_overlaps_with_accounts_and_subordinate_ranges_are_found(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbig:x:1000000500:1::/:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\n")
    (tmp_path / "subuid").write_text("alice:100000:65536\nbob:999990000:20000\n")
    (tmp_path / "subgid").write_text("alice:100000:65536\n")
    found = id_conflicts(1_000_000_000, 65536 * 4, etc=tmp_path)
    assert any("big" in f for f in found)
    assert any("bob" in f for f in found)
    assert not any("alice" in f for f in found)


def test_no_overlap_on_a_plain_host(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n")
    (tmp_path / "subuid").write_text("user:100000:65536\n")
    assert id_conflicts(1_000_000_000, 65536 * 4096, etc=tmp_path) == []


def test_file_names_that_are_not_utf8_become_valid_text() -> None:
    assert display("ok") == "ok"
    assert display(b"bad\xff".decode("utf-8", "surrogateescape")) == "bad\ufffd"
    assert display("\ud800") == "?"


def test_a_range_another_daemon_only_looks_at_is_reclaimed(tmp_path: Path) -> None:
    """Another daemon's take() locks a range while it looks for processes in it: an
    adopting daemon waits that out (it used to kill the sandbox it was adopting)."""
    slots = UidSlots(1 << 30, tmp_path)
    fd = os.open(tmp_path / f"{slots.first_id(3)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.3, os.close, (fd,)).start()  # the look ends
    started = time.monotonic()
    assert slots.reclaim(3)
    assert time.monotonic() - started >= 0.2
    slots.release(3)


def test_a_range_held_by_another_daemon_is_not_reclaimed(tmp_path: Path) -> None:
    other, mine = UidSlots(1 << 30, tmp_path), UidSlots(1 << 30, tmp_path)
    slot = other.take()
    assert not mine.reclaim(slot, wait=0.2)
    other.release(slot)
    assert mine.reclaim(slot, wait=0.2)
