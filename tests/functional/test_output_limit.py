"""A command's output past the daemon's limit: cut with a marker, the rest discarded while the
command runs on to its end, reported as error "output_truncated"; the daemon's memory does not
grow with the flood."""

from __future__ import annotations

import os

from firebox import Sandbox
from firebox.testing import LocalDaemon
from tests.conftest import Daemon

FLOOD_MB = 40


def test_an_output_flood_is_cut_at_the_limit_with_a_marker(
    daemon: Daemon, backend_name: str
) -> None:
    with LocalDaemon(
        isolation=backend_name,
        pool_size=0,
        cgroup_parent=f"firebox-output-{os.getpid()}-{backend_name}",
        args=["--max-output-mb", "1"],
    ) as d:
        assert d.proc is not None
        with Sandbox.create(api_key=d.key, api_url=d.url) as sbx:
            before = _peak_rss_mb(d.proc.pid)
            result = sbx.commands.run(
                f"head -c {FLOOD_MB << 20} /dev/zero | tr '\\0' x; echo done >&2",
                timeout=120,
            )
            assert result.exit_code == 0  # the command ran to its end, unblocked
            assert result.error == "output_truncated"
            assert len(result.stdout) == 1 << 20 and set(result.stdout) == {"x"}
            assert "output truncated at 1048576 bytes" in result.stderr
            assert "done" not in result.stderr  # written after the cut: discarded
            assert _peak_rss_mb(d.proc.pid) - before < 20
            # the next command is whole again
            assert sbx.commands.run("echo fine").stdout == "fine\n"


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
