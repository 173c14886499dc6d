"""Recipes for guest root trees and the debootstrap run that produces them."""

from __future__ import annotations

import collections
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import post
from .cache import Progress, Recipe
from .errors import ImageBuildError

# Bump when the build changes in a way the recipe fields do not capture (e.g. debootstrap
# options), so existing caches are rebuilt.
RECIPE_VERSION = 1
DEBOOTSTRAP_TIMEOUT = 20 * 60.0
TAIL_LINES = 30


@dataclass(frozen=True)
class Template:
    name: str
    packages: tuple[str, ...]  # on top of the variant's own package set
    variant: str = "minbase"

    def plus(self, name: str, packages: tuple[str, ...]) -> Template:
        """A template with this one's packages and variant, and ``packages`` on top."""
        return Template(name, (*self.packages, *packages), self.variant)


# The one place the package lists live. Every template is built by the same recipe
# (debootstrap --include, then the post steps); they differ only in these lists. Packages
# come from the host's Debian release, so versions are whatever that release ships.
# iproute2 (ss) and curl: what the ready checks of E2B's SDK run (wait_for_port, wait_for_url),
# in every template built on a firebox image or a Debian release
_BASE = Template("base", ("python3", "ca-certificates", "procps", "iproute2", "curl"))
_PYTHON = _BASE.plus(
    "python",
    (
        "ipython3",
        "python3-numpy",
        "python3-pandas",
        "python3-matplotlib",
        "fonts-dejavu-core",  # matplotlib's default font; already a dependency, kept explicit
        "nodejs",
        "node-typescript",  # typescript contexts: the compiler strips each cell's types
        "python3-pip",  # pip install, through the egress proxy where a policy allows
        # what code written for E2B's default template expects: `python`, git (its SDK's
        # sandbox.git helpers), sudo
        "python-is-python3",
        "git",
        "sudo",
    ),
)
TEMPLATES: dict[str, Template] = {t.name: t for t in (_BASE, _PYTHON)}
# The template sandboxes run code in unless asked for another one.
DEFAULT_TEMPLATE = _PYTHON.name


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise ValueError(f"unknown image template {name!r}; known templates: {known}") from None


def make_recipe(template: str, codename: str, mirror: str) -> Recipe:
    tpl = get_template(template)
    return Recipe(
        template=tpl.name,
        codename=codename,
        mirror=mirror.rstrip("/"),  # "…/debian" and "…/debian/" are the same archive
        variant=tpl.variant,
        packages=tuple(sorted(set(tpl.packages))),  # order does not change the result
        recipe_version=RECIPE_VERSION,
        post_hash=post.source_hash(),
    )


def debootstrap_command(recipe: Recipe, target: Path, executable: str = "debootstrap") -> list[str]:
    cmd = [executable, f"--variant={recipe.variant}"]
    if recipe.packages:
        cmd.append("--include=" + ",".join(recipe.packages))
    return [*cmd, recipe.codename, str(target), recipe.mirror]


_ITEM = re.compile(
    r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) (.+?)(?:\.\.\.)?$"
)


class DebootstrapProgress:
    """Turns debootstrap's one-line-per-package output into a few counted progress messages.

    Per-package lines are counted per stage ("retrieving packages (25)"), reported at the first
    item, every ``every`` items and when the stage ends; other I:/W:/E: lines pass through.
    """

    def __init__(self, progress: Progress, every: int = 25) -> None:
        self._progress = progress
        self._every = every
        self._phase = ""
        self._label: str | None = None
        self._count = 0
        self._reported = 0
        self._said_index = False

    def _flush(self) -> None:
        if self._label is not None and self._count != self._reported:
            self._progress(f"{self._label} ({self._count})")
        self._label, self._count, self._reported = None, 0, 0

    def _item(self, label: str) -> None:
        if label != self._label:
            self._flush()
            self._label = label
        self._count += 1
        if self._count == 1 or self._count % self._every == 0:
            self._progress(f"{label} ({self._count})")
            self._reported = self._count

    def feed(self, line: str) -> None:
        line = line.strip()
        match = _ITEM.match(line)
        if match:
            verb, what = match.groups()
            if what in ("required packages", "the base system"):
                self._phase = "required " if what.startswith("required") else "base "
                return
            if what[:1].isupper():  # InRelease, Packages: indexes (package names are lowercase)
                if not self._said_index:
                    self._flush()
                    self._progress("fetching package index")
                    self._said_index = True
                return
            if verb == "Validating":
                return  # interleaved with Retrieving, one per package: not a stage of its own
            phase = self._phase if verb in ("Unpacking", "Configuring") else ""
            self._item(f"{verb.lower()} {phase}packages")
            return
        if line.startswith(("I: ", "W: ", "E: ")):
            self._flush()
            text = line[3:]
            if line.startswith("I: ") and len(text) > 100:
                text = text[:97] + "..."  # e.g. "Found additional dependencies: <long list>"
            self._progress(
                ("warning: " if line[0] == "W" else "error: " if line[0] == "E" else "") + text
            )

    def finish(self) -> None:
        self._flush()


