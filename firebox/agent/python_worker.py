"""A python code context: IPython's InteractiveShell in a process of its own.

Runs as the sandbox user under the guest's python3 (with its site-packages: IPython, numpy,
pandas, matplotlib come from the image), started by the agent (launch.py) as::

    python3 -c PYTHON_BOOT <lib> <command fd> <message fd>

or forked, already loaded, from a warm python (``become``), and spoken to in the framing of
wire.py. <lib> (the agent's read-only directory) leaves sys.path, and our modules
sys.modules, once imported, so that they shadow nothing of the user's. A crash here
(os._exit, the OOM killer) ends only this process; the agent notices and starts a fresh one.

What it prints goes out through python_output.py; the shell, and what it captures of each
cell, is python_shell.py's.
"""

from __future__ import annotations

import os
import signal
import sys

from firebox.agent import wire
from firebox.agent.python_output import Outbox, Writer
from firebox.agent.python_shell import Cells, PyplotHook, ignore_sigint, make_shell, run


def warm_up(modules: list[str]) -> None:
    """Import these now, into ``sys.modules`` only (no names in the user's namespace), so the
    first cell that uses them does not pay for it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # an image without it: the user's own import will say so
            os.write(2, f"warm import of {name} failed: {e}\n".encode())


def reseed() -> None:
    """Fresh seeds from the (reseeded) kernel for the generators seeded at import time."""
    import random

    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def preload() -> None:
    """Import what ``python_shell.make_shell`` needs, once, in a zygote (zygote.py) whose
    forks become workers; an image without IPython leaves its workers to start the ordinary
    way."""
    try:
        import IPython.core.displayhook  # noqa: F401
        import IPython.core.displaypub  # noqa: F401
        import IPython.core.interactiveshell  # noqa: F401
        import traitlets.config  # noqa: F401
    except ImportError:
        pass


def preloaded() -> bool:
    return "IPython.core.interactiveshell" in sys.modules


def become(
    uid: int,
    gid: int,
    drop_groups: bool,
    cwd: str,
    env: dict[str, str],
    fds: list[int],
    open_files: int,
    argv: list[str],
) -> None:
    """Turn a fork of the agent (one with IPython imported, see ``preload``) into a worker,
    as ``python3 -c PYTHON_BOOT *argv`` started as this user would be: ``fds`` are its stdout,
    stderr and then the descriptors ``argv`` names, kept at their numbers. Never returns."""
    import resource
    import site

    from firebox.agent import children, privs

    out, err, *keep = fds
    # A fork of the zygote's fork is not dumpable (its credentials changed), which makes its
    # /proc files the host root's: dumpable as an exec'd program is, so that it (and the user,
    # as with any of their processes) may read and write them.
    privs.set_dumpable(True)
    privs.set_name("python3")  # not the agent's name it was forked with
    for sig in (signal.SIGHUP, signal.SIGQUIT):  # the agent's catches, as an exec would reset
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for fd in keep:
        os.set_inheritable(fd, True)
    # nothing of the agent's (its channel above all) stays open here
    low = 3
    for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:
        os.closerange(low, fd)
        low = fd + 1
    if open_files:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(children.CHILD_OOM_SCORE_ADJ)  # as children.spawn sets it for what it starts
    if drop_groups:
        os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # no capability survives the switch
    privs.set_dumpable(True)  # the switch cleared it again
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # what python3 -c would have put on the path: the working directory, PYTHONPATH, and the
    # user's site-packages (pip install --user)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = ["", *extra]
    site.USER_BASE = site.USER_SITE = None
    site.ENABLE_USER_SITE = True
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site):
        site.addsitedir(user_site)
    reseed()  # not the zygote's (and so every other jail's) random state
    main(argv)


def main(argv: list[str]) -> None:
    lib, cmd_fd, msg_fd = argv[0], int(argv[1]), int(argv[2])
    warm = argv[3].split(",") if len(argv) > 3 and argv[3] else []
    # Inherited through pass_fds: nothing the user starts may read our commands or forge
    # our messages by accident.
    os.set_inheritable(cmd_fd, False)
    os.set_inheritable(msg_fd, False)
    outbox = Outbox(msg_fd)
    from firebox.agent import charts

    cells = Cells(outbox, charts)
    sys.stdout = Writer(outbox, 1)  # type: ignore[assignment]
    sys.stderr = Writer(outbox, 2)  # type: ignore[assignment]
    sys.argv = [""]
    signal.signal(signal.SIGINT, ignore_sigint)
    try:
        shell = make_shell(cells)
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        if isinstance(e, ImportError):
            message = (
                f"python contexts need IPython in the sandbox image ({message}); "
                "use the 'python' template"
            )
        outbox.send({"k": wire.FATAL, "message": message})
        outbox.drain()
        os._exit(1)
    # Leave no trace of ours in the user's import system: a sandbox may well have a firebox
    # (the SDK) of its own to import.
    if lib in sys.path:
        sys.path.remove(lib)
    for name in [n for n in sys.modules if n == "firebox" or n.startswith("firebox.")]:
        del sys.modules[name]
    PyplotHook.install()
    warm_up(warm)
    outbox.send({"k": wire.READY})
    # Between cells SIGINT raises nothing (ignore_sigint), so this read is never cut short.
    with open(cmd_fd, "rb") as commands:
        for line in commands:
            request = wire.decode(line)
            if request is not None and request.get("k") == wire.RUN:
                run(shell, cells, request)
            elif request is not None and request.get("k") == wire.RESEED:
                reseed()
    outbox.drain()
    os._exit(0)  # the agent closed the commands: no atexit hooks of user code
