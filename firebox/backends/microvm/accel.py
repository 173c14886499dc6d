"""Which accelerator QEMU can use here, decided by booting, never by looking.

``/dev/kvm`` existing proves nothing: on a host that is itself a VM, KVM may be a software
hypervisor that fails on a real guest kernel (see docs/BACKENDS.md). So the guest kernel is
booted with ``-accel kvm`` to a marker the initramfs prints, within a deadline; if that fails,
software emulation (TCG) is probed the same way. The verdict is cached, keyed by everything it
depends on (QEMU, the kernel, the host kernel, /dev/kvm), so it costs one probe per change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from firebox.backends.microvm import qemu
from firebox.backends.microvm.initramfs import PROBE_MARKER
from firebox.images.cache import image_root
from firebox.images.vmboot import BootPieces

KVM_DEADLINE = 10.0  # a KVM guest reaches its initramfs in well under a second
TCG_DEADLINE = 60.0
CACHE = "accel.json"


@dataclass(frozen=True)
class Verdict:
    accel: str | None  # "kvm", "tcg", or None when neither boots
    reason: str


def _cache_key(binary: str, pieces: BootPieces) -> str:
    kvm = "absent"
    if os.path.exists("/dev/kvm"):
        st = os.stat("/dev/kvm")
        kvm = f"{st.st_rdev}|{os.access('/dev/kvm', os.R_OK | os.W_OK)}"
    parts = [qemu.qemu_identity(binary), pieces.key, os.uname().release, kvm]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def probe_boot(binary: str, pieces: BootPieces, initrd: Path, accel: str, deadline: float) -> str:
    """'' when the guest reached its initramfs with ``accel``, else why not."""
    vm = qemu.VmConfig(
        vmlinux=pieces.vmlinux,
        initramfs=initrd,
        root_disk=Path("/dev/null"),
        rw_disk=Path("/dev/null"),
        rw_format="raw",
        agent_socket=Path("/dev/null"),
        qmp_socket=Path("/dev/null"),
        memory_mb=128,
        cpus=1,
        accel=accel,
        mem_path="/dev/shm",  # a directory: QEMU makes (and unlinks) a file of its own there
        share_ram=False,
        probe=True,
    )
    try:
        out = subprocess.run(
            qemu.argv(binary, vm), capture_output=True, timeout=deadline, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return f"the probe boot did not finish within {deadline:.0f} s"
    text = out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")
    if PROBE_MARKER in text:
        return ""
    last = [line for line in text.strip().splitlines() if line.strip()][:3]
    return f"the probe boot failed (exit {out.returncode}): {' | '.join(last)[:300]}"


def detect(binary: str, pieces: BootPieces, initrd: Path) -> Verdict:
    cache = image_root() / CACHE
    key = _cache_key(binary, pieces)
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Verdict(cached.get("accel"), str(cached.get("reason", "")))
    except (OSError, ValueError, AttributeError):
        pass
    verdict = _decide(binary, pieces, initrd)
    with contextlib.suppress(OSError):  # uncached, it is probed again next time
        cache.write_text(json.dumps({"key": key, **asdict(verdict)}) + "\n")
    return verdict


def _decide(binary: str, pieces: BootPieces, initrd: Path) -> Verdict:
    if not os.path.exists("/dev/kvm"):
        kvm_why = "no /dev/kvm"
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        kvm_why = "/dev/kvm is not accessible"
    else:
        kvm_why = probe_boot(binary, pieces, initrd, "kvm", KVM_DEADLINE)
        if not kvm_why:
            return Verdict("kvm", "hardware virtualization: a KVM probe boot succeeded")
        kvm_why = f"KVM: {kvm_why}"
    tcg_why = probe_boot(binary, pieces, initrd, "tcg", TCG_DEADLINE)
    if not tcg_why:
        return Verdict("tcg", f"software emulation, since KVM cannot boot a guest ({kvm_why})")
    return Verdict(None, f"{kvm_why}; TCG: {tcg_why}")
