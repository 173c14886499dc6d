"""Which ``runsc`` to use, how old it is, and which of its platforms works here.

``runsc`` is gVisor's OCI runtime. The binary is taken from ``FIREBOX_RUNSC`` when set (a
newer release unpacked somewhere), else the newest of those on the host's PATH, in the usual
places and where scripts/fetch-runsc puts the release's backported one (Debian 12's own is
from 2022: a newer one wins). A platform is
how the sentry catches its processes' system calls: ``systrap`` (newer releases' default),
``kvm`` (needs working KVM) or ``ptrace`` (works everywhere, slowest at system calls). The
verdict comes from running one, never from looking: /dev/kvm may exist and hang a guest
(docs/BACKENDS.md), and an old runsc lacks systrap. It is cached per runsc, host kernel and
/dev/kvm, as the microVM's accelerator is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

from firebox.images.cache import image_root

ENV = "FIREBOX_RUNSC"
PLACES = ("/usr/local/bin/runsc", "/usr/bin/runsc", "/usr/sbin/runsc")
FETCHED = "bin/runsc"  # scripts/fetch-runsc's, beside the images (/var/lib/firebox)
# fastest first: systrap catches system calls with seccomp's SIGSYS and shared memory; kvm
# runs the sentry as a guest (fast with real KVM only); ptrace pays two context switches a call
PLATFORMS = ("systrap", "kvm", "ptrace")
PROBE_DEADLINE = 8.0  # `runsc do /bin/true` takes ~0.2 s; the kvm platform hangs where KVM does
CACHE = "runsc.json"
# Releases before this lack systrap (system calls cost more under ptrace) and reject statx
# and fstatat with AT_NO_AUTOMOUNT, which coreutils passes: `ls -l` and `stat` fail inside.
# `firebox doctor` says so.
RECOMMENDED = 20230601


@dataclass(frozen=True)
class Runsc:
    path: str
    version: str  # as it prints it: "release-20240513.0", or Debian's "0.0~20221219.0"
    date: int | None  # the release's date as YYYYMMDD, when the version carries one

    @property
    def old(self) -> bool:
        return self.date is not None and self.date < RECOMMENDED

    def advice(self) -> str:
        """'' or one sentence on what a newer runsc would give."""
        if not self.old:
            return ""
        return (
            f"runsc {self.version} is old: no systrap platform (system calls cost more) and "
            "`ls -l`/`stat` fail inside its sandboxes (statx with AT_NO_AUTOMOUNT); run "
            f"scripts/fetch-runsc (the release's backports) or point {ENV} at a newer runsc"
        )


def version_of(path: str) -> Runsc | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"runsc version (\S+)", out)
    if m is None:
        return None
    version = m.group(1)
    date = re.search(r"(20\d{6})", version)
    return Runsc(path, version, int(date.group(1)) if date else None)


def find() -> Runsc | None:
    """The runsc to use (the module's docstring says which), or None if there is none."""
    configured = os.environ.get(ENV)
    if configured:
        return version_of(configured)
    found: dict[str, Runsc] = {}
    fetched = str(image_root().parent / FETCHED)
    for candidate in (shutil.which("runsc"), *PLACES, fetched):
        if candidate and os.access(candidate, os.X_OK):
            real = os.path.realpath(candidate)
            if real not in found and (got := version_of(real)) is not None:
                found[real] = got
    if not found:
        return None
    return max(found.values(), key=lambda r: r.date or 0)


@dataclass(frozen=True)
class Platform:
    name: str | None  # the fastest that ran a sandbox here, or None
    tried: dict[str, str]  # platform -> '' if it worked, else why not


def _supported(runsc: Runsc) -> list[str]:
    """Platforms this runsc knows (its `flags` text lists them)."""
    try:
        text = subprocess.run(
            [runsc.path, "flags"], capture_output=True, text=True, timeout=10, check=False
        ).stderr
    except (OSError, subprocess.SubprocessError):
        text = ""
    line = next((x for x in text.splitlines() if "which platform to use" in x), "")
    return [p for p in PLATFORMS if p in line] or ["ptrace"]


def _try(runsc: Runsc, platform: str) -> str:
    """'' if a sandbox of ``platform`` ran /bin/true here within the deadline, else why not."""
    with tempfile.TemporaryDirectory(prefix="firebox-runsc-probe-") as root:
        argv = [
            runsc.path,
            "--root",
            root,
            "--network=none",
            f"--platform={platform}",
            "do",
            "/bin/true",
        ]
        try:
            # `do` runs as root with the host's / (read-only overlay): a probe only
            done = subprocess.run(
                argv, capture_output=True, timeout=PROBE_DEADLINE, check=False, cwd="/"
            )
        except subprocess.TimeoutExpired:
            return f"no answer within {PROBE_DEADLINE:.0f} s"
        except OSError as e:
            return str(e)
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            return (said[-1] if said else f"exit status {done.returncode}")[:300]
        return ""


def _cache_key(runsc: Runsc) -> str:
    kvm = "absent"
    if os.path.exists("/dev/kvm"):
        st = os.stat("/dev/kvm")
        kvm = f"{st.st_rdev}|{os.access('/dev/kvm', os.R_OK | os.W_OK)}"
    st = os.stat(runsc.path)
    parts = [runsc.path, runsc.version, str(st.st_mtime_ns), os.uname().release, kvm]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def platform(runsc: Runsc) -> Platform:
    """The fastest platform that works here, probed once per runsc, kernel and /dev/kvm."""
    cache = image_root() / "probes" / CACHE
    key = _cache_key(runsc)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return Platform(saved["name"], dict(saved["tried"]))
    tried: dict[str, str] = {}
    chosen = None
    for name in _supported(runsc):
        if name == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            tried[name] = "no usable /dev/kvm"
            continue
        tried[name] = _try(runsc, name)
        if not tried[name]:
            chosen = name
            break
    verdict = Platform(chosen, tried)
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{CACHE}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, **asdict(verdict)}))
        tmp.replace(cache)
    return verdict
