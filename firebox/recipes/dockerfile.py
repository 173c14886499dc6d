"""Dockerfiles as templates: ``parse_dockerfile`` reads one into the wire shape,
``to_dockerfile`` writes a template back out as one.

The mapping is E2B's (``Template().from_dockerfile``): one FROM (an image) is the base; RUN,
COPY/ADD, ENV, WORKDIR and USER become steps, each COPY source a step of its own;
CMD/ENTRYPOINT become the start command, ready after ``wait_for_timeout(20_000)``. Docker's
defaults hold inside the Dockerfile (root, ``/``) and E2B's after it: unless the Dockerfile sets
them, the template ends with ``USER user`` and ``WORKDIR /home/user``.

Unlike E2B's parser, which prints "Unsupported instruction" and carries on, anything firebox
cannot honour is a ``DockerfileError`` naming its line: a second FROM, heredocs, ADD of a URL
or an archive, COPY --from, RUN --mount, HEALTHCHECK, VOLUME, SHELL, ONBUILD, STOPSIGNAL.
LABEL, EXPOSE and MAINTAINER only describe an image and are ignored. ARG is resolved here and
never reaches the template: its values are substituted where Docker substitutes them and
exported to the RUN commands after it, as Docker's RUN sees them.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from firebox.recipes.errors import DockerfileError, RecipeError
from firebox.recipes.readycmd import wait_for_timeout
from firebox.recipes.spec import MAX_STEPS, check_copy_src, validate
from firebox.recipes.words import Line, Ref, Word, literal, logical_lines, split_words

# A Dockerfile's CMD/ENTRYPOINT has no ready check to map: a second to settle. E2B waits 20 s;
# a jail sandbox runs the check at each start it is not pooled for, so firebox waits 1 s.
DOCKERFILE_READY_CMD = wait_for_timeout(1_000).get_cmd()
DEFAULT_USER = "user"
DEFAULT_WORKDIR = "/home/user"

IGNORED = frozenset({"LABEL", "EXPOSE", "MAINTAINER"})
UNSUPPORTED = {
    "HEALTHCHECK": "say when a sandbox is ready with set_ready_cmd() (e.g. wait_for_url())",
    "VOLUME": "a sandbox's files are its own; remove it",
    "SHELL": "RUN uses the template's shell; name the interpreter in the command instead",
    "ONBUILD": "templates have no build triggers; put the steps where they are needed",
    "STOPSIGNAL": "the daemon stops sandboxes itself; remove it",
}
KNOWN = {"FROM", "ARG", "RUN", "COPY", "ADD", "ENV", "WORKDIR", "USER", "CMD", "ENTRYPOINT"}
_HEREDOC = re.compile(r"(?<!<)<<-?\s*([\"']?)[A-Za-z_][A-Za-z0-9_]*\1(?!<)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|git@")
_ARCHIVE = re.compile(r"\.(tar|tgz|tbz2?|txz|tzst|tar\.(gz|bz2|xz|zst))$", re.IGNORECASE)
_COPY_FLAGS_IGNORED = ("--link",)  # a BuildKit layer-cache hint: nothing to honour


class ParsedDockerfile(NamedTuple):
    template: dict[str, Any]  # the wire shape, without filesHash (nothing is hashed here)
    lines: tuple[int | None, ...]  # each step's Dockerfile line; None for the added defaults


def parse_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Dockerfile's text as a template's wire shape; ``build_args`` set its ARGs."""
    return read_dockerfile(text, build_args).template


def read_dockerfile(text: str, build_args: Mapping[str, str] | None = None) -> ParsedDockerfile:
    """``parse_dockerfile``, also giving the line each step came from."""
    escape, lines = logical_lines(text)
    reader = _Reader(dict(build_args or {}), escape)
    for line in lines:
        reader.instruction(line)
    template = reader.finish()
    try:
        validate(template, require_files_hash=False)
    except RecipeError as e:  # a step's content, such as an ENV name: blame its line
        step = e.step if e.step is not None else -1
        line_number = reader.lines[step] if 0 <= step < len(reader.lines) else None
        keyword = template["steps"][step]["type"] if line_number else ""
        raise DockerfileError(line_number or 0, keyword, e.message) from None
    return ParsedDockerfile(template, tuple(reader.lines))


