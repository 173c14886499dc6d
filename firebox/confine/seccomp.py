"""The sandboxes' seccomp deny list, compiled to a classic BPF program: for ``bwrap --seccomp
FD`` around a jail, and for the agent to load inside a microVM (its own kernel filters there).

The policy is data (``seccomp_policy.json``): rules naming syscalls, the errno to return and
why. Everything not named is allowed; this is a deny list on top of bwrap's namespaces, dropped
capabilities and no_new_privs, not a whitelist.

Usage::

    fd = write_filter_fd()
    try:
        subprocess.Popen(["bwrap", ..., "--seccomp", str(fd), "--", ...], pass_fds=[fd])
    finally:
        os.close(fd)
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) for every name the policy may
# use. Numbers are ABI and never change; a name missing here is a policy error, not a guess.
SYSCALLS_X86_64: dict[str, int] = {
    "ioctl": 16,
    "mknod": 133,
    "mknodat": 259,
    "socket": 41,
    "clone": 56,
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "personality": 135,
    "vhangup": 153,
    "pivot_root": 155,
    "adjtimex": 159,
    "chroot": 161,
    "acct": 163,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "pidfd_getfd": 438,
    "process_madvise": 440,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "open_tree_attr": 467,  # Linux 6.15+; on older kernels the filter just never matches it
}

# Constants from <linux/audit.h>, <linux/seccomp.h> and <linux/filter.h>.
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = *(u32 *)(seccomp_data + k)
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: jump if A & k
BPF_RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARGS = 16

# struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; } in native byte order (x86_64: little).
_INSN = struct.Struct("=HBBI")
BPF_MAXINSNS = 4096  # kernel limit per filter program

ACTIONS: dict[str, int] = {"errno": errno.EPERM, "enosys": errno.ENOSYS}

Op = Literal["masked_any", "in", "not_in"]
_OPS: tuple[str, ...] = ("masked_any", "in", "not_in")
_U32 = 0xFFFFFFFF


class PolicyError(ValueError):
    """The policy file is malformed; the message names the rule and the fix."""


@dataclass(frozen=True)
class ArgCheck:
    """A condition on the low 32 bits of one syscall argument.

    ``masked_any``: arg & mask != 0.  ``in``: arg is one of values.  ``not_in``: it is none of
    them. Only the low 32 bits are seen, which is exact for every argument we check (clone
    flags, personality, socket family, ioctl request are all 32-bit in the kernel).
    """

    index: int
    op: Op
    mask: int = 0
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class Rule:
    """Deny ``syscalls`` (when every arg check holds) with ``errno``; ``reason`` says why."""

    syscalls: tuple[str, ...]
    errno: int
    reason: str
    args: tuple[ArgCheck, ...] = ()
    # backends whose guests do not get this rule ("microvm": the guest kernel is its own)
    not_on: tuple[str, ...] = ()


Policy = tuple[Rule, ...]

POLICY_RESOURCE = "seccomp_policy.json"


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file; the default is the packaged ``seccomp_policy.json``."""
    if path is None:
        text = resources.files(__package__).joinpath(POLICY_RESOURCE).read_text()
        where = POLICY_RESOURCE
    else:
        text = Path(path).read_text()
        where = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{where}: not valid JSON: {e}") from e
    return parse_policy(data, where)


def parse_policy(data: object, where: str = "policy") -> Policy:
    """Validate decoded JSON into rules. Raises PolicyError naming the offending rule."""
    if not isinstance(data, list):
        raise PolicyError(f"{where}: expected a JSON list of rules, got {type(data).__name__}")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(data):
        rule = _parse_rule(raw, f"{where}: rule {i}")
        for name in rule.syscalls:
            # One rule per syscall keeps the compiled program simple (a conditional rule may
            # return ALLOW for its syscall) and the policy unambiguous to read.
            if name in seen:
                raise PolicyError(
                    f"{where}: rule {i}: {name!r} is already in rule {seen[name]}; "
                    "merge the two rules"
                )
            seen[name] = i
        rules.append(rule)
    return tuple(rules)


