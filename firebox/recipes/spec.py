"""A template build as data: the one wire shape, shared by the SDK and the daemon.

The shape is E2B's ``TemplateType`` (the body of its build API), so a template written with
E2B's SDK and one written with firebox's arrive alike::

    {
      "fromImage": "debian:stable",          # exactly one of fromImage and fromTemplate
      "fromTemplate": "base",                # a firebox template: "name" or "name:tag"
      "fromImageRegistry": {"type": "registry", "username": "u", "password": "p"},
      "startCmd": "python3 -m http.server",  # optional: started in every new sandbox
      "readyCmd": "[ -f /tmp/ready ]",       # optional: exits 0 once the sandbox is ready
      "force": false,                        # true: build every step again, cache or not
      "steps": [
        {"type": "RUN", "args": [command, user?], "force": false},
        {"type": "COPY", "args": [src, dest, owner, mode], "force": false,
         "filesHash": "<64 hex digits>", "forceUpload": true},
        {"type": "ENV", "args": [name1, value1, name2, value2, ...], "force": false},
        {"type": "WORKDIR", "args": [path], "force": false},
        {"type": "USER", "args": [name], "force": false}
      ]
    }

What a build does with it (the daemon's half of the contract, as E2B's builder does it):

- Steps run in order, as ``user`` in ``/home/user`` until a USER or WORKDIR step says
  otherwise. A RUN's second argument runs that one command as another user. A relative
  WORKDIR is taken against the one before it.
- RUN: ``args[0]`` runs in a shell, in the current workdir and environment.
- COPY: ``args[0]`` is a path or glob pattern relative to the build context (never absolute,
  never leaving it); the files it matched travel as the upload ``filesHash`` names
  (``firebox.recipes.files`` defines both). ``args[2]`` owns them (``user`` or
  ``user:group``; "" for the current user), ``args[3]`` is their mode as 4 octal digits
  ("" keeps each file's own). ``forceUpload`` only tells the SDK to upload again.
- ENV: each value is expanded as a double-quoted shell word (``$PATH``, ``${HOME}``), as
  E2B's builder does; a literal ``$``, ``"``, ``\\`` or backquote is escaped with ``\\``.
- A step's ``force``: build it, and so every step after it, without the cache.

Readers ignore keys they do not know. ``validate`` is the one check of the shape and returns
it normalised (keys it does not know dropped, COPY's args always four, modes 4 digits);
``parse_spec`` returns the same as a typed ``TemplateSpec``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from firebox.recipes.errors import RecipeError

MAX_STEPS = 200
MAX_ARG_BYTES = 64 * 1024  # per string: a command, a path, an environment value
STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")

# Template names are path segments and file names on the daemon: a conservative alphabet.
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An OCI reference: [registry[:port]/]path[:tag][@digest]; the daemon's puller checks the rest.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_ACCOUNT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
_USER = re.compile(rf"{_ACCOUNT}(:{_ACCOUNT})?")  # name or uid, optionally :group
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HASH = re.compile(r"[0-9a-f]{64}")
_MODE = re.compile(r"[0-7]{3,4}")
_ARITY = {"RUN": (1, 2), "COPY": (2, 4), "WORKDIR": (1, 1), "USER": (1, 1)}  # ENV: pairs


@dataclass(frozen=True)
class Registry:
    """Credentials for pulling ``fromImage`` from a private registry."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Step:
    type: str  # one of STEP_TYPES
    args: tuple[str, ...]  # COPY's are always four: src, dest, owner, mode
    force: bool = False
    files_hash: str | None = None  # COPY only
    force_upload: bool = False  # COPY only

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "args": list(self.args), "force": self.force}
        if self.files_hash is not None:
            out["filesHash"] = self.files_hash
        if self.force_upload:
            out["forceUpload"] = True
        return out


@dataclass(frozen=True)
class TemplateSpec:
    """A valid template; ``from_image`` or ``from_template`` is set, never both."""

    from_image: str | None
    from_template: str | None
    steps: tuple[Step, ...] = ()
    registry: Registry | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    force: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The wire shape, keys in the order E2B's SDK writes them."""
        out: dict[str, Any] = {"steps": [s.to_wire() for s in self.steps], "force": self.force}
        if self.from_image is not None:
            out["fromImage"] = self.from_image
        if self.from_template is not None:
            out["fromTemplate"] = self.from_template
        if self.registry is not None:
            out["fromImageRegistry"] = {
                "type": "registry",
                "username": self.registry.username,
                "password": self.registry.password,
            }
        if self.start_cmd is not None:
            out["startCmd"] = self.start_cmd
        if self.ready_cmd is not None:
            out["readyCmd"] = self.ready_cmd
        return out


