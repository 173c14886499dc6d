"""Templates as code: E2B's Template SDK builder, without I/O::

    template = (
        Template()
        .from_python_image("3.12")
        .apt_install(["curl"])
        .copy("requirements.txt", "/home/user/")
        .run_cmd("pip install -r /home/user/requirements.txt")
        .set_start_cmd("python -m http.server 8000", wait_for_port(8000))
    )
    Template.build(template, "my-app")

Method names, arguments and the shell command each becomes are E2B's. As in E2B the chain has
three stages: ``Template()`` (a ``TemplateBase``) takes a base (``from_*``), which returns a
``TemplateBuilder`` that adds steps, and ``set_start_cmd`` / ``set_ready_cmd`` return a
``TemplateFinal`` that ends it; all three share one state. ``Template.to_json`` gives the wire
shape (``firebox.recipes.spec``) with each COPY's ``filesHash``.

Unlike E2B, ``Template()`` has no base until one is given (E2B's is its own ``e2bdev/base``
image): ``from_base_image()`` is firebox's ``base`` template.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NotRequired, TypedDict

from firebox._core import template_files
from firebox.exceptions import InvalidArgumentException
from firebox.recipes import ReadyCmd, RecipeError, check_copy_src, read_dockerfile, validate
from firebox.recipes import to_dockerfile as _render_dockerfile

_SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # firebox/


class CopyItem(TypedDict):
    """One copy of ``copy_items``, E2B's ``CopyItem``."""

    src: str | Path | list[str | Path]
    dest: str | Path
    forceUpload: NotRequired[Literal[True] | None]
    user: NotRequired[str | None]
    mode: NotRequired[int | None]
    resolveSymlinks: NotRequired[bool | None]


@dataclass
class _Step:
    type: str
    args: list[str]
    force: bool
    force_upload: bool = False
    resolve_symlinks: bool = False
    origin: str | None = None  # where it was made: "build.py:12", "Dockerfile line 7"


@dataclass(frozen=True)
class Upload:
    """The files one COPY step needs on the daemon."""

    files_hash: str
    src: str
    dest: str
    force_upload: bool
    items: list[template_files.Item]


def _invalid(e: RecipeError, origins: list[str | None] | None = None) -> InvalidArgumentException:
    origin = origins[e.step] if origins and e.step is not None else None
    return InvalidArgumentException(e.message + (f" (defined at {origin})" if origin else ""))


def _caller_frame() -> FrameType | None:
    """The first frame outside firebox: the user's code that called the builder."""
    frame = inspect.currentframe()
    while frame is not None:
        if not os.path.abspath(frame.f_code.co_filename).startswith(_SDK_DIR + os.sep):
            return frame
        frame = frame.f_back
    return None


def _caller() -> str | None:
    frame = _caller_frame()
    if frame is None:
        return None
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def _caller_directory() -> Path:
    frame = _caller_frame()
    if frame is None or frame.f_code.co_filename.startswith("<"):  # a REPL, exec'd text
        return Path.cwd()
    return Path(frame.f_code.co_filename).resolve().parent


def _paths(value: str | Path | list[str | Path]) -> list[str]:
    return [str(p) for p in value] if isinstance(value, list) else [str(value)]


