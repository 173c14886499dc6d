"""Where each code context's interpreter is, and how a python worker is started.

The facts that starting a worker (launch.py), talking to one (interpreter.py) and the fork
server (forkserver.py) share, in a module that imports none of them.
"""

from __future__ import annotations

import os

from firebox.agent import children

TYPE_CHECKING = False  # not typing's: see main.py
if TYPE_CHECKING:
    from firebox.agent import users

# Each interpreter is found by path, overridable for development outside an image (a venv's
# python with IPython, say) through the agent's environment, which only the backend sets.
PYTHON = os.environ.get("FIREBOX_PYTHON", "/usr/bin/python3")
NODE = os.environ.get("FIREBOX_NODE") or next(
    (p for p in ("/usr/bin/node", "/usr/local/bin/node", "/usr/bin/nodejs") if os.path.exists(p)),
    "/usr/bin/node",
)
BASH = os.environ.get("FIREBOX_BASH", "/bin/bash")

# The python worker is imported from the agent's own directory, found from this module: in a
# sandbox /opt/firebox/lib (read-only, world-readable).
LIB = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_BOOT = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from firebox.agent.python_worker import main; main(sys.argv[1:])"
)
# Modules a python context imports before it reports ready (comma-separated; the microvm's
# template sets numpy, pandas and matplotlib, so its snapshot holds them imported).
WARM_IMPORTS = os.environ.get("FIREBOX_WARM_IMPORTS", "")
PYTHON_ENV = {"MPLBACKEND": "Agg"}  # no display in a sandbox; inherited by its children
TITLES = {
    "python": "the python interpreter",
    "javascript": "node",
    "typescript": "node",
    "bash": "bash",
}
MISSING = {
    "python": "python contexts need {path} with IPython in the sandbox image",
    "javascript": "javascript contexts need node ({path}) in the sandbox image",
    "typescript": "typescript contexts need node ({path}) in the sandbox image",
    "bash": "bash contexts need {path} in the sandbox image",
}


def python_env(user: users.User, cwd: str) -> dict[str, str]:
    """A python worker's environment (and its fork server's), however it is made."""
    return {**children.base_env(user, cwd), **PYTHON_ENV}


def python_args(cmd_r: int, msg_w: int) -> list[str]:
    """python_worker.main's arguments: where it is imported from, its two pipes, what to
    import before it says ready."""
    return [LIB, str(cmd_r), str(msg_w), WARM_IMPORTS]