class StartState:
    """Where a Dockerfile and a template differ at their start: Docker runs as root in ``/``,
    a template as ``user`` in ``/home/user``. Crossing over (parsing, or writing a Dockerfile)
    sets that state with a USER and a WORKDIR step, placed before the first step, unless the
    first steps set it themselves at once (a USER, then an absolute WORKDIR); so a template
    written out and read back has the same steps.
    """

    def __init__(self) -> None:
        self.pending = ["USER", "WORKDIR"]

    def needed_before(self, kind: str, args: list[str]) -> list[str]:
        """Which of USER and WORKDIR to set before a step of ``kind``."""
        needed = []
        if self.pending[:1] == ["USER"]:
            self.pending.pop(0)
            if kind != "USER":
                needed.append("USER")
        if self.pending and kind != "USER":
            self.pending.pop(0)
            if not (kind == "WORKDIR" and args[0].startswith("/")):
                needed.append("WORKDIR")
        return needed


@dataclass
class _Command:
    exec_form: bool
    argv: list[str]  # exec form
    shell: str  # shell form


class _Reader:
    def __init__(self, build_args: dict[str, str], escape: str) -> None:
        self.build_args, self.escape = build_args, escape
        self.global_args: dict[str, str | None] = {}  # ARGs before FROM: usable in FROM only
        self.args: dict[str, str | None] | None = None  # the stage's; None before FROM
        self.env: dict[str, str | None] = {}  # ENV values; None: refers to the build's env
        self.image: str | None = None
        self.steps: list[dict[str, Any]] = []
        self.lines: list[int | None] = []
        self.user_set = self.workdir_set = False
        self.start = StartState()
        self.entrypoint: _Command | None = None
        self.cmd: _Command | None = None
        self.line = Line(0, "")

    def fail(self, problem: str) -> DockerfileError:
        keyword = self.line.text.split(None, 1)[0].upper() if self.line.text else ""
        return DockerfileError(self.line.number, keyword, problem)

    def instruction(self, line: Line) -> None:
        self.line = line
        keyword, rest = [*line.text.split(None, 1), ""][:2]
        keyword, rest = keyword.upper(), rest.strip()
        if keyword in IGNORED:
            return
        if keyword in UNSUPPORTED:
            raise self.fail(
                f"{keyword} is not supported by firebox templates; {UNSUPPORTED[keyword]}"
            )
        if keyword not in KNOWN:
            raise self.fail(f"{keyword} is not a Dockerfile instruction; check its spelling")
        if self.image is None and keyword not in ("FROM", "ARG"):
            raise self.fail(f"{keyword} comes before FROM; start the Dockerfile with FROM <image>")
        try:
            getattr(self, "do_" + keyword.lower())(rest)
        except DockerfileError:
            raise
        except RecipeError as e:
            raise self.fail(e.message) from None

    # --- variables ----------------------------------------------------------------------------

    def lookup(self, name: str) -> str | None:
        if self.args is None:
            return (self.global_args[name] or "") if name in self.global_args else None
        if name in self.env:
            return self.env[name]
        if name in self.args:
            return self.args[name] or ""  # declared without a value: empty, as in Docker
        return None

    def words(self, text: str, *, split: bool = True) -> list[str]:
        return [literal(w) for w in split_words(text, self.lookup, self.escape, split=split)]

    # --- instructions -------------------------------------------------------------------------

    def do_from(self, rest: str) -> None:
        if self.image is not None:
            raise self.fail(
                "a second FROM: multi-stage Dockerfiles are not supported; build in one stage, "
                "or build the artifacts first and COPY them in"
            )
        flags, rest = _flags(rest)
        for name, _ in flags:
            if name != "--platform":  # the daemon builds for its own platform
                raise self.fail(f"FROM {name} is not supported by firebox templates; remove it")
        words = self.words(rest)
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]  # a lone stage's name means nothing
        if len(words) != 1:
            raise self.fail("FROM takes one image, e.g. FROM debian:stable")
        if words[0] == "scratch":
            raise self.fail("FROM scratch has no system to run in; start from an image")
        self.image, self.args = words[0], {}

    def do_arg(self, rest: str) -> None:
        table = self.global_args if self.args is None else self.args
        for word in self.words(rest):
            name, has_default, default = word.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise self.fail(f"ARG {name!r} is not a variable name")
            if name in self.build_args:
                table[name] = self.build_args[name]
            elif has_default:
                table[name] = default
            elif self.args is not None and name in self.global_args:
                table[name] = self.global_args[name]  # Docker: re-declared, takes the global
            else:
                table[name] = None

    def do_env(self, rest: str) -> None:
        words = split_words(rest, self.lookup, self.escape, keep_unknown=True)
        pairs: list[tuple[str, Word]] = []
        first = words[0][0] if words and words[0] else ""
        if words and "=" not in (first if isinstance(first, str) else ""):
            # the legacy form, ENV NAME value with spaces
            name, value = [*re.split(r"\s+", rest, maxsplit=1), ""][:2]
            if not value:
                raise self.fail(f"ENV {name} has no value; write ENV {name}=value")
            whole = split_words(value, self.lookup, self.escape, keep_unknown=True, split=False)
            pairs.append((name, whole[0]))
        for word in [] if pairs else words:
            head = word[0] if word and isinstance(word[0], str) else ""
            name, eq, tail = head.partition("=")
            if not eq:
                raise self.fail(f"ENV {literal(word)!r} has no value; write ENV NAME=value")
            pairs.append((name, [tail, *word[1:]] if tail else word[1:]))
        if not pairs:
            raise self.fail("ENV needs NAME=value")
        args: list[str] = []
        for name, value in pairs:
            self.env[name] = None if any(isinstance(p, Ref) for p in value) else literal(value)
            args += [name, _shell_quoted(value)]
        self.step("ENV", args)

    def do_run(self, rest: str) -> None:
        if rest.startswith("--"):
            flag = rest.split(None, 1)[0].split("=", 1)[0]
            raise self.fail(f"RUN {flag} is not supported by firebox templates; remove the flag")
        command = self.command(rest)
        exported = {
            k: v for k, v in (self.args or {}).items() if v is not None and k not in self.env
        }
        if exported:  # ARGs are RUN's environment in Docker, and never the image's
            pairs = " ".join(f"{k}={shlex.quote(v)}" for k, v in exported.items())
            command = f"export {pairs} && {command}"
        self.step("RUN", [command])

    def do_copy(self, rest: str, keyword: str = "COPY") -> None:
        owner = mode = ""
        flags, rest = _flags(rest)
        for name, value in flags:
            if name == "--chown":
                owner = self.words(value, split=False)[0] if value else ""
            elif name == "--chmod":
                mode = self.words(value, split=False)[0] if value else ""
                if not re.fullmatch(r"[0-7]{3,4}", mode):
                    raise self.fail(f"{keyword} --chmod={value}: give the mode in octal, e.g. 0755")
            elif name == "--from":
                raise self.fail(
                    f"{keyword} --from copies from another stage or image: multi-stage builds are "
                    "not supported; copy files from the build context instead"
                )
            elif name not in _COPY_FLAGS_IGNORED:
                raise self.fail(
                    f"{keyword} {name} is not supported by firebox templates; remove it"
                )
        paths = self.json_list(rest)
        if paths is not None:
            paths = [self.words(p, split=False)[0] if p else "" for p in paths]
        else:
            self.no_heredoc(rest, keyword)
            paths = self.words(rest)
        if len(paths) < 2:
            raise self.fail(f"{keyword} takes one or more sources and a destination")
        for src in paths[:-1]:
            if keyword == "ADD" and _URL.match(src):
                raise self.fail(
                    f"ADD {src}: firebox does not download files; use RUN curl -fsSLo <file> <url>"
                )
            if keyword == "ADD" and _ARCHIVE.search(src):
                raise self.fail(
                    f"ADD {src} would unpack the archive; COPY it and RUN tar -xf it instead"
                )
            check_copy_src(src, f"{keyword} source")
            self.step("COPY", [src, paths[-1], owner, mode.zfill(4) if mode else ""])

    def do_add(self, rest: str) -> None:
        self.do_copy(rest, "ADD")

    def do_workdir(self, rest: str) -> None:
        path = self.words(rest, split=False)
        if not path or not path[0]:
            raise self.fail("WORKDIR needs a path")
        self.step("WORKDIR", [path[0]])
        self.workdir_set = True

    def do_user(self, rest: str) -> None:
        user = self.words(rest, split=False)
        if not user or not user[0].strip():
            raise self.fail("USER needs a user name")
        self.step("USER", [user[0].strip()])
        self.user_set = True

    def do_cmd(self, rest: str) -> None:
        self.cmd = self.parse_command(rest)

    def do_entrypoint(self, rest: str) -> None:
        self.entrypoint = self.parse_command(rest)

    # --- helpers ------------------------------------------------------------------------------

    def no_heredoc(self, rest: str, keyword: str) -> None:
        if _HEREDOC.search(rest):
            raise self.fail(
                f"{keyword} with a heredoc (<<EOF) is not supported; put the script or file in "
                "the build context and COPY it"
            )

    def json_list(self, rest: str) -> list[str] | None:
        """The exec (JSON) form's strings; None when ``rest`` is in shell form."""
        if not rest.startswith("["):
            return None
        try:
            value = json.loads(rest)
        except ValueError:
            return None  # Docker reads a broken JSON form as shell form
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def command(self, rest: str) -> str:
        argv = self.json_list(rest)
        if argv is None:
            self.no_heredoc(rest, "RUN")
            return rest
        return shlex.join(argv)

    def parse_command(self, rest: str) -> _Command:
        argv = self.json_list(rest)
        return _Command(argv is not None, argv or [], rest if argv is None else "")

    def step(self, kind: str, args: list[str]) -> None:
        # Docker starts as root in /, a template as user in /home/user.
        for missing in self.start.needed_before(kind, args):
            self.add(missing, ["root" if missing == "USER" else "/"], None)
        self.add(kind, args, self.line.number or None)

    def add(self, kind: str, args: list[str], line: int | None) -> None:
        if len(self.steps) >= MAX_STEPS:
            raise self.fail(f"the Dockerfile makes more than {MAX_STEPS} steps; join RUN lines")
        self.steps.append({"type": kind, "args": args, "force": False})
        self.lines.append(line)

    def finish(self) -> dict[str, Any]:
        if self.image is None:
            raise DockerfileError(0, "FROM", "no FROM: start the Dockerfile with FROM <image>")
        self.line = Line(0, "")  # the defaults below come from no line
        if not self.user_set:
            self.step("USER", [DEFAULT_USER])
        if not self.workdir_set:
            self.step("WORKDIR", [DEFAULT_WORKDIR])
        template: dict[str, Any] = {"steps": self.steps, "force": False, "fromImage": self.image}
        start = self.start_cmd()
        if start:
            template["startCmd"] = start
            template["readyCmd"] = DOCKERFILE_READY_CMD
        return template

    def start_cmd(self) -> str:
        ep, cmd = self.entrypoint, self.cmd
        if ep is None:
            return "" if cmd is None else (shlex.join(cmd.argv) if cmd.exec_form else cmd.shell)
        if not ep.exec_form:
            return ep.shell  # Docker ignores CMD beside a shell-form ENTRYPOINT
        argv = list(ep.argv)
        if cmd is not None:
            argv += cmd.argv if cmd.exec_form else ["/bin/sh", "-c", cmd.shell]
        return shlex.join(argv)


def _flags(rest: str) -> tuple[list[tuple[str, str]], str]:
    """An instruction's leading ``--name=value`` flags (raw), and the rest of its text."""
    flags = []
    while rest.startswith("--"):
        flag, rest = [*rest.split(None, 1), ""][:2]
        name, _, value = flag.partition("=")
        flags.append((name, value))
    return flags, rest


def _shell_quoted(value: Word) -> str:
    """An ENV value as the build's shell expands it (a double-quoted word): literal text
    escaped, references kept."""
    return "".join(p.raw if isinstance(p, Ref) else re.sub(r'([\\"$`])', r"\\\1", p) for p in value)
