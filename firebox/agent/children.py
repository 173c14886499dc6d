"""Every process the agent starts: as a user, with the sandbox's limits, known to the orphan reaper.

Every process leads its own session and process group (``start_new_session``), so a signal,
a timeout or the agent's shutdown reaches everything it forked. Users are switched by
subprocess itself (``user=``/``group=``/``extra_groups=``), never by a ``preexec_fn``, which
is unsafe in a threaded program.

When the agent is the sandbox's pid 1 or a child subreaper, orphans are reparented to it, and
a reaper thread collects them without ever waiting for a pid that a Popen owns (which would
lose that process's status).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import threading
import time

from firebox.agent import privs, spawner, users
from firebox.agent.errors import Fail, from_os, log

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from typing import Any

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Held across Popen() and registration, and by the reaper before it reaps a pid: a pid is
# either known to be a Popen's (the reaper leaves it) or not a Popen's at all. process.py's
# registry of running commands is kept under it too.
spawn_lock = threading.Lock()
_tracked: set[int] = set()
_spawned = threading.Event()


def user_ids(user: users.User) -> dict[str, Any]:
    """Popen arguments that switch to ``user``; none when we already are that user."""
    if os.getuid() == os.geteuid() == user.uid and os.getgid() == os.getegid() == user.gid:
        return {}
    if os.geteuid() != 0:
        raise Fail(
            "permission_denied",
            f"the agent runs as uid {os.geteuid()} and cannot start processes as {user.name!r}",
        )
    ids: dict[str, Any] = {"user": user.uid, "group": user.gid}
    if privs.setgroups_allowed():
        ids["extra_groups"] = []
    return ids


def workdir(user: users.User, path: str | None) -> str:
    """The absolute working directory for ``path`` (default: the user's home), checked as the
    user: chdir happens in the child before it switches to them, so the check must not."""
    cwd = users.resolve(user, path) if path else user.home
    with privs.as_user(user.uid, user.gid, user.name):
        try:
            os.stat(os.path.join(cwd, "."))
        except OSError as e:
            raise from_os(e, f"working directory {cwd}", user.name) from None
    return cwd


def base_env(user: users.User, cwd: str) -> dict[str, str]:
    """The environment everything started for ``user`` begins with: nothing of the agent's,
    thread pools sized to the sandbox's CPU limit, and the egress proxy's variables once the
    sandbox has one."""
    from firebox.agent import egress, limits

    return {
        **limits.thread_env(),
        "PATH": BASE_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PWD": cwd,
        **egress.proxy_env(),
    }


# The sandbox's open-files limit (RLIMIT_NOFILE, soft and hard) for everything the agent
# starts (protocol.Configure; 0 until then); the agent keeps its own, larger one, so a
# sandbox's processes cannot starve it.
_open_files = 0


def open_files() -> int:
    return _open_files


def set_open_files(n: int) -> None:
    """From now on, and for what was started before (the default python interpreter)."""
    global _open_files
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        _open_files = n
        with spawn_lock:
            started = list(_tracked)
        for pid in started:
            _limit_files(pid)


# What the agent starts is the OOM killer's first choice at the sandbox's memory limit, never
# the agent (which in a jail cannot lower its own score: that takes a host privilege).
CHILD_OOM_SCORE_ADJ = "500"


def _limit(pid: int) -> None:
    _limit_files(pid)
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(CHILD_OOM_SCORE_ADJ)
    except OSError as e:
        log(f"cannot raise the OOM score of {pid}: {e}")


def _limit_files(pid: int) -> None:
    # Set from outside right after the start: a child exec'ing its program cannot have run
    # any of the user's code yet, and what it starts inherits the limit. The hard limit is
    # lowered too, so the process cannot raise it back.
    if _open_files:
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (_open_files, _open_files))
        except (OSError, ValueError) as e:
            log(f"cannot set the open-files limit of {pid}: {e}")


_AGENT_NICE = os.getpriority(os.PRIO_PROCESS, 0)


def spawn(argv: list[str], user: users.User, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a process as ``user`` in a session of its own, known to the orphan reaper (which
    must leave its exit status to us). Callers ``popen.wait()`` and then ``forget`` it."""
    ids = user_ids(user)
    popen["start_new_session"] = True
    with spawn_lock:
        child = None
        if ids:  # another user: vfork from that user's spawner thread (spawner.py)
            child = spawner.popen(argv, user.uid, user.gid, "extra_groups" in ids, popen)
        if child is None:
            child = subprocess.Popen(argv, **popen, **ids)
        _tracked.add(child.pid)
        _limit(child.pid)
        if _AGENT_NICE < 0:  # the agent runs ahead of user code (a microVM); its children not
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, child.pid, 0)
    _spawned.set()
    return child


def track(pid: int) -> None:
    """A child this process forked itself (no Popen): the reaper must leave it to its owner,
    which ``forget``s it once waited for."""
    with spawn_lock:
        _tracked.add(pid)


def forget(pid: int) -> None:
    """``pid`` (spawned above) was waited for: the reaper may see that pid again, reused."""
    with spawn_lock:
        _tracked.discard(pid)


def start_reaper() -> None:
    if privs.is_subreaper():
        threading.Thread(target=_reap_orphans, name="reaper", daemon=True).start()


def _reap_orphans() -> None:
    while True:
        # Cleared before looking, so a spawn between "no children" and the wait still wakes us.
        _spawned.clear()
        try:
            # WNOWAIT: look without reaping, so a Popen's child is left to its Popen.
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            _spawned.wait()
            continue
        if found is None:
            continue
        with spawn_lock:
            if found.si_pid not in _tracked:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(found.si_pid, os.WNOHANG)
                continue
        # A Popen's zombie: its waiting thread reaps it within moments; look again after.
        time.sleep(0.005)
