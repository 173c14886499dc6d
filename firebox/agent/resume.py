"""After a VM is restored from its template's snapshot: become a sandbox of one's own.

Every clone wakes up with the template's kernel RNG state, wall clock, hostname and machine
id. The daemon sends fresh ones (``protocol.Resume``); this mixes the host's randomness into
the kernel pool and forces a reseed (so ``getrandom``, ``/dev/urandom``, ``secrets`` and
``uuid4`` differ between clones), sets the clock, the hostname and the machine id, and has the
warm interpreters reseed their own generators (Python's ``random``, NumPy's global one).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import time

from firebox import protocol
from firebox.agent.errors import log

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
MACHINE_ID = "/run/machine-id"
PIDS_MAX = "/sys/fs/cgroup/sandbox/pids.max"  # the guest's cgroup of every sandbox process


def apply(msg: protocol.Resume) -> None:
    steps = (
        ("reseed the kernel's random pool", lambda: _reseed_kernel(msg.entropy)),
        ("set the clock", lambda: time.clock_settime_ns(time.CLOCK_REALTIME, int(msg.time_ns))),
        ("set the hostname", lambda: socket.sethostname(msg.hostname) if msg.hostname else None),
        ("write the machine id", lambda: _write_machine_id(msg.machine_id)),
        ("set the process limit", lambda: _write_pids_max(msg.pids_max)),
    )
    for what, step in steps:
        try:
            step()
        except (OSError, ValueError, TypeError) as e:
            log(f"resume: could not {what}: {e}")
    from firebox.agent import contexts

    contexts.reseed()


def _reseed_kernel(entropy_hex: str) -> None:
    entropy = bytes.fromhex(entropy_hex)
    if not entropy:
        raise ValueError("the daemon sent no entropy")
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def _write_pids_max(pids: int) -> None:
    if isinstance(pids, int) and pids > 0:
        with open(PIDS_MAX, "w") as f:
            f.write(str(pids))


def _write_machine_id(machine_id: str) -> None:
    if machine_id:
        with open(MACHINE_ID, "w") as f:
            f.write(machine_id + "\n")
