"""Pause, resume and auto-pause through E2B's own Python SDK, unchanged: the calls E2B's docs
show (``pause``/``beta_pause``, ``Sandbox.connect`` resuming, ``lifecycle`` at create, listing
by state) do what they do on E2B, and the sandbox keeps its files, variables and processes."""

from __future__ import annotations

import time

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b_code_interpreter import Sandbox as CodeSandbox


def test_pause_connect_keeps_everything(e2b_env: dict[str, str]) -> None:
    sbx = CodeSandbox.create(timeout=1800)
    try:
        sbx.files.write("/home/user/notes.txt", "kept")
        sbx.run_code("answer = 42")
        handle = sbx.commands.run("sleep 600", background=True)
        assert sbx.pause() is True
        assert sbx.pause() is False  # already paused: E2B's 409
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert [s.state for s in paused if s.sandbox_id == sbx.sandbox_id] == [SandboxState.PAUSED]
        again = CodeSandbox.connect(sbx.sandbox_id)
        assert again.get_info().state == SandboxState.RUNNING
        assert again.files.read("/home/user/notes.txt") == "kept"
        assert again.run_code("answer").text == "42"
        assert handle.pid in [p.pid for p in again.commands.list()]
    finally:
        sbx.kill()


def test_beta_pause_and_calls_into_a_paused_sandbox(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=1800)
    try:
        sbx.beta_pause()
        with pytest.raises(Exception, match="paused"):
            sbx.commands.run("true")
        Sandbox.connect(sbx.sandbox_id)
        assert sbx.commands.run("echo awake").stdout == "awake\n"
    finally:
        sbx.kill()


def test_lifecycle_pause_on_timeout_and_auto_resume(e2b_env: dict[str, str]) -> None:
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sbx.files.write("/tmp/mark", "here")
        info = sbx.get_info()
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}
        deadline = time.monotonic() + 60
        while Sandbox.get_info(sbx.sandbox_id).state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "the timeout did not pause it"
            time.sleep(0.2)
        sbx.set_timeout(600)
        assert sbx.files.read("/tmp/mark") == "here"  # traffic resumed it
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_snapshots_and_forks_through_e2bs_sdk(e2b_env: dict[str, str], backend_name: str) -> None:
    sbx = CodeSandbox.create(timeout=1800)
    try:
        sbx.files.write("/home/user/kept.txt", "in the snapshot")
        sbx.run_code("value = 7")
        snap = sbx.create_snapshot()
        listed = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id).next_items()
        assert snap.snapshot_id in [s.snapshot_id for s in listed]
        made = CodeSandbox.create(snap.snapshot_id, timeout=600)  # E2B: a snapshot's id
        try:
            assert made.files.read("/home/user/kept.txt") == "in the snapshot"
            if backend_name == "microvm":  # a jail's snapshot is its files only
                assert made.run_code("value").text == "7"
        finally:
            made.kill()
        forks = sbx.fork(count=2, timeout=600)
        try:
            assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
            for f in forks:
                assert isinstance(f, Sandbox)
                assert f.files.read("/home/user/kept.txt") == "in the snapshot"
        finally:
            for f in forks:
                if isinstance(f, Sandbox):
                    f.kill()
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    finally:
        sbx.kill()
