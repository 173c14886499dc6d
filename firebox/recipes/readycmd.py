"""Ready commands: how a template says its start command has come up.

A ready command runs in the sandbox again and again until it exits 0. These helpers are
E2B's, with E2B's exact commands; each needs only what firebox's Debian images carry: bash
(``[``, ``sleep``), curl, procps (``pgrep``) and iproute2 (``ss``).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class ReadyCmd:
    """A ready check, for ``set_start_cmd`` / ``set_ready_cmd``; ``get_cmd()`` is its shell
    command, as in E2B."""

    cmd: str

    def get_cmd(self) -> str:
        return self.cmd


def wait_for_port(port: int) -> ReadyCmd:
    """Ready once something listens on ``port`` (TCP or UDP)."""
    # ss's own filter matches the exact port (80 is not 8080); it exits 0 either way, so the
    # test is whether it printed a socket.
    return ReadyCmd(f'[ -n "$(ss -Htuln sport = :{int(port)})" ]')


def wait_for_url(url: str, status_code: int = 200) -> ReadyCmd:
    """Ready once ``url`` answers with ``status_code``."""
    return ReadyCmd(
        f'curl -s -o /dev/null -w "%{{http_code}}" {shlex.quote(url)} '
        f'| grep -q "{int(status_code)}"'
    )


def wait_for_process(process_name: str) -> ReadyCmd:
    """Ready once a process named ``process_name`` runs."""
    return ReadyCmd(f"pgrep {shlex.quote(process_name)} > /dev/null")


def wait_for_file(filename: str) -> ReadyCmd:
    """Ready once the file ``filename`` exists."""
    return ReadyCmd(f"[ -f {shlex.quote(filename)} ]")


def wait_for_timeout(timeout: int) -> ReadyCmd:
    """Ready after ``timeout`` milliseconds (whole seconds, at least one)."""
    return ReadyCmd(f"sleep {max(1, int(timeout) // 1000)}")
