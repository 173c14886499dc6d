"""Output past the daemon's limit (`--max-output-mb`): a command's or a cell's printed output is
cut with a marker, the rest discarded while it runs on to its end, and reported (a command's
error "output_truncated", an execution's ``output_truncated``); the daemon's memory does not
grow with the flood."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from firebox import Sandbox
from firebox.testing import LocalDaemon
from tests.conftest import Daemon

FLOOD_MB = 40


@pytest.fixture(scope="module")
def limited(daemon: Daemon, backend_name: str) -> Iterator[LocalDaemon]:
    with LocalDaemon(
        isolation=backend_name,
        pool_size=0,
        cgroup_parent=f"firebox-output-{os.getpid()}-{backend_name}",
        args=["--max-output-mb", "1"],
    ) as d:
        yield d


def test_a_command_flood_is_cut_at_the_limit_with_a_marker(limited: LocalDaemon) -> None:
    assert limited.proc is not None
    with Sandbox.create(api_key=limited.key, api_url=limited.url) as sbx:
        before = _peak_rss_mb(limited.proc.pid)
        result = sbx.commands.run(
            f"head -c {FLOOD_MB << 20} /dev/zero | tr '\\0' x; echo done >&2", timeout=120
        )
        assert result.exit_code == 0  # the command ran to its end, unblocked
        assert result.error == "output_truncated"
        assert len(result.stdout) == 1 << 20 and set(result.stdout) == {"x"}
        assert "output truncated at 1048576 bytes" in result.stderr
        assert "done" not in result.stderr  # written after the cut: discarded
        assert _peak_rss_mb(limited.proc.pid) - before < 20
        assert sbx.commands.run("echo fine").stdout == "fine\n"  # the next one is whole


def test_a_cell_flood_is_cut_and_the_context_lives_on(limited: LocalDaemon) -> None:
    with Sandbox.create(api_key=limited.key, api_url=limited.url) as sbx:
        ex = sbx.run_code("kept = 42\nfor _ in range(30): print('é' * 100_000)\nprint('end')")
        assert ex.output_truncated and ex.error is None
        printed = "".join(ex.logs.stdout)
        assert len(printed.encode()) <= 1 << 20 and "end" not in printed
        assert "output truncated" in "".join(ex.logs.stderr)
        after = sbx.run_code("kept")
        assert after.text == "42" and not after.output_truncated


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