def _parse_rule(raw: object, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = set(raw) - {"syscalls", "action", "reason", "args", "not_on"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    names = raw.get("syscalls")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise PolicyError(f"{where}: 'syscalls' must be a non-empty list of syscall names")
    for name in names:
        if name not in SYSCALLS_X86_64:
            raise PolicyError(
                f"{where}: unknown syscall {name!r}; check the spelling, or add its x86_64 "
                "number to SYSCALLS_X86_64 in firebox/confine/seccomp.py"
            )
    action = raw.get("action", "errno")
    if action not in ACTIONS:
        raise PolicyError(f"{where}: 'action' must be one of {sorted(ACTIONS)}, got {action!r}")
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise PolicyError(f"{where}: every rule needs a non-empty 'reason' saying why it is denied")
    raw_args = raw.get("args", [])
    if not isinstance(raw_args, list):
        raise PolicyError(f"{where}: 'args' must be a list")
    args = tuple(_parse_arg(a, f"{where}: args[{j}]") for j, a in enumerate(raw_args))
    not_on = raw.get("not_on", [])
    if not isinstance(not_on, list) or not all(b in BACKENDS for b in not_on):
        raise PolicyError(f"{where}: 'not_on' must list backends among {sorted(BACKENDS)}")
    return Rule(tuple(names), ACTIONS[action], reason.strip(), args, tuple(not_on))


def _is_u32(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U32


def _parse_arg(raw: object, where: str) -> ArgCheck:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected an object")
    index = raw.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 5:
        raise PolicyError(f"{where}: 'index' must be an argument number 0..5")
    op = raw.get("op")
    if op == "masked_any":
        mask = raw.get("mask")
        if not _is_u32(mask) or mask == 0:
            raise PolicyError(f"{where}: 'mask' must be a non-zero 32-bit unsigned integer")
        assert isinstance(mask, int)
        return ArgCheck(index, "masked_any", mask=mask)
    if op in ("in", "not_in"):
        values = raw.get("values")
        if not isinstance(values, list) or not values or not all(_is_u32(v) for v in values):
            raise PolicyError(f"{where}: 'values' must be a non-empty list of 32-bit integers")
        return ArgCheck(index, "in" if op == "in" else "not_in", values=tuple(values))
    raise PolicyError(f"{where}: 'op' must be one of {list(_OPS)}, got {op!r}")


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    # Conditional jumps are relative and only 8 bits wide; every jump we emit stays inside one
    # syscall's small block, so this only fires on an absurdly long 'values' list.
    if not (0 <= jt <= 255 and 0 <= jf <= 255):
        raise PolicyError(f"BPF jump offset out of range (jt={jt}, jf={jf}); split the rule")
    return _INSN.pack(code, jt, jf, k)


def _ret(value: int) -> bytes:
    return _insn(BPF_RET_K, value)


Label = str | None  # "allow", "next" (end of the current check) or None (next instruction)


def _check_insns(check: ArgCheck) -> list[tuple[int, int, Label, Label]]:
    """One arg check as (code, k, jt, jf) with symbolic targets; falls through when it holds."""
    insns: list[tuple[int, int, Label, Label]] = [
        (BPF_LD_W_ABS, OFFSET_ARGS + 8 * check.index, None, None)
    ]
    if check.op == "masked_any":
        insns.append((BPF_JSET_K, check.mask, None, "allow"))
    elif check.op == "in":
        insns += [(BPF_JEQ_K, v, "next", None) for v in check.values[:-1]]
        insns.append((BPF_JEQ_K, check.values[-1], None, "allow"))
    else:  # not_in: matching any listed value means the call is fine
        insns += [(BPF_JEQ_K, v, "allow", None) for v in check.values]
    return insns


def _syscall_block(nr: int, rule: Rule) -> list[bytes]:
    """Instructions for one syscall. Entered with A = nr; when the syscall is not ``nr`` it
    falls through to the next block with A unchanged."""
    deny = _ret(SECCOMP_RET_ERRNO | rule.errno)
    if not rule.args:
        return [_insn(BPF_JEQ_K, nr, 0, 1), deny]

    # Body: the checks in a row, then DENY, then ALLOW. A failing check jumps to ALLOW (no
    # other rule can apply: each syscall is in one rule), so A needn't be reloaded with nr.
    checks = [_check_insns(c) for c in rule.args]
    body_len = sum(len(c) for c in checks)
    targets = {"allow": body_len + 1}
    body: list[bytes] = []
    pos = 0
    for check in checks:
        targets["next"] = pos + len(check)
        for code, k, jt, jf in check:
            jt_off = targets[jt] - pos - 1 if jt else 0
            jf_off = targets[jf] - pos - 1 if jf else 0
            body.append(_insn(code, k, jt_off, jf_off))
            pos += 1
    return [_insn(BPF_JEQ_K, nr, 0, body_len + 2), *body, deny, _ret(SECCOMP_RET_ALLOW)]


def compile_filter(policy: Sequence[Rule]) -> bytes:
    """Compile rules to a classic BPF seccomp program (struct sock_filter[]) for x86_64.

    Layout: arch check (anything but x86_64, e.g. int 0x80 i386 calls, is killed), x32 check,
    then one short block per denied syscall, then ALLOW. The kernel's seccomp action cache
    still marks unconditionally allowed syscalls as allow-always, so the linear scan costs
    nothing on hot syscalls.
    """
    prog: list[bytes] = [
        _insn(BPF_LD_W_ABS, OFFSET_ARCH),
        _insn(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, OFFSET_NR),
        # x32 syscalls arrive with arch x86_64 and nr | 0x40000000; they would dodge every
        # number below, so refuse them all.
        _insn(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        _ret(SECCOMP_RET_ERRNO | errno.EPERM),
    ]
    seen: set[str] = set()
    for rule in policy:
        for name in rule.syscalls:
            if name in seen:  # parse_policy refuses this too; hand-built rules may not
                raise PolicyError(f"{name!r} is in two rules; merge them")
            seen.add(name)
            prog.extend(_syscall_block(SYSCALLS_X86_64[name], rule))
    prog.append(_ret(SECCOMP_RET_ALLOW))
    if len(prog) > BPF_MAXINSNS:
        raise PolicyError(f"filter has {len(prog)} instructions; the kernel allows 4096")
    return b"".join(prog)


BACKENDS = ("jail", "microvm", "gvisor")


@functools.cache
def compiled_filter(backend: str = "jail") -> bytes:
    """The packaged policy as it applies to ``backend``'s sandboxes, compiled once per
    process. The jail's bwrap loads it; in a microVM or gVisor the agent loads it on itself
    before it starts anything, so every process of the sandbox runs under it too (gVisor's
    kernel enforces it as Linux's does: what it refuses never reaches the sentry's code)."""
    return compile_filter([r for r in load_policy() if backend not in r.not_on])


def write_filter_fd() -> int:
    """Return a new fd, positioned at 0, holding the compiled filter for ``bwrap --seccomp``.

    bwrap reads the fd to EOF, so every bwrap needs its own fd: pass it with ``pass_fds`` and
    close it after the spawn. It is a sealed memfd: close-on-exec outside ``pass_fds``, and
    nothing holding it can change the program.
    """
    if platform.machine() != "x86_64":
        raise RuntimeError(
            f"the jail's seccomp filter is built for x86_64 only, this host is "
            f"{platform.machine()}; add that architecture's syscall table to seccomp.py"
        )
    data = compiled_filter()
    fd = os.memfd_create("firebox-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
        )
    except BaseException:
        os.close(fd)
        raise
    return fd
