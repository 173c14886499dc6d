"""Floor: a cold QEMU boot of firebox's own guest, no snapshot: bench_microvm.cold_boots."""

from __future__ import annotations

import asyncio

from .base import Peer, Samples, Unsupported, need_root, no_rootfs_reason


class ColdQemu(Peer):
    name = "cold_qemu"
    kind = "floor"
    notes = {
        "create_to_first_command": "bench_microvm.cold_boots: QEMU started with the guest's "
        "kernel, initramfs and root disk (no snapshot, no jail, software emulation: TCG) "
        "until firebox's agent in the guest says hello on its virtio-serial port: the agent is "
        "ready for a first command, which itself is not on this clock",
        "create_to_first_python": "none: cold_boots stops at the agent's hello",
        "command_round_trip": "none: the boot floor has no live sandbox",
        "python_round_trip": "none: the boot floor has no live sandbox",
        "file_throughput": "none",
        "idle_memory_mb": "none: cold_boots kills each VM at its hello",
    }

    def available(self) -> str | None:
        if reason := need_root() or no_rootfs_reason():
            return reason
        from firebox.backends.microvm import qemu

        if qemu.qemu_binary() is None:
            return f"{qemu.QEMU} is not installed"
        return None

    def create_to_first_command(self, runs: int) -> Samples:
        from bench_microvm import cold_boots

        return asyncio.run(cold_boots(runs))

    def create_to_first_python(self, runs: int) -> Samples:
        return Unsupported("the cold boot floor stops at the agent's hello")

    def command_round_trip(self, runs: int) -> Samples:
        return Unsupported("the cold boot floor has no live sandbox")

    def python_round_trip(self, runs: int) -> Samples:
        return Unsupported("the cold boot floor has no live sandbox")

    def idle_memory_mb(self, n: int) -> Samples:
        return Unsupported("bench_microvm.cold_boots kills each VM at its hello")
