"""A template written out as a Dockerfile, for reading (E2B's ``Template.to_dockerfile``).

What a Dockerfile cannot say is left out or put in a comment: a step's ``force``, a COPY's
``filesHash``, registry credentials and a ready command other than the one
``parse_dockerfile`` gives. A template parsed from a Dockerfile writes back out to a Dockerfile
that parses to the same steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from firebox.recipes.dockerfile import (
    DEFAULT_USER,
    DEFAULT_WORKDIR,
    DOCKERFILE_READY_CMD,
    StartState,
)
from firebox.recipes.errors import RecipeError
from firebox.recipes.spec import Step, parse_spec

_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+=,~*?-]+")


def to_dockerfile(data: Mapping[str, Any]) -> str:
    """A template's wire shape as Dockerfile text; raises ``RecipeError`` for a template built
    on another template, which no Dockerfile can start from."""
    spec = parse_spec(data, require_files_hash=False)
    if spec.from_image is None:
        raise RecipeError(
            f"the template starts from the template {spec.from_template!r}; a Dockerfile starts "
            "FROM an image, so this one has no Dockerfile form",
            field="fromTemplate",
        )
    out = []
    if spec.registry is not None:
        out.append("# the image is pulled with registry credentials (not shown)")
    out.append(f"FROM {spec.from_image}")
    start, user = StartState(), DEFAULT_USER
    for step in spec.steps:
        for missing in start.needed_before(step.type, list(step.args)):
            out.append(f"{missing} {DEFAULT_USER if missing == 'USER' else DEFAULT_WORKDIR}")
        out += _lines(step, user)
        if step.type == "USER":
            user = step.args[0]
    if spec.start_cmd is not None:
        out.append(f"ENTRYPOINT {_command(spec.start_cmd)}")
    if spec.ready_cmd is not None and (
        spec.start_cmd is None or spec.ready_cmd != DOCKERFILE_READY_CMD
    ):
        out.append(f"# ready when this exits 0: {json.dumps(spec.ready_cmd)}")
    return "\n".join(out) + "\n"


def _lines(step: Step, user: str) -> list[str]:
    args = step.args
    if step.type == "RUN":
        run = f"RUN {_command(args[0])}"
        as_user = args[1] if len(args) > 1 else ""
        if not as_user or as_user == user:
            return [run]
        return [f"USER {as_user}", run, f"USER {user}"]  # a Dockerfile has no per-RUN user
    if step.type == "COPY":
        src, dest, owner, mode = args
        flags = (f"--chown={owner} " if owner else "") + (f"--chmod={mode} " if mode else "")
        return [f"COPY {flags}{_word(src)} {_word(dest)}"]
    if step.type == "ENV":
        # ENV values are already double-quoted shell words (see spec.py): quote, do not escape
        pairs = [f'{name}="{value}"' for name, value in zip(args[::2], args[1::2], strict=True)]
        return ["ENV " + " ".join(pairs)]
    return [f"{step.type} {_word(args[0])}"]


def _command(command: str) -> str:
    # A command of several lines has no shell form in a Dockerfile: run it with bash -c.
    if "\n" in command or command.startswith("["):
        return json.dumps(["/bin/bash", "-c", command])
    return command


def _word(text: str) -> str:
    if _PLAIN.fullmatch(text):
        return text
    return '"' + re.sub(r'([\\"$])', r"\\\1", text) + '"'
