"""After a VM is restored from its template's snapshot: become a sandbox of one's own (and,
after a pause, just catch up with the clock).

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
# a microVM's init binds /run/machine-id over /etc/machine-id; gVisor's bundle binds a file
# of the sandbox's own there (backends/gvisor/bundle.py)
GVISOR = os.environ.get("FIREBOX_BACKEND") == "gvisor"
MACHINE_ID = "/etc/machine-id" if GVISOR else "/run/machine-id"
BOOT_ID = "/run/firebox/boot_id"  # bound over /proc/sys/kernel/random/boot_id by the guest init
CLOCK_SLACK_NS = 20_000_000  # a clock this close to the host's is left alone
# Under software emulation every kernel path a restored guest takes for the first time costs
# milliseconds (its translation cache starts empty): what can be opened ahead is opened once,
# in the template, so a resume writes instead of looking paths up and creating files.
_files: dict[str, int] = {}


def prepare() -> None:
    """In the template, before the snapshot: open what a resume writes to."""
    files = [
        ("/dev/urandom", os.O_WRONLY),
        # gVisor's is there already, holding the sandbox's id: written over, never emptied
        (MACHINE_ID, os.O_WRONLY if GVISOR else os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ]
    if not GVISOR:  # gVisor's boot id is its kernel's own, in its /proc
        files.append((BOOT_ID, os.O_WRONLY))
    for path, flags in files:
        try:
            _files[path] = os.open(path, flags | os.O_CLOEXEC, 0o444)
        except OSError as e:
            log(f"resume: cannot open {path}: {e}")


def apply(msg: protocol.Resume) -> None:
    if not msg.entropy:
        # A paused sandbox waking up (not a clone): it keeps its identity and its programs'
        # random state; only its clock has to catch up with the time it slept.
        try:
            _set_clock(int(msg.time_ns))
        except (OSError, ValueError, TypeError) as e:
            log(f"resume: could not set the clock: {e}")
        return
    steps = [
        ("set the clock", lambda: _set_clock(int(msg.time_ns))),
        ("set the hostname", lambda: socket.sethostname(msg.hostname) if msg.hostname else None),
        ("write the machine id", lambda: _rewrite(MACHINE_ID, msg.machine_id + "\n")),
    ]
    if not GVISOR:  # gVisor's kernel draws every random byte from the host's: nothing to reseed
        steps.append(("reseed the kernel's random pool", lambda: _reseed_kernel(msg.entropy)))
        steps.append(("write the boot id", lambda: _rewrite(BOOT_ID, msg.boot_id + "\n")))
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
    fd = _files["/dev/urandom"]
    fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)
    fcntl.ioctl(fd, RNDRESEEDCRNG)


def _set_clock(host_ns: int) -> None:
    # A TCG guest's clock runs on the host's TSC, so it is usually right already after a
    # restore; set it only when it is not (KVM, a host clock change since the snapshot).
    if abs(time.time_ns() - host_ns) > CLOCK_SLACK_NS:
        time.clock_settime_ns(time.CLOCK_REALTIME, host_ns)


def _rewrite(path: str, text: str) -> None:
    if text.strip() and text.strip() != "0":
        if path not in _files:
            raise ValueError(f"{path} was not opened ahead")
        os.pwrite(_files[path], text.encode(), 0)
