"""The agent acting as a sandbox user for the files API (agent/privs.py ``as_user``), both
ways: by fsuid, and by this thread's own effective ids where the kernel has no setfsuid
(gVisor). Either way the user's permissions apply, and the thread is root again after."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firebox.agent import privs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching ids needs root")


def _in_thread(fn: Callable[[], object]) -> object:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # shown by the assertion, not lost with the thread
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return out[0]


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory of root's that any user may enter (pytest's own are root's only)."""
    d = Path(tempfile.mkdtemp(prefix="firebox-as-user-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("by_fsuid", [True, False], ids=["fsuid", "per-thread-euid"])
def test_the_user_s_permissions_apply_and_root_comes_back(
    root_dir: Path, monkeypatch: pytest.MonkeyPatch, by_fsuid: bool
) -> None:
    monkeypatch.setattr(privs, "_FSUID", by_fsuid)
    tmp_path = root_dir  # root's: a user may look, not write

    def attempt() -> tuple[str, int, int]:
        try:
            with privs.as_user(1000, 1000, "user"):
                (tmp_path / "f").write_text("x")
            outcome = "written"
        except PermissionError:
            outcome = "refused"
        return outcome, os.geteuid(), os.getegid()

    assert _in_thread(attempt) == ("refused", 0, 0)
    assert (os.geteuid(), os.getegid()) == (0, 0)  # the other threads never changed
    (tmp_path / "mine").mkdir()
    os.chown(tmp_path / "mine", 1000, 1000)

    def write_own() -> bool:
        with privs.as_user(1000, 1000, "user"):
            (tmp_path / "mine" / "f").write_text("x")
        return (tmp_path / "mine" / "f").stat().st_uid == 1000

    assert _in_thread(write_own) is True