class TemplateBase:
    """A template being defined; start it with a ``from_*`` method.

    ``file_context_path`` is where ``copy`` sources and a Dockerfile's path are found (by
    default the directory of the file that creates the template); ``file_ignore_patterns``
    leave files out of copies, as the context's ``.dockerignore`` does.
    """

    def __init__(
        self,
        file_context_path: str | os.PathLike[str] | None = None,
        file_ignore_patterns: list[str] | None = None,
    ) -> None:
        self._file_context_path = (
            Path(file_context_path) if file_context_path is not None else _caller_directory()
        )
        self._file_ignore_patterns = list(file_ignore_patterns or [])
        self._base_image: str | None = None
        self._base_template: str | None = None
        self._registry: dict[str, str] | None = None
        self._start_cmd: str | None = None
        self._ready_cmd: str | None = None
        self._force = False  # rebuild everything (skip_cache before the base)
        self._force_next_layer = False  # rebuild every step from here on
        self._steps: list[_Step] = []

    def skip_cache(self) -> TemplateBase:
        """Builds everything again, ignoring the daemon's cache."""
        self._force_next_layer = True
        return self

    # --- bases --------------------------------------------------------------------------------

    def from_image(
        self, image: str, username: str | None = None, password: str | None = None
    ) -> TemplateBuilder:
        """Starts from an image, e.g. ``"python:3.12"``; a private one with a username and
        password for its registry."""
        if username is not None or password is not None:
            if not username or not password:
                raise InvalidArgumentException(
                    "give both username and password for the image's registry, or neither"
                )
            self._registry = {"type": "registry", "username": username, "password": password}
        return self._set_base(image, None)

    def from_template(self, template: str) -> TemplateBuilder:
        """Starts from a firebox template (its name, or ``name:tag``)."""
        return self._set_base(None, template)

    def from_base_image(self) -> TemplateBuilder:
        """Starts from E2B's base image, which on firebox is its default template
        (``python``: Debian with Python, Node.js, git, curl). ``from_template("base")`` is
        firebox's smallest one instead."""
        return self.from_image("e2bdev/base")

    def from_debian_image(self, variant: str = "stable") -> TemplateBuilder:
        """Starts from Debian ``variant`` (a release name, or stable/testing)."""
        return self.from_image(f"debian:{variant}")

    def from_ubuntu_image(self, variant: str = "latest") -> TemplateBuilder:
        return self.from_image(f"ubuntu:{variant}")

    def from_python_image(self, version: str = "3") -> TemplateBuilder:
        return self.from_image(f"python:{version}")

    def from_node_image(self, variant: str = "lts") -> TemplateBuilder:
        return self.from_image(f"node:{variant}")

    def from_dockerfile(
        self, dockerfile_content_or_path: str, build_args: Mapping[str, str] | None = None
    ) -> TemplateBuilder:
        """Starts from a Dockerfile, given as a path (relative to ``file_context_path``) or as
        its text; ``build_args`` set its ARGs. See ``firebox.recipes.dockerfile`` for what it
        becomes, and what it may not hold."""
        text, label = self._dockerfile_text(dockerfile_content_or_path)
        try:
            parsed = read_dockerfile(text, build_args)
        except RecipeError as e:
            raise InvalidArgumentException(f"{label}: {e.message}") from None
        data = parsed.template
        builder = self._set_base(data["fromImage"], None)
        for step, line in zip(data["steps"], parsed.lines, strict=True):
            self._add(step["type"], step["args"], origin=f"{label} line {line}" if line else label)
        self._start_cmd = data.get("startCmd")
        self._ready_cmd = data.get("readyCmd")
        return builder

    def _dockerfile_text(self, value: str) -> tuple[str, str]:
        """(text, label) of a Dockerfile given as its text or as a path (E2B takes both)."""
        if "\n" in value:
            return value, "Dockerfile"
        path = self._file_context_path / value  # an absolute ``value`` stays itself
        first = value.split(None, 1)[:1]
        if path.is_file() or (first and first[0].upper() not in ("FROM", "ARG", "#")):
            try:
                return path.read_text(encoding="utf-8"), value
            except OSError as e:
                raise InvalidArgumentException(
                    f"cannot read the Dockerfile {path} ({e.strerror}); give a path relative "
                    "to file_context_path, or the Dockerfile's text"
                ) from None
        return value, "Dockerfile"

    def _set_base(self, image: str | None, template: str | None) -> TemplateBuilder:
        self._base_image, self._base_template = image, template
        if template is not None:
            self._registry = None
        if self._force_next_layer:  # skip_cache() before the base: the whole template
            self._force = True
        return TemplateBuilder(self)

    def _add(
        self,
        kind: str,
        args: list[str],
        *,
        force_upload: bool = False,
        resolve_symlinks: bool = False,
        origin: str | None = None,
    ) -> None:
        force = force_upload or self._force_next_layer
        origin = origin or _caller()
        self._steps.append(_Step(kind, args, force, force_upload, resolve_symlinks, origin))

    # --- the wire shape -----------------------------------------------------------------------

    def _prepare(self, skip_cache: bool = False) -> tuple[dict[str, Any], list[Upload]]:
        """The wire shape, validated, and the uploads its COPY steps need."""
        ignore = template_files.IgnoreRules(
            [
                *self._file_ignore_patterns,
                *template_files.read_dockerignore(self._file_context_path),
            ]
        )
        steps, uploads = [], []
        for step in self._steps:
            wire: dict[str, Any] = {"type": step.type, "args": list(step.args), "force": step.force}
            if step.type == "COPY":
                src, dest = step.args[0], step.args[1]
                try:
                    items = template_files.collect(
                        self._file_context_path, src, ignore, step.resolve_symlinks
                    )
                except InvalidArgumentException as e:
                    where = f" (defined at {step.origin})" if step.origin else ""
                    raise InvalidArgumentException(e.message + where) from None
                wire["filesHash"] = template_files.files_hash(src, dest, items)
                if step.force_upload:
                    wire["forceUpload"] = True
                uploads.append(Upload(wire["filesHash"], src, dest, step.force_upload, items))
            steps.append(wire)
        data: dict[str, Any] = {"steps": steps, "force": self._force or skip_cache}
        if self._base_image is not None:
            data["fromImage"] = self._base_image
        if self._base_template is not None:
            data["fromTemplate"] = self._base_template
        if self._registry is not None:
            data["fromImageRegistry"] = dict(self._registry)
        if self._start_cmd is not None:
            data["startCmd"] = self._start_cmd
        if self._ready_cmd is not None:
            data["readyCmd"] = self._ready_cmd
        try:
            validate(data)
        except RecipeError as e:
            raise _invalid(e, self._origins()) from None
        return data, uploads

    def _origins(self) -> list[str | None]:
        return [step.origin for step in self._steps]

    @staticmethod
    def to_json(template: TemplateClass) -> str:
        """The template as the daemon receives it (E2B's ``to_json``), COPY steps hashed."""
        data, _ = _base_of(template)._prepare()
        return json.dumps(data, indent=2)

    @staticmethod
    def to_dockerfile(template: TemplateClass) -> str:
        """The template as a Dockerfile, for reading; raises for one based on a template."""
        base = _base_of(template)
        data, _ = base._prepare()
        try:
            return _render_dockerfile(data)
        except RecipeError as e:
            raise _invalid(e, base._origins()) from None


