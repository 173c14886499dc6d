"""A bash code context: one interactive bash that reads cells on its stdin.

Interactive (``-i``), because only an interactive shell answers SIGINT the way a terminal user
expects: the running command list is abandoned and the shell reads its next input, with every
variable, function, ``cd`` and ``export`` kept. A non-interactive shell would either die with
its child or carry on with the next command of the cell. Prompts, history, history expansion
(``!``) and job control are switched off in ``setup``; aliases work, as in a terminal.

A cell travels as shell text on stdin (no JSON: the shell reads it itself)::

    IFS= read -r -d '' __fb_code <<'FIREBOX_<random>'
    <the cell, verbatim>
    FIREBOX_<random>
    eval "$__fb_code" </dev/null 9>&-; __fb_done $? <seq>

The quoted here-document keeps the code from any expansion; a syntax error in the cell is an
error of ``eval`` (status 2), never of our framing. ``eval`` at the top level (not in a
function) keeps ``declare`` and ``local``-free code global. Its stdin is /dev/null (a ``cat``
must not eat the next cell) and the message fd is closed for it, so nothing the cell starts
holds it. ``__fb_done`` writes wire.py's ``done`` line with the status of the cell's last
command; the agent reports a non-zero status as an error named ``ExitCode``.

After an interrupt the shell has dropped the rest of the line, ``__fb_done`` included: the
agent then sends ``recover(seq)`` (and again, should the shell have swallowed it), and drops
any second ``done`` of the same cell.
"""

from __future__ import annotations

import os
import re

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def argv(bash: str) -> list[str]:
    return [bash, "--norc", "--noprofile", "--noediting", "-i"]


def setup(msg_fd: int) -> bytes:
    """The first input: a quiet shell, the helpers, then ``ready``."""
    return f"""\
PS1= PS2= PS3= PS4= PS0=
unset PROMPT_COMMAND HISTFILE MAILCHECK
set +o history +H +m
__fb_saved=()
__fb_env() {{
  __fb_saved=()
  local n
  for n; do
    if [[ -v $n ]]; then __fb_saved+=("export $n=${{!n@Q}}"); else __fb_saved+=("unset $n"); fi
  done
}}
__fb_done() {{
  local s
  for s in "${{__fb_saved[@]}}"; do eval "$s"; done
  __fb_saved=()
  printf '{{"k":"done","seq":%d,"count":%d,"status":%d}}\\n' "$2" "$2" "$1" >&{msg_fd}
}}
printf '{{"k":"ready"}}\\n' >&{msg_fd}
""".encode()


def run(seq: int, code: str, env: dict[str, str], msg_fd: int) -> bytes:
    """A cell as shell input. ``env`` names must match NAME (checked by the caller)."""
    lines = []
    if env:
        names = " ".join(env)
        values = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
        lines.append(f"__fb_env {names}; export {values}")
    delimiter = f"FIREBOX_{os.urandom(12).hex()}"
    lines += [
        f"IFS= read -r -d '' __fb_code <<'{delimiter}'",
        code,
        delimiter,
        f'eval "$__fb_code" </dev/null {msg_fd}>&-; __fb_done $? {seq}',
    ]
    return ("\n".join(lines) + "\n").encode("utf-8", "replace")


def _quote(value: str) -> str:
    """A single-quoted shell word (shlex.quote's rule, without importing shlex at start-up)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def recover(seq: int) -> bytes:
    """Input that reports an interrupted cell (status 130, as for SIGINT)."""
    return f"__fb_done 130 {seq}\n".encode()