@dataclass
class RunResult:
    returncode: int | None  # None: killed at the deadline
    tail: tuple[str, ...]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The child leads its own session, so its process group holds debootstrap and everything
    # it started (wget, chroot dpkg); signal exactly that group, TERM first so debootstrap's
    # exit trap can unmount what it mounted inside the target.
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(
    cmd: Sequence[str],
    log_path: Path,
    on_line: Callable[[str], None],
    timeout: float,
    *,
    append: bool = False,
) -> RunResult:
    """Run ``cmd`` with output to ``log_path``, each line to ``on_line``, killed at ``timeout``.
    ``append`` adds to the log, for a build of several commands."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    env = {**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    with open(log_path, "ab" if append else "wb") as log:
        log.write(f"$ {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        pending = b""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _kill_group(proc)
                    return RunResult(None, tuple(tail))
                # select, not readline: a silent, hung child must not block past the deadline.
                if not select.select([fd], [], [], min(remaining, 1.0))[0]:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                log.write(chunk)
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for raw in lines:
                    if raw.strip():
                        text = raw.decode("utf-8", "replace")
                        tail.append(text)
                        on_line(text)
            if pending.strip():
                tail.append(pending.decode("utf-8", "replace"))
                on_line(tail[-1])
            try:
                rc = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunResult(None, tuple(tail))
            return RunResult(rc, tuple(tail))
        finally:
            if proc.poll() is None:  # e.g. KeyboardInterrupt: do not leave debootstrap behind
                _kill_group(proc)
            proc.stdout.close()


def _find_debootstrap() -> str:
    # Non-root PATHs often lack the sbin directories where debootstrap lives.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("debootstrap", path=path)
    if found is None:
        raise ImageBuildError(
            "debootstrap is not installed; install it with: apt-get install debootstrap"
        )
    return found


def build_rootfs(
    recipe: Recipe,
    target: Path,
    log_path: Path,
    progress: Progress,
    timeout: float = DEBOOTSTRAP_TIMEOUT,
) -> None:
    """Fill ``target`` for ``recipe``: debootstrap, then the post steps."""
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building a guest image needs root (debootstrap creates device nodes and files "
            "owned by other users); run the build once as root"
        )
    cmd = debootstrap_command(recipe, target, _find_debootstrap())
    progress(f"debootstrap {recipe.codename} ({recipe.variant}, +{','.join(recipe.packages)})")
    reporter = DebootstrapProgress(progress)
    result = run_logged(cmd, log_path, reporter.feed, timeout)
    reporter.finish()
    if result.returncode != 0:
        what = (
            f"timed out after {timeout / 60:.0f} min and was killed"
            if result.returncode is None
            else f"failed with exit status {result.returncode}"
        )
        raise ImageBuildError(
            f"debootstrap {what} while building image {recipe.name!r} from {recipe.mirror}.\n"
            "Last output lines:\n  " + "\n  ".join(result.tail) + f"\nFull log: {log_path}\n"
            "Check that this host can reach the mirror, or point FIREBOX_APT_MIRROR at one "
            "it can reach.",
            log_path=log_path,
            tail=result.tail,
        )
    progress("applying post-install steps")
    post.apply(target)
