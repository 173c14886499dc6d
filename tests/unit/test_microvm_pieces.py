"""The microvm backend's pure parts: QEMU's command line, snapshot keys, the initramfs archive,
and the guest's seccomp policy. The VMs themselves are tested through the daemon."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from firebox.backends.microvm import initramfs, qemu, snapshot
from firebox.confine import seccomp
from firebox.images.vmboot import MODULES, BootPieces


def _vm(tmp_path: Path, **changes: object) -> qemu.VmConfig:
    vm = qemu.VmConfig(
        vmlinux=tmp_path / "vmlinux",
        initramfs=tmp_path / "initramfs.cpio",
        root_disk=tmp_path / "rootfs.ext4",
        rw_disk=tmp_path / "rw.qcow2",
        rw_format="qcow2",
        agent_socket=tmp_path / "agent.sock",
        qmp_socket=tmp_path / "qmp.sock",
        memory_mb=512,
        cpus=1,
        accel="tcg",
        mem_path="/proc/self/fd/5",
        share_ram=False,
    )
    return dataclasses.replace(vm, **changes)  # type: ignore[arg-type]


def test_the_command_line_has_no_network_a_read_only_root_and_the_seccomp_sandbox(
    tmp_path: Path,
) -> None:
    argv = qemu.argv("qemu", _vm(tmp_path))
    joined = " ".join(argv)
    assert "-nodefaults" in argv and "-netdev" not in argv and "-nic" not in argv
    assert f"file={tmp_path / 'rootfs.ext4'},format=raw,if=none,readonly=on" in joined
    sandbox = argv[argv.index("-sandbox") + 1]
    for part in ("on", "spawn=deny", "elevateprivileges=deny", "resourcecontrol=deny"):
        assert part in sandbox.split(",")
    assert "share=off" in joined and "-no-reboot" in argv


def test_a_restore_loads_no_kernel_and_waits_for_its_state(tmp_path: Path) -> None:
    restore = qemu.argv("qemu", _vm(tmp_path, incoming=True))
    assert "-kernel" not in restore and "-initrd" not in restore
    assert restore[-2:] == ["-incoming", "defer"]
    assert _vm(tmp_path, incoming=True).boot_files() == []
    boot = qemu.argv("qemu", _vm(tmp_path, share_ram=True))
    assert "-kernel" in boot and "share=on" in " ".join(boot)


def test_kvm_uses_the_host_cpu_and_tcg_a_fixed_model() -> None:
    assert qemu.accel_args("kvm") == ["-accel", "kvm", "-cpu", "host"]
    assert qemu.accel_args("tcg")[-2:] == ["-cpu", qemu.TCG_CPU]
    assert qemu.machine_identity("kvm") != qemu.machine_identity("tcg")


def _spec(tmp_path: Path, **changes: object) -> snapshot.SnapshotSpec:
    for name in ("rootfs.ext4", "vmlinux", "initramfs-abc.cpio"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"x")
    spec = snapshot.SnapshotSpec(
        template="python",
        root_disk=tmp_path / "rootfs.ext4",
        vmlinux=tmp_path / "vmlinux",
        initramfs=tmp_path / "initramfs-abc.cpio",
        qemu_identity="qemu-7.2|tcg",
        accel="tcg",
        memory_mb=512,
        cpus=1,
        disk_mb=256,
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_a_snapshot_key_changes_with_whatever_its_state_depends_on(tmp_path: Path) -> None:
    base = _spec(tmp_path).key
    assert _spec(tmp_path).key == base  # stable
    assert _spec(tmp_path, qemu_identity="qemu-8.0|tcg").key != base
    assert _spec(tmp_path, memory_mb=1024).key != base
    assert _spec(tmp_path, accel="kvm").key != base
    other = tmp_path / "initramfs-def.cpio"
    other.write_bytes(b"x")
    assert _spec(tmp_path, initramfs=other).key != base  # the agent's code changed
    disk = tmp_path / "rootfs.ext4"
    os.utime(disk, ns=(1, 1))
    assert _spec(tmp_path).key != base  # the image was rebuilt in place


def test_the_snapshot_ram_is_sealed_and_whole(tmp_path: Path) -> None:
    entry = tmp_path / "snap"
    entry.mkdir()
    with open(entry / "mem", "wb") as f:
        f.truncate(1 << 20)  # mostly hole
        f.seek(4096)
        f.write(b"template")
    fd = snapshot.load_ram(entry)
    try:
        assert os.pread(fd, 8, 4096) == b"template"
        assert os.fstat(fd).st_blocks * 512 >= 1 << 20  # holes filled: clones never grow it
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"poison", 0)
    finally:
        os.close(fd)


def test_the_initramfs_is_a_cpio_archive_with_the_agent_and_its_filter(tmp_path: Path) -> None:
    pieces_dir = tmp_path / "pieces"
    (pieces_dir / "modules").mkdir(parents=True)
    busybox = pieces_dir / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    modules = []
    for name in MODULES:
        ko = pieces_dir / "modules" / f"{name}.ko"
        ko.write_bytes(name.encode())
        modules.append(ko)
    pieces = BootPieces(pieces_dir, pieces_dir / "vmlinux", busybox, tuple(modules), "6.1")
    agent = tmp_path / "agent"
    (agent / "firebox" / "agent").mkdir(parents=True)
    (agent / "firebox" / "agent" / "main.py").write_text("# the agent")
    out = initramfs.build(pieces, agent, tmp_path / "out", 64, "numpy")
    assert out == initramfs.build(pieces, agent, tmp_path / "out", 64, "numpy")  # cached
    files = _read_newc(out.read_bytes())
    names = set(files)
    assert {"init", "guest-init", "bin/busybox", "bin/sh", "agent/seccomp.bpf"} <= names
    assert files["agent/firebox/agent/main.py"] == b"# the agent"
    assert files["agent/seccomp.bpf"] == seccomp.compiled_filter("microvm")
    assert files["bin/sh"] == b"busybox"  # a symlink to it
    assert {f"lib/modules/{m}.ko" for m in MODULES} <= names
    assert files["init"].startswith(b"#!/bin/sh")
    for script in ("init", "guest-init"):  # every @marker@ filled in
        assert re.search(rb"@\w+@", files[script]) is None, script


def _read_newc(data: bytes) -> dict[str, bytes]:
    """Entries of a newc cpio archive, as the kernel reads it (name -> content)."""
    out, at = {}, 0
    while True:
        assert data[at : at + 6] == b"070701", f"bad magic at {at}"
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        name = data[at + 110 : at + 110 + name_size - 1].decode()
        at += 110 + name_size
        at += -at % 4
        if name == "TRAILER!!!":
            return out
        out[name] = data[at : at + size]
        at += size
        at += -at % 4


def test_the_guest_filter_differs_from_the_jails_only_where_the_policy_says() -> None:
    rules = seccomp.load_policy()
    assert [r.syscalls for r in rules if "microvm" in r.not_on] == [
        ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex")
    ]
    assert seccomp.compiled_filter("microvm") != seccomp.compiled_filter("jail")
    with pytest.raises(seccomp.PolicyError):
        seccomp.parse_policy([{"syscalls": ["mount"], "reason": "r", "not_on": ["vmware"]}])
