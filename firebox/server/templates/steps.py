"""A template's steps as the builder runs them: the state they carry (ENV, WORKDIR, USER), the
cache key of each layer, and the placement of a COPY's files.

The wire shape (E2B's: ``{"type", "args", "force", "filesHash"}``) is firebox/recipes's; this
module only gives each step its meaning here:

- steps run as ``user`` in ``/home/user`` until USER or WORKDIR say otherwise (E2B's rule;
  a Dockerfile's own steps begin with ``USER root`` and ``WORKDIR /``);
- ``ENV k v …`` and ``USER name`` change what later steps run with (and what the template's
  sandboxes start with); they make no layer of their own but enter every later key. ENV
  values are double-quoted shell words, exported in order before each later command, so
  ``$PATH`` means what it meant at that step; the template keeps their expanded values;
- ``WORKDIR path`` makes the directory (a layer) and runs later steps in it;
- ``RUN cmd [user]`` runs ``cmd`` with bash as ``user`` (the current USER by default);
- ``COPY src dest [owner] [mode]`` places the files uploaded for its ``filesHash``: the
  archive is unpacked inside the build sandbox (never on the host) and copied by a script
  run there as root.
"""

from __future__ import annotations

import posixpath
import secrets
import shlex
from dataclasses import dataclass, replace
from typing import Any

from firebox.agent_client.start import as_user
from firebox.images.cache import content_key
from firebox.settings import StartConfig

COPY_ARCHIVE = "/tmp/.firebox-copy.tgz"  # inside the build sandbox: removed by the same step
_STAGING = "/tmp/.firebox-copy"


@dataclass(frozen=True)
class State:
    """What a step runs with."""

    exports: tuple[tuple[str, str], ...] = ()  # ENV assignments in order, values unexpanded
    workdir: str = "/home/user"
    user: str = "user"

    def after(self, step: dict[str, Any]) -> State:
        kind, args = step["type"], step["args"]
        if kind == "ENV":
            pairs = tuple(zip(args[0::2], args[1::2], strict=True))
            return replace(self, exports=self.exports + pairs)
        if kind == "USER":
            return replace(self, user=args[0])
        if kind == "WORKDIR":
            return replace(self, workdir=self.path(args[0]))
        return self

    def path(self, p: str) -> str:
        """``p`` inside the sandbox, a relative one taken from the working directory."""
        return posixpath.normpath(posixpath.join(self.workdir, p))

    def prelude(self) -> str:
        """The shell lines that set the ENV so far, for a command to run after."""
        return "".join(f'export {name}="{value}"\n' for name, value in self.exports)

    def names(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.exports))


def quoted(value: str) -> str:
    """``value`` as the double-quoted shell word an ENV value is (its literal form)."""
    return "".join("\\" + c if c in '\\"$`' else c for c in value)


