"""How a command's ``cmd`` string becomes the argv the agent starts.

``cmd`` is run by ``/bin/bash -c``, as in E2B. For a command line with nothing for a shell to
do (one program and its plain words: no quoting, expansion, redirection, pipe, list,
assignment or glob), bash would only look the program up in ``PATH`` and exec it in its own
place; starting bash for that costs a command ~0.5 ms (~1.4 ms in a jail) of its round trip.
``argv`` returns such a line's argv, with what bash would have added to the environment, so
the program runs exactly as under bash. Anything else, and any program that cannot be exec'd
(not found, not permitted, a script without ``#!``), goes through bash, which then gives its
usual answer (exit 127 and ``command not found``, say).
"""

from __future__ import annotations

import os
import re

BASH = "/bin/bash"

# Characters no shell treats specially anywhere in a word (no quote, $, `, \, ~, glob, brace,
# comment, redirection, control operator or history), and a plain space between words.
_PLAIN = re.compile(r"[A-Za-z0-9_./:,+@%=-]+(?: +[A-Za-z0-9_./:,+@%=-]+)*")

# Builtins whose program does exactly what the builtin does, given no option (``--help``,
# ``--version`` are the program's only ones). Every other builtin and keyword (cd, export,
# echo with its different options, ...) keeps bash.
_SAME_AS_PROGRAM = frozenset({"true", "false"})
# bash's `compgen -b` and `compgen -k`, but for the two above
_BASH_WORDS_TEXT = (
    ". : [ [[ ]] { } ! alias bg bind break builtin caller case cd command compgen complete "
    "compopt continue coproc declare dirs disown do done echo elif else enable esac eval exec "
    "exit export fc fg fi for function getopts hash help history if in jobs kill let local "
    "logout mapfile popd printf pushd pwd read readarray readonly return select set shift "
    "shopt source suspend test then time times trap type typeset ulimit umask unalias unset "
    "until wait while"
)
_BASH_WORDS = frozenset(_BASH_WORDS_TEXT.split())


def bash_argv(cmd: str) -> list[str]:
    return [BASH, "-c", cmd]


def direct_argv(cmd: str, env: dict[str, str]) -> list[str] | None:
    """The argv bash would exec for ``cmd``, or None if ``cmd`` needs bash. Adds to ``env``
    what bash would export to it (``_`` and ``SHLVL``)."""
    line = cmd.strip(" ")
    if not _PLAIN.fullmatch(line):
        return None
    words = line.split()
    name = words[0]
    if "=" in name:  # an assignment
        return None
    if name in _BASH_WORDS:
        return None
    if name in _SAME_AS_PROGRAM and any(w.startswith("--") for w in words[1:]):
        return None
    path = _lookup(name, env.get("PATH", ""))
    if path is None:
        return None
    env["_"] = path
    # bash counts itself a level, then uncounts the level it replaces by exec'ing the program
    env.setdefault("SHLVL", "0")
    return [path, *words[1:]]


def _lookup(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