class TemplateBuilder:
    """Adds steps to a template; every method returns it, to chain them."""

    def __init__(self, template: TemplateBase) -> None:
        self._template = template

    def copy(
        self,
        src: str | Path | list[str | Path],
        dest: str | Path,
        force_upload: Literal[True] | None = None,
        user: str | None = None,
        mode: int | None = None,
        resolve_symlinks: bool | None = None,
        gzip: bool | None = None,
    ) -> TemplateBuilder:
        """Copies files of the context (paths or glob patterns) to ``dest`` in the template,
        owned by ``user`` (default: the current one), with ``mode`` (default: their own).
        ``force_upload`` sends them even if the daemon has them; ``resolve_symlinks`` copies
        what links point to. Uploads are always gzip'd: ``gzip`` is accepted for E2B's sake.
        """
        for item in _paths(src):
            try:
                check_copy_src(item)
            except RecipeError as e:
                raise _invalid(e) from None
            args = [item, str(dest), user or "", f"{mode:04o}" if mode else ""]
            self._template._add(
                "COPY",
                args,
                force_upload=bool(force_upload),
                resolve_symlinks=bool(resolve_symlinks),
            )
        return self

    def copy_items(self, items: list[CopyItem]) -> TemplateBuilder:
        """``copy`` for each item (``src``, ``dest``, optional ``forceUpload``, ``user``,
        ``mode``, ``resolveSymlinks``)."""
        for item in items:
            self.copy(
                item["src"],
                item["dest"],
                item.get("forceUpload"),
                item.get("user"),
                item.get("mode"),
                item.get("resolveSymlinks"),
            )
        return self

    def run_cmd(self, command: str | list[str], user: str | None = None) -> TemplateBuilder:
        """Runs a shell command (a list: joined with ``&&``), as ``user`` if given."""
        commands = [command] if isinstance(command, str) else list(command)
        self._template._add("RUN", [" && ".join(commands), *([user] if user else [])])
        return self

    def remove(
        self,
        path: str | Path | list[str | Path],
        force: bool = False,
        recursive: bool = False,
        user: str | None = None,
    ) -> TemplateBuilder:
        """``rm`` [-r] [-f] the paths."""
        flags = ["-r"] * recursive + ["-f"] * force
        return self.run_cmd(shlex.join(["rm", *flags, *_paths(path)]), user=user)

    def rename(
        self, src: str | Path, dest: str | Path, force: bool = False, user: str | None = None
    ) -> TemplateBuilder:
        """``mv`` src dest [-f]."""
        return self.run_cmd(shlex.join(["mv", str(src), str(dest), *["-f"] * force]), user=user)

    def make_dir(
        self, path: str | Path | list[str | Path], mode: int | None = None, user: str | None = None
    ) -> TemplateBuilder:
        """``mkdir -p`` [-m mode] the paths."""
        flags = [f"-m {mode:04o}"] if mode else []
        return self.run_cmd(
            " ".join(["mkdir", "-p", *flags, *map(shlex.quote, _paths(path))]), user
        )

    def make_symlink(
        self, src: str | Path, dest: str | Path, user: str | None = None, force: bool = False
    ) -> TemplateBuilder:
        """``ln -s`` [-f] src dest: a link at ``dest`` pointing to ``src``."""
        return self.run_cmd(shlex.join(["ln", "-s", *["-f"] * force, str(src), str(dest)]), user)

    def set_workdir(self, workdir: str | Path) -> TemplateBuilder:
        self._template._add("WORKDIR", [str(workdir)])
        return self

    def set_user(self, user: str) -> TemplateBuilder:
        self._template._add("USER", [user])
        return self

    def set_envs(self, envs: Mapping[str, str]) -> TemplateBuilder:
        """Sets environment variables for the steps after it and the template's sandboxes.
        Values are expanded by the build's shell as inside double quotes, as E2B's are:
        ``$PATH`` works; escape a literal ``$``, ``"``, ``\\`` or backquote with ``\\``."""
        if envs:
            self._template._add("ENV", [item for pair in envs.items() for item in pair])
        return self

    def apt_install(
        self,
        packages: str | list[str],
        no_install_recommends: bool = False,
        fix_missing: bool = False,
    ) -> TemplateBuilder:
        """Installs Debian packages as root."""
        names = [packages] if isinstance(packages, str) else packages
        flags = "--no-install-recommends " * no_install_recommends + "--fix-missing " * fix_missing
        install = "DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y "
        return self.run_cmd(["apt-get update", install + flags + " ".join(names)], user="root")

    def pip_install(
        self, packages: str | list[str] | None = None, g: bool = True
    ) -> TemplateBuilder:
        """``pip install`` the packages (None: the current directory), for everyone as root, or
        with ``g=False`` for the current user only (``--user``)."""
        names = [packages] if isinstance(packages, str) else packages or ["."]
        command = " ".join(["pip", "install", *["--user"] * (not g), *names])
        return self.run_cmd(command, user="root" if g else None)

    def npm_install(
        self,
        packages: str | list[str] | None = None,
        g: bool | None = False,
        dev: bool | None = False,
    ) -> TemplateBuilder:
        """``npm install`` the packages (None: package.json's); ``g``: globally, as root."""
        names = [packages] if isinstance(packages, str) else packages or []
        command = " ".join(
            ["npm", "install", *["-g"] * bool(g), *["--save-dev"] * bool(dev), *names]
        )
        return self.run_cmd(command, user="root" if g else None)

    def git_clone(
        self,
        url: str,
        path: str | Path | None = None,
        branch: str | None = None,
        depth: int | None = None,
        user: str | None = None,
    ) -> TemplateBuilder:
        """``git clone`` url [--branch b --single-branch] [--depth n] [path]."""
        parts = ["git", "clone", shlex.quote(url)]
        if branch:
            parts += [f"--branch {shlex.quote(branch)}", "--single-branch"]
        if depth:
            parts.append(f"--depth {int(depth)}")
        if path:
            parts.append(shlex.quote(str(path)))
        return self.run_cmd(" ".join(parts), user=user)

    def skip_cache(self) -> TemplateBuilder:
        """Builds every step from here on again, ignoring the daemon's cache."""
        self._template._force_next_layer = True
        return self

    def set_start_cmd(self, start_cmd: str, ready_cmd: str | ReadyCmd) -> TemplateFinal:
        """The command every new sandbox of the template starts with, and the command that
        exits 0 once it is ready (``wait_for_port(8000)``...); the template is snapshotted
        after that, with the command running."""
        self._template._start_cmd = start_cmd
        return self.set_ready_cmd(ready_cmd)

    def set_ready_cmd(self, ready_cmd: str | ReadyCmd) -> TemplateFinal:
        """The command that exits 0 once a new sandbox of the template is ready."""
        self._template._ready_cmd = (
            ready_cmd.get_cmd() if isinstance(ready_cmd, ReadyCmd) else ready_cmd
        )
        return TemplateFinal(self._template)


class TemplateFinal:
    """A template whose start command is set: nothing more can be added."""

    def __init__(self, template: TemplateBase) -> None:
        self._template = template


TemplateClass = TemplateBase | TemplateBuilder | TemplateFinal


def _base_of(template: TemplateClass) -> TemplateBase:
    if isinstance(template, TemplateBase):
        return template
    if isinstance(template, TemplateBuilder | TemplateFinal):
        return template._template
    raise InvalidArgumentException(
        f"expected a template made with Template() and its methods, got {type(template).__name__}"
    )
