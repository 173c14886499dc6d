"""The sandbox's limits the agent applies itself (``protocol.Configure``, sent by the daemon
after the agent's hello on every backend): the open-files limit of everything it starts, and
in a microVM the process limit of the guest's cgroup, which holds every sandbox process (a
jail's is the host's cgroup, set by the backend before the jail starts)."""

from __future__ import annotations

import os

from firebox import protocol
from firebox.agent import children
from firebox.agent.errors import log

PIDS_MAX = "/sys/fs/cgroup/sandbox/pids.max"  # made by a microVM's init; absent in a jail
_pids_max = -1


def prepare() -> None:
    """In a microVM's template, before the snapshot: open the process limit's file now, since
    a restored guest under software emulation pays for every path it looks up anew."""
    global _pids_max
    try:
        _pids_max = os.open(PIDS_MAX, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        log(f"limits: cannot open {PIDS_MAX}: {e}")


def configure(msg: protocol.Configure) -> None:
    children.set_open_files(msg.open_files)
    processes = msg.processes
    if _pids_max >= 0 and isinstance(processes, int) and processes > 0:
        try:
            os.pwrite(_pids_max, str(processes).encode(), 0)
        except OSError as e:
            log(f"limits: could not set the process limit to {processes}: {e}")