def split_name(ref: str, what: str = "template name") -> tuple[str, str | None]:
    """``"name"`` or ``"name:tag"`` as (name, tag or None); the one rule for template names."""
    name, sep, tag = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not _NAME.fullmatch(name):
        raise RecipeError(
            f"{what} {ref!r}: a name is 1 to 63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, optionally followed by ':tag'"
        )
    if sep and not _TAG.fullmatch(tag):
        raise RecipeError(
            f"{what} {ref!r}: a tag is 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name, tag if sep else None


def check_copy_src(src: str, where: str = "COPY source") -> None:
    """A COPY source must name files inside the build context."""
    if not src:
        raise RecipeError(f"{where} is empty; give a path relative to the build context")
    if src.startswith("/"):
        raise RecipeError(
            f"{where} {src!r} is absolute; give a path relative to the build context "
            "(the template's file_context_path, or the Dockerfile's directory)"
        )
    normal = posixpath.normpath(src)
    if normal == ".." or normal.startswith("../"):
        raise RecipeError(
            f"{where} {src!r} leaves the build context; copy only files under it "
            "(or pass a file_context_path that contains them)"
        )


def validate(data: Any, *, require_files_hash: bool = True) -> dict[str, Any]:
    """A template's wire shape, checked and normalised; raises ``RecipeError`` naming the
    field at fault (``.field``, ``.step``) and what to do.

    ``require_files_hash=False`` accepts COPY steps without ``filesHash`` (a parsed Dockerfile
    before its files were hashed); a build always needs them.
    """
    return parse_spec(data, require_files_hash=require_files_hash).to_wire()


def parse_spec(data: Any, *, require_files_hash: bool = True) -> TemplateSpec:
    """``validate``, giving a typed ``TemplateSpec``."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"a template is a JSON object, not {type(data).__name__}")
    image = _opt_text(data, "fromImage")
    template = _opt_text(data, "fromTemplate")
    if image is not None and template is not None:
        raise RecipeError(
            "give fromImage or fromTemplate, not both: a template has one base", field="fromImage"
        )
    if image is None and template is None:
        raise RecipeError(
            "the template has no base: call from_image(), from_template(), from_debian_image(), "
            "from_dockerfile() or another from_* method first (fromImage or fromTemplate)",
            field="fromImage",
        )
    if image is not None and not _IMAGE.fullmatch(image):
        raise RecipeError(
            f"fromImage {image!r} is not an image reference such as 'debian:stable' or "
            "'registry.example.com/team/app:1.2'",
            field="fromImage",
        )
    if template is not None:
        _at(lambda: split_name(template, "fromTemplate"), "fromTemplate")
    raw_steps = data.get("steps", [])
    if not isinstance(raw_steps, list):
        raise RecipeError("steps is a list of step objects", field="steps")
    if len(raw_steps) > MAX_STEPS:
        raise RecipeError(
            f"the template has {len(raw_steps)} steps, more than {MAX_STEPS}; join commands "
            "into one run_cmd([...]) or copy a directory at once",
            field="steps",
        )
    return TemplateSpec(
        from_image=image,
        from_template=template,
        steps=tuple(_step(i, s, require_files_hash) for i, s in enumerate(raw_steps)),
        registry=_registry(data.get("fromImageRegistry"), image),
        start_cmd=_opt_text(data, "startCmd") or None,
        ready_cmd=_opt_text(data, "readyCmd") or None,
        force=_flag(data, "force", "force"),
    )


def _at(check: Any, where: str, step: int | None = None) -> Any:
    """Runs ``check``, giving a RecipeError it raises the field it is about."""
    try:
        return check()
    except RecipeError as e:
        raise RecipeError(e.message, field=where, step=step) from None


def _text(value: Any, where: str, step: int | None = None) -> str:
    if not isinstance(value, str):
        raise RecipeError(f"{where} must be a string, not {value!r:.60}", field=where, step=step)
    if "\0" in value:
        raise RecipeError(f"{where} contains a NUL character; remove it", field=where, step=step)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
        raise RecipeError(
            f"{where} is over {MAX_ARG_BYTES // 1024} KiB; put long scripts or data in a file "
            "and COPY it",
            field=where,
            step=step,
        )
    return value


def _opt_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else _text(value, key)


def _flag(data: Mapping[str, Any], key: str, where: str, step: int | None = None) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RecipeError(
            f"{where} must be true or false, not {value!r:.60}", field=where, step=step
        )
    return value


def _registry(value: Any, image: str | None) -> Registry | None:
    if value is None:
        return None
    where = "fromImageRegistry"
    if image is None:
        raise RecipeError(f"{where} needs fromImage: it says how to pull that image", field=where)
    if not isinstance(value, Mapping) or value.get("type") != "registry":
        raise RecipeError(
            f"{where}: firebox pulls with a username and password only "
            '({"type": "registry", "username": ..., "password": ...}); '
            "AWS and GCP registry logins are not supported",
            field=where,
        )
    username = _text(value.get("username"), f"{where}.username")
    password = _text(value.get("password"), f"{where}.password")
    if not username or not password:
        raise RecipeError(f"{where}: give both a username and a password", field=where)
    return Registry(username, password)


def _step(i: int, raw: Any, require_files_hash: bool) -> Step:
    key = f"steps[{i}]"
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{key} must be an object, not {raw!r:.60}", field=key, step=i)
    kind = raw.get("type")
    if kind not in STEP_TYPES:
        raise RecipeError(
            f"{key}.type is {kind!r}; a step is one of {', '.join(STEP_TYPES)}",
            field=f"{key}.type",
            step=i,
        )
    where = f"{key} ({kind})"
    raw_args = raw.get("args")
    if not isinstance(raw_args, list):
        raise RecipeError(f"{where}: args must be a list of strings", field=f"{key}.args", step=i)
    args = [_text(a, f"{where} args[{n}]", i) for n, a in enumerate(raw_args)]
    if kind in _ARITY:
        low, high = _ARITY[kind]
        if not low <= len(args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise RecipeError(
                f"{where} takes {count} args, got {len(args)}", field=f"{key}.args", step=i
            )
    files_hash = raw.get("filesHash")
    force_upload = _flag(raw, "forceUpload", f"{key}.forceUpload", i)
    if kind == "COPY":
        args = _copy_args(args, where, i)
        if files_hash is None and require_files_hash:
            raise RecipeError(
                f"{where} has no filesHash: the SDK computes it from the copied files "
                "(Template.to_json shows it)",
                field=f"{key}.filesHash",
                step=i,
            )
        if files_hash is not None and not (
            isinstance(files_hash, str) and _HASH.fullmatch(files_hash)
        ):
            raise RecipeError(
                f"{where}: filesHash must be 64 lowercase hex digits (a SHA-256)",
                field=f"{key}.filesHash",
                step=i,
            )
    else:
        files_hash, force_upload = None, False
        _check_args(kind, args, where, i)
    return Step(kind, tuple(args), _flag(raw, "force", f"{key}.force", i), files_hash, force_upload)


def _key(i: int) -> str:
    return f"steps[{i}]"


def _copy_args(args: list[str], where: str, i: int) -> list[str]:
    src, dest, owner, mode = [*args, "", ""][:4]
    _at(lambda: check_copy_src(src, f"{where} source"), f"{_key(i)}.args[0]", i)
    if not dest:
        raise RecipeError(
            f"{where}: the destination is empty; give a path in the template",
            field=f"{_key(i)}.args[1]",
            step=i,
        )
    if owner and not _USER.fullmatch(owner):
        raise RecipeError(
            f"{where}: owner {owner!r} is not a user name (or 'user:group')",
            field=f"{_key(i)}.args[2]",
            step=i,
        )
    if mode and not _MODE.fullmatch(mode):
        raise RecipeError(
            f"{where}: mode {mode!r} is not octal, such as '0644' or '0755'",
            field=f"{_key(i)}.args[3]",
            step=i,
        )
    return [src, dest, owner, mode.zfill(4) if mode else ""]


def _check_args(kind: str, args: list[str], where: str, i: int) -> None:
    key = f"{_key(i)}.args"
    if kind == "RUN":
        if not args[0].strip():
            raise RecipeError(f"{where}: the command is empty", field=f"{key}[0]", step=i)
        if len(args) == 2 and args[1] and not _USER.fullmatch(args[1]):
            raise RecipeError(
                f"{where}: user {args[1]!r} is not a user name", field=f"{key}[1]", step=i
            )
    elif kind == "ENV":
        if not args or len(args) % 2:
            raise RecipeError(
                f"{where}: args are name, value pairs; got {len(args)} strings",
                field=key,
                step=i,
            )
        for name in args[::2]:
            if not _ENV_NAME.fullmatch(name):
                raise RecipeError(
                    f"{where}: {name!r} is not a variable name (letters, digits and '_', "
                    "not starting with a digit)",
                    field=key,
                    step=i,
                )
    elif kind == "WORKDIR" and not args[0]:
        raise RecipeError(f"{where}: the path is empty", field=f"{key}[0]", step=i)
    elif kind == "USER" and not _USER.fullmatch(args[0]):
        raise RecipeError(
            f"{where}: {args[0]!r} is not a user name (or 'user:group')", field=f"{key}[0]", step=i
        )
