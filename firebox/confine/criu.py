"""Whether CRIU can checkpoint a jail on this host, decided by asking ``criu check``.

A jail can be paused two ways: a CRIU checkpoint to disk (survives a host reboot, frees the
memory) or freezing it in its cgroup (memory kept, lost at a reboot). Whether CRIU works
depends on the kernel as much as on CRIU: Debian 12's criu 3.17.1 fails on newer kernels
before checking anything ("vdso: Unexpected rt vDSO area bounds"). So it is probed, every
subprocess under a deadline, and the verdict cached like the KVM probe's (backends/microvm/
accel.py): keyed by criu's version, its binary and the host kernel, so a change re-probes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from firebox.images.cache import content_key, image_root

VERSION_TIMEOUT = 10.0
CHECK_TIMEOUT = 30.0  # for the whole sequence of checks; each takes milliseconds when it works
CACHE = ("probes", "criu.json")
FALLBACK = "jails are paused by freezing them in their cgroup: memory kept, lost at a host reboot"
# What a checkpoint of a jail (bwrap: new user, pid, mount, net, ipc, uts and cgroup
# namespaces, a seccomp filter) needs beyond the plain check, as CRIU 3.17 names it:
# userns (dumping and restoring the user namespace: PR_SET_MM_MAP), ns_pid (NSpid in
# /proc/PID/status, to name tasks of a nested pid namespace), cgroupns, sk_ns (SIOCGSKNS:
# which network namespace a socket belongs to), seccomp_suspend (the parasite CRIU injects
# must not be stopped by the jail's deny list) and seccomp_filters (reading that filter to
# restore it). The mount namespace has no check of its own: CRIU falls back to its older
# mount engine where move_mount_set_group is missing.
FEATURES = ("userns", "ns_pid", "cgroupns", "sk_ns", "seccomp_suspend", "seccomp_filters")


@dataclass(frozen=True)
class CriuVerdict:
    usable: bool
    reason: str
    version: str | None


_memo: tuple[str, CriuVerdict] | None = None  # (the binary's and kernel's identity, verdict)


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    """Exit status and output (stderr merged); a timeout kills criu's whole process group
    (``check`` forks children that would otherwise hold the pipe open) and is raised."""
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as proc:
        try:
            out, _ = proc.communicate(timeout=max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return proc.returncode, out.decode(errors="replace")


def _cause(text: str) -> str:
    """The line that says why: criu's first error (later ones are its consequences, e.g.
    "Could not initialize kernel features detection"), else its last line of output."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [
        re.sub(r"^Error \([^)]*\):\s*", "", line) for line in lines if line.startswith("Error")
    ]
    cause = errors[0] if errors else lines[-1] if lines else "no output"
    return cause[:200]


def _version(binary: str) -> str | None:
    try:
        _, out = _run([binary, "--version"], VERSION_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"Version:\s*(\S+)", out)
    return found.group(1) if found else None


def _no(why: str, version: str | None) -> CriuVerdict:
    return CriuVerdict(False, f"{why}; {FALLBACK}", version)


def _decide(binary: str, version: str | None) -> tuple[CriuVerdict, bool]:
    """The verdict, and whether it is settled (worth caching: not a timeout or a lack of root)."""
    if os.geteuid() != 0:
        return _no("criu check needs root", version), False
    deadline = time.monotonic() + CHECK_TIMEOUT
    for feature in (None, *FEATURES):
        argv = [binary, "check", *(("--feature", feature) if feature else ())]
        try:
            code, out = _run(argv, deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            return _no(
                f"`{' '.join(argv[1:])}` did not finish within {CHECK_TIMEOUT:g} s", version
            ), False
        except OSError as e:
            return _no(f"criu could not run: {e}", version), False
        if code != 0:
            failed = "criu check" if feature is None else f"criu check --feature {feature}"
            return _no(f"{failed} failed here: {_cause(out)}", version), True
    return CriuVerdict(True, f"criu check passes, with {', '.join(FEATURES)}", version), True


def probe() -> CriuVerdict:
    """Ask criu now, uncached."""
    binary = shutil.which("criu")
    if binary is None:
        return _no("no criu on PATH (`apt-get install criu` would enable the check)", None)
    return _decide(binary, _version(binary))[0]


def verdict() -> CriuVerdict:
    """:func:`probe`, cached in this process and on disk for as long as criu and the kernel
    stay the same. No criu at all is not cached: installing it takes effect at once."""
    global _memo
    binary = shutil.which("criu")
    if binary is None:
        return probe()
    st = os.stat(binary)
    identity = f"{binary}|{st.st_size}|{st.st_mtime_ns}|{os.uname().release}"
    if _memo is not None and _memo[0] == identity:
        return _memo[1]
    version = _version(binary)
    key = content_key([identity, version])
    cache = image_root().joinpath(*CACHE)
    try:
        cached = json.loads(cache.read_text())
        if cached["key"] == key:
            found = CriuVerdict(bool(cached["usable"]), str(cached["reason"]), cached["version"])
            _memo = (identity, found)
            return found
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found, settled = _decide(binary, version)
    if settled:
        _memo = (identity, found)
        _store(cache, {"key": key, **asdict(found)})
    return found


def _store(cache: Path, record: dict[str, object]) -> None:
    """Write atomically (a reader sees the old record or the new one); on failure nothing is
    left behind and the next run probes again."""
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # as readable as a plain write: `firebox doctor` need not be root
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record) + "\n")
            os.replace(tmp, cache)
        except OSError:
            os.unlink(tmp)
            raise


def pause_line(v: CriuVerdict) -> str:
    """How a jail is paused here, for ``firebox doctor``: one short line."""
    if v.usable:
        # checkpointing jails with CRIU is not built yet: a pause freezes them all the same
        return f"freeze in the cgroup (criu {v.version} passes its checks here)"
    return f"freeze in the cgroup — {v.reason.removesuffix(f'; {FALLBACK}')}"
