"""Starting a sandbox's host process as its uid, born inside its cgroup.

A gate process (``sh`` waiting on a pipe) is moved into the cgroup first, then execs
``setpriv`` (dropping to the uid; cheaper than Popen's ``user=``, which forces a full fork of
the large daemon) and the program, all under one pid: nothing of the sandbox ever runs outside
its cgroup.

runsc (the gVisor backend) is gated the same way but stays root: it drops to the sandbox's
host uid range itself (its gofer) and to nobody (its sentry), and needs root to set them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Sequence

from firebox.confine import cgroups

SETPRIV = "/usr/bin/setpriv"  # util-linux, essential on Debian
GATE = 'read -r _ && exec "$@" </dev/null'
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


async def spawn_gated(
    argv: Sequence[str],
    cgroup: cgroups.CgroupSet,
    host_id: int | None,
    pass_fds: Sequence[int] = (),
    stdout: int = subprocess.DEVNULL,
    stderr: int = subprocess.PIPE,
    extra_groups: Sequence[int] = (),
    stdin: int | None = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` as ``host_id`` (None: as root, for runsc) in ``cgroup``, in a session of
    its own, with an empty environment (what it keeps would be readable in its
    /proc/<pid>/environ), and ``stdin`` (one of ``pass_fds``) as its stdin, else /dev/null."""
    drop: list[str] = []
    if host_id is not None:
        groups = (
            [f"--groups={','.join(str(g) for g in extra_groups)}"]
            if extra_groups
            else ["--clear-groups"]
        )
        drop = [
            SETPRIV,
            f"--reuid={host_id}",
            f"--regid={host_id}",
            *groups,
            # no capability can ever come back in the host's namespaces, even through a
            # setuid or file-capability binary (bwrap gets its own full set in the user
            # namespace it makes: a new namespace's set does not come from this one)
            "--bounding-set=-all",
            "--",
        ]
    # The gate reads "go" on its own stdin; the program gets ``stdin`` in its place. bash for
    # that: dash reads only one-digit descriptors in a redirection.
    shell, gate = "/bin/sh", GATE
    if stdin is not None:
        shell, gate = "/bin/bash", f'read -r _ && exec "$@" <&{int(stdin)} {int(stdin)}<&-'
    proc = await asyncio.create_subprocess_exec(
        shell,
        "-c",
        gate,
        "gate",
        *drop,
        *argv,
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        env=CLEAN_ENV,
        # from /: sh exports its working directory as PWD, which would show the daemon's
        # in the environ of bwrap's processes, readable by root inside the sandbox
        cwd="/",
        start_new_session=True,
    )
    try:
        # Moving a process between cgroups waits for an RCU grace period on cgroup v1
        # (10-20 ms here): off the event loop.
        await asyncio.to_thread(cgroup.add, proc.pid)
    except BaseException:
        proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc
