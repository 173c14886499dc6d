"""The sandbox's limits the agent applies itself (``protocol.Configure``, sent by the daemon
after the agent's hello on every backend): the open-files limit of everything it starts, and
in a microVM the process limit of the guest's cgroup, which holds every sandbox process (a
jail's is the host's cgroup, set by the backend before the jail starts).

And the thread pools of numeric libraries, sized to the sandbox's CPU limit (``thread_env``):
a jail's limit (and gVisor's) is a cgroup quota, which no library reads, so OpenBLAS, OpenMP
and MKL would each start a thread per host core, and OpenBLAS's busy-wait after every call
then spends the quota that the code itself needed (docs/BACKENDS.md, "Compute in a jail")."""

from __future__ import annotations

import math
import os

from firebox import protocol
from firebox.agent import children
from firebox.agent.errors import log

# The sandbox's own pids cgroup in its own kernel: made by a microVM's init; by the agent in
# gVisor's cgroupfs (``enter_gvisor_cgroup``); absent in a jail
GVISOR_CGROUP = "/sys/fs/cgroup/pids/sandbox"
PIDS_MAX = (
    f"{GVISOR_CGROUP}/pids.max"
    if os.environ.get("FIREBOX_BACKEND") == "gvisor"
    else "/sys/fs/cgroup/sandbox/pids.max"
)
_pids_max = -1


def enter_gvisor_cgroup() -> None:
    """In gVisor: the agent, and so everything it will start, in a pids cgroup of gVisor's own
    kernel (its cgroupfs, mounted by the bundle), which enforces the process limit that
    Configure sets. The host's pids cgroup counts the sentry's threads, not the sandbox's
    processes, and the sentry fails as a whole at that limit: it is set high above."""
    os.makedirs(GVISOR_CGROUP, exist_ok=True)
    with open(f"{GVISOR_CGROUP}/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))


# The sandbox's CPU limit (in CPUs), where the backend puts it in the agent's environment: a
# jail (backends/jail/bwrap.py ``agent_env``) and gVisor (backends/gvisor/bundle.py), whose
# limit is a host cgroup's quota. A microVM's vCPUs are its limit already.
CPUS_ENV = "FIREBOX_CPUS"
# What sizes the thread pools of the libraries numeric code runs on: OpenMP runtimes (libgomp,
# and what follows it: numexpr, BLIS, MKL, torch), OpenBLAS (its pthreads build), MKL.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def prepare() -> None:
    """Open the process limit's file now: in a microVM's template before the snapshot (a
    restored guest under software emulation pays for every path it looks up anew), and in
    gVisor's before its checkpoint."""
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


def thread_env() -> dict[str, str]:
    """Defaults for everything the agent starts (the environment's base: its own variables,
    a command's or a cell's, override them): thread pools no larger than the sandbox's CPU
    limit, rounded down (at least one). Nothing where the limit is as many CPUs as a process
    may run on, or more, or where the backend gives no limit: the libraries' own count (the
    CPUs they may run on) is right there."""
    try:
        cpus = float(os.environ.get(CPUS_ENV, ""))
        visible = len(os.sched_getaffinity(0))
    except (ValueError, OSError):
        return {}
    if not (cpus > 0 and math.isfinite(cpus)):
        return {}
    threads = max(1, int(cpus))
    if threads >= visible:
        return {}
    return dict.fromkeys(THREAD_VARS, str(threads))
