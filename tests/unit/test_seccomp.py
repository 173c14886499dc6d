"""The seccomp deny list: policy validation and the compiled program's semantics, run by a small
classic-BPF interpreter. Its real enforcement inside bwrap is tests/integration/test_seccomp.py."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
from pathlib import Path

import pytest

from firebox.confine import seccomp
from firebox.confine.seccomp import (
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SYSCALLS_X86_64,
    PolicyError,
    compile_filter,
    compiled_filter,
    load_policy,
    parse_policy,
    write_filter_fd,
)

AUDIT_ARCH_I386 = 0x40000003
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS


# --- the policy file -------------------------------------------------------------------------


def test_every_rule_has_a_reason_and_every_name_a_number() -> None:
    raw = json.loads((Path(seccomp.__file__).parent / "seccomp_policy.json").read_text())
    assert raw, "policy is empty"
    for rule in raw:
        assert rule["reason"].strip(), rule
        for name in rule["syscalls"]:
            assert name in SYSCALLS_X86_64, name
    names = {n for r in load_policy() for n in r.syscalls}
    required = {
        "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot", "kexec_load",
        "kexec_file_load", "init_module", "finit_module", "delete_module", "bpf", "ptrace",
        "process_vm_readv", "process_vm_writev", "keyctl", "add_key", "request_key", "unshare",
        "setns", "clone", "clone3", "userfaultfd", "perf_event_open", "open_by_handle_at",
        "name_to_handle_at", "iopl", "ioperm", "acct", "quotactl", "lookup_dcookie",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "vhangup",
        "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
    }  # fmt: skip
    assert required <= names, required - names


def test_syscall_numbers_match_kernel_headers() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.exists():
        pytest.skip("linux-libc-dev headers not installed")
    defined = {
        m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+) (\d+)", header.read_text())
    }
    for name, nr in SYSCALLS_X86_64.items():
        if name in defined:  # headers older than the kernel lack the newest calls
            assert defined[name] == nr, name


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"syscalls": ["mount"]}, "expected a JSON list"),
        ([{"syscalls": ["mountt"], "reason": "x"}], "unknown syscall 'mountt'"),
        ([{"syscalls": ["mount"], "reason": " "}], "non-empty 'reason'"),
        ([{"syscalls": ["mount"], "reason": "x", "action": "kill"}], "'action' must be"),
        ([{"syscalls": [], "reason": "x"}], "non-empty list"),
        ([{"syscalls": ["mount"], "reason": "x", "extra": 1}], "unknown keys"),
        (
            [{"syscalls": ["mount"], "reason": "x"}, {"syscalls": ["mount"], "reason": "y"}],
            "already in rule 0",
        ),
        (
            [{"syscalls": ["clone"], "reason": "x", "args": [{"index": 6, "op": "in"}]}],
            "'index'",
        ),
        (
            [{"syscalls": ["clone"], "reason": "x", "args": [{"index": 0, "op": "eq"}]}],
            "'op' must be",
        ),
        (
            [
                {
                    "syscalls": ["clone"],
                    "reason": "x",
                    "args": [{"index": 0, "op": "masked_any", "mask": 1 << 32}],
                }
            ],
            "32-bit",
        ),
    ],
)
def test_invalid_policies_are_rejected_clearly(policy: object, message: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policy(policy)


def test_filter_is_cached_and_well_formed() -> None:
    prog = compiled_filter()
    assert prog is compiled_filter()
    assert len(prog) % 8 == 0 and len(prog) // 8 <= seccomp.BPF_MAXINSNS


# --- the compiled program, run by a small classic-BPF interpreter ----------------------------


def run_bpf(prog: bytes, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate a seccomp program on one struct seccomp_data; only the opcodes we emit."""
    full = (list(args) + [0] * 6)[:6]
    data = struct.pack("=iIQ6Q", nr, arch, 0, *full)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_program_semantics() -> None:
    prog = compiled_filter()
    nr = SYSCALLS_X86_64
    assert run_bpf(prog, 0) == SECCOMP_RET_ALLOW  # read
    assert run_bpf(prog, 39, arch=AUDIT_ARCH_I386) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(prog, 0x40000000 | 39) == EPERM  # x32 getpid
    assert run_bpf(prog, nr["mount"]) == EPERM
    assert run_bpf(prog, nr["clone3"]) == ENOSYS
    assert run_bpf(prog, nr["io_uring_setup"]) == ENOSYS
    # clone: fork (SIGCHLD) and pthread_create flags pass, any namespace flag is denied.
    thread_flags = 0x3D0F00
    assert run_bpf(prog, nr["clone"], (SIGCHLD,)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, nr["clone"], (thread_flags,)) == SECCOMP_RET_ALLOW
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, CLONE_NEWUSER, 0x20000000,
                 0x40000000):  # fmt: skip
        assert run_bpf(prog, nr["clone"], (flag | SIGCHLD,)) == EPERM, hex(flag)
    # personality: query and plain Linux allowed, mitigation-disabling flags not.
    assert run_bpf(prog, nr["personality"], (0xFFFFFFFF,)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, nr["personality"], (0,)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, nr["personality"], (0x0040000,)) == EPERM  # ADDR_NO_RANDOMIZE
    # socket: inet/unix/netlink allowed, vsock/alg/packet denied.
    for family in (1, 2, 10, 16):
        assert run_bpf(prog, nr["socket"], (family,)) == SECCOMP_RET_ALLOW
    for family in (17, 38, 40):
        assert run_bpf(prog, nr["socket"], (family,)) == EPERM
    # ioctl: only the terminal injection requests are denied; only the low 32 bits count.
    assert run_bpf(prog, nr["ioctl"], (0, 0x5401)) == SECCOMP_RET_ALLOW  # TCGETS
    assert run_bpf(prog, nr["ioctl"], (0, 0x5412)) == EPERM
    assert run_bpf(prog, nr["ioctl"], (0, 0x541C)) == EPERM


def test_multiple_arg_checks_must_all_hold() -> None:
    prog = compile_filter(
        parse_policy(
            [
                {
                    "syscalls": ["socket"],
                    "reason": "test",
                    "action": "enosys",
                    "args": [
                        {"index": 0, "op": "in", "values": [1, 2, 3]},
                        {"index": 1, "op": "masked_any", "mask": 0x800},
                    ],
                }
            ]
        )
    )
    sock = SYSCALLS_X86_64["socket"]
    assert run_bpf(prog, sock, (2, 0x801)) == ENOSYS
    assert run_bpf(prog, sock, (3, 0x800)) == ENOSYS
    assert run_bpf(prog, sock, (2, 0x1)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, sock, (4, 0x800)) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, sock + 1, (2, 0x800)) == SECCOMP_RET_ALLOW


def test_filter_fd_is_readable_from_start_and_sealed() -> None:
    fd = write_filter_fd()
    try:
        assert os.read(fd, 1 << 20) == compiled_filter()
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
    finally:
        os.close(fd)