def from_envs(envs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Expanded values (a template's) as the exports a template built on it starts with."""
    return tuple((name, quoted(value)) for name, value in envs.items())


def print_envs(state: State) -> tuple[str, str]:
    """A command printing the ENV's expanded values, NUL-separated (``parse_envs``), and the
    agent's user to run it as: the template's user, whose ``$HOME`` its sandboxes see."""
    names = state.names()
    cmd = state.prelude() + "printf '%s\\0' " + " ".join(f'"${{{n}}}"' for n in names)
    return as_user(cmd, state.user)


def parse_envs(state: State, output: bytes) -> dict[str, str]:
    values = output.decode("utf-8", "replace").split("\0")
    return dict(zip(state.names(), values, strict=False))


def makes_layer(step: dict[str, Any]) -> bool:
    return step["type"] in ("RUN", "COPY", "WORKDIR")


def layer_key(owner: str, parent: str, step: dict[str, Any], state: State, forced: bool) -> str:
    """The cache key of ``step``'s layer: its owner, its parent, the step and the state it
    runs with, the contents of what it copies. Per key: one key's layers are never another's
    (a COPY's hash is the client's word for its files, and a shared cache would tell one key
    what another built). A forced step gets a key never seen again, so every later step is
    made anew too (as Docker does after a changed step)."""
    body = {
        "owner": owner,
        "parent": parent,
        "type": step["type"],
        "args": step["args"],
        "files": step.get("filesHash"),
        "state": [state.exports, state.workdir, state.user],
        "nonce": secrets.token_hex(8) if forced else None,
    }
    return content_key(body, 24)


def final_start(
    spec: dict[str, Any], base: StartConfig, state: State, envs: dict[str, str]
) -> StartConfig:
    """How the template's sandboxes start: its start and ready commands (the base's, if it
    sets none), with the environment its steps left, as the last USER it named (the base's
    user otherwise) in the last WORKDIR it named (the base's otherwise). ``envs``: the
    ENV's expanded values."""
    named = {s["type"]: s["args"][0] for s in spec["steps"] if s["type"] in ("USER", "WORKDIR")}
    start_cmd = spec.get("startCmd") or base.start_cmd
    ready_cmd = spec.get("readyCmd") if spec.get("startCmd") else base.ready_cmd
    return StartConfig(
        start_cmd=start_cmd,
        ready_cmd=ready_cmd or spec.get("readyCmd"),
        envs=envs,
        workdir=state.workdir if "WORKDIR" in named else base.workdir,
        user=named.get("USER", base.user),
    )


def describe(step: dict[str, Any]) -> str:
    """The step as a Dockerfile line, for logs and errors."""
    kind, args = step["type"], step["args"]
    if kind == "RUN":
        return f"RUN {args[0]}" + (f"  (as {args[1]})" if len(args) > 1 and args[1] else "")
    if kind == "ENV":
        return "ENV " + " ".join(
            f"{k}={shlex.quote(v)}" for k, v in zip(args[0::2], args[1::2], strict=True)
        )
    return f"{kind} {' '.join(a for a in args if a)}"


def command(step: dict[str, Any], state: State) -> tuple[str, str]:
    """The shell command a layer step runs, and as whom (``user`` or ``root`` for the
    agent; another name is switched to by root with runuser)."""
    kind, args = step["type"], step["args"]
    if kind == "WORKDIR":
        return f"mkdir -p {shlex.quote(state.path(args[0]))}", "root"
    if kind == "COPY":
        return copy_script(
            args[0],
            state.path(args[1]) + "/" * args[1].endswith("/"),
            args[2] or state.user,
            args[3],
        ), "root"
    user = (args[1] if len(args) > 1 and args[1] else None) or state.user
    return as_user(state.prelude() + args[0], user)


# -- COPY ----------------------------------------------------------------------------------------


def _source(src: str) -> str:
    """The part of ``src`` before its first component with a glob character: what names the
    copied files in the upload (which holds only what matched; firebox/recipes/files.py)."""
    kept = []
    for part in posixpath.normpath(src).split("/"):
        if any(c in part for c in "*?["):
            break
        kept.append(part)
    return "/".join(kept) or "."


def copy_script(src: str, dest: str, owner: str, mode: str) -> str:
    """The shell script (run as root in the build sandbox) that places an uploaded COPY: a
    directory's contents go into ``dest``, a file to ``dest`` (into it if ``dest`` ends with
    ``/``); what is placed is owned by ``owner`` (``name`` or ``name:group``) and has
    ``mode`` on its files if given. A ``dest`` the step makes is the owner's too."""
    q = shlex.quote
    who = owner if ":" in owner else owner + ":"  # name: the user's login group
    source = q(f"{_STAGING}/x/{_source(src)}")
    target = q(dest.rstrip("/") or "/")
    lines = [
        "set -e",
        f"rm -rf {_STAGING} && mkdir -p {_STAGING}/x",
        # no -z: tar knows gzip by its content, and E2B's SDKs may upload a plain tar (gzip=False)
        f"tar -xpf {COPY_ARCHIVE} -C {_STAGING}/x --no-same-owner",
        f"rm -f {COPY_ARCHIVE}",
        f'if [ ! -e {source} ] && [ ! -L {source} ]; then echo "COPY {src}: not in the upload"'
        " >&2; exit 1; fi",
        f"find {_STAGING}/x -mindepth 1 -exec chown -h {q(who)} {{}} +",
    ]
    if mode:
        lines.append(f"find {_STAGING}/x -type f -exec chmod {q(mode)} {{}} +")
    make = f"if [ ! -e {target} ]; then mkdir -p {target} && chown {q(who)} {target}; fi"
    lines += [
        f"if [ -d {source} ] && [ ! -L {source} ]; then",
        f"  {make}",
        f"  find {source} -mindepth 1 -maxdepth 1 -exec cp -a -t {target} -- {{}} +",
    ]
    if dest.endswith("/"):
        lines += ["else", f"  {make}", f"  cp -a -- {source} {target}/"]
    else:
        lines += ["else", f'  mkdir -p "$(dirname {target})"', f"  cp -a -- {source} {target}"]
    lines += ["fi", f"rm -rf {_STAGING}"]
    return "\n".join(lines) + "\n"
