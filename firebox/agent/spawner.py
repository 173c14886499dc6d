"""Starting a process as another user with vfork: one spawner thread per user.

``subprocess`` switches users in the child after a full ``fork`` of the agent, because a
``vfork`` child that calls glibc's ``setuid`` would run glibc's all-threads broadcast on
memory it shares with us. A full fork of the agent costs a command ~0.7 ms: copying its page
tables, then a copy-on-write fault for each page the agent writes next.

Credentials are per thread in the kernel (glibc only makes them look per process), so a thread
of the agent can become the user for good through the raw system calls, and everything that
thread starts (``subprocess`` then uses ``vfork``, since no user switch is asked for) is born
as that user. Such a thread has given up root and its capabilities and cannot take them back:
it only ever starts processes for its one user. The agent's other threads keep theirs.

``popen`` returns None when no spawner can run as that user here (a raw call was refused);
the caller then switches users the ordinary way.
"""

from __future__ import annotations

import ctypes
import os
import queue
import subprocess
import threading

from firebox.agent.errors import log

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from typing import Any

SPAWN_DEADLINE = 30.0  # seconds a start may take (an exec reading a program off a slow disk)

# x86_64 and aarch64 numbers of the raw calls (glibc's wrappers broadcast to every thread)
_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149},
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Spawner:
    def __init__(self, uid: int, gid: int, drop_groups: bool) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], list[Any]]] = (
            queue.SimpleQueue()
        )
        self._ready = threading.Event()
        self.failed: str | None = None
        self._ids = (uid, gid, drop_groups)
        threading.Thread(target=self._run, name=f"spawner-{uid}", daemon=True).start()
        if not self._ready.wait(SPAWN_DEADLINE):
            self.failed = "the spawner thread did not start"

    def _become(self) -> None:
        uid, gid, drop_groups = self._ids
        calls = _SYSCALLS[os.uname().machine]
        steps: list[tuple[str, tuple[int | None, ...]]] = [
            ("setresgid", (gid, gid, gid)),
            ("setresuid", (uid, uid, uid)),
        ]
        if drop_groups:
            steps.insert(0, ("setgroups", (0, None)))
        for name, args in steps:
            if _libc.syscall(calls[name], *args) != 0:
                raise OSError(ctypes.get_errno(), f"{name} in the spawner thread")

    def _run(self) -> None:
        try:
            self._become()
        except (OSError, KeyError) as e:
            self.failed = str(e)
            self._ready.set()
            return
        self._ready.set()
        while True:
            argv, options, box = self._requests.get()
            try:
                box.append(subprocess.Popen(argv, **options))
            except BaseException as e:  # handed to the caller, raised there
                box.append(e)
            box[0].set()

    def popen(self, argv: list[str], options: dict[str, Any]) -> subprocess.Popen[bytes]:
        done = threading.Event()
        box: list[Any] = [done]
        self._requests.put((argv, options, box))
        if not done.wait(SPAWN_DEADLINE):
            raise OSError(f"starting {argv[0]} took over {SPAWN_DEADLINE:.0f} s")
        result = box[1]
        if isinstance(result, BaseException):
            raise result
        popen: subprocess.Popen[bytes] = result
        return popen


_spawners: dict[tuple[int, int, bool], _Spawner] = {}
_lock = threading.Lock()


def popen(
    argv: list[str], uid: int, gid: int, drop_groups: bool, options: dict[str, Any]
) -> subprocess.Popen[bytes] | None:
    """``subprocess.Popen(argv, **options)`` started as ``uid``/``gid`` (with no supplementary
    groups if ``drop_groups``), or None if this host refuses a spawner for that user."""
    key = (uid, gid, drop_groups)
    with _lock:
        spawner = _spawners.get(key)
        if spawner is None:
            spawner = _spawners[key] = _Spawner(uid, gid, drop_groups)
            if spawner.failed:
                log(f"no spawner thread for uid {uid}, forking instead: {spawner.failed}")
    if spawner.failed:
        return None
    return spawner.popen(argv, options)
