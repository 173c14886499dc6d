"""Reading Dockerfile text as Docker does: instructions, words, quotes and ``$variables``.

``logical_lines`` joins continued lines and drops comments; ``split_words`` breaks an
instruction's arguments into words, removing quotes and escapes and substituting variables.
A variable the Dockerfile does not define (one the base image's environment may hold) is
either an error or, where the build's shell will expand it later (ENV values), kept as a
reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from firebox.recipes.errors import DockerfileError, RecipeError

_DIRECTIVE = re.compile(r"#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\S*)\s*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODIFIERS = (":-", ":+", "-", "+")


@dataclass(frozen=True)
class Line:
    number: int  # 1-based: the instruction's first physical line
    text: str  # the instruction, its continuation lines joined


@dataclass(frozen=True)
class Ref:
    """A variable left for the build's shell to expand: ``raw`` is its text, ``${NAME...}``."""

    name: str
    raw: str


Word = list[str | Ref]  # literal text and references, in order
Lookup = Callable[[str], str | None]  # a variable's value; None: the Dockerfile does not know it


def logical_lines(text: str) -> tuple[str, list[Line]]:
    """The escape character (``# escape=`` directive, default backslash) and the instructions.

    Comment lines and blank lines go, also inside a continued instruction, as Docker drops
    them. Joining keeps a command's words apart: whitespace on either side of the break
    becomes one space.
    """
    lines = text.splitlines()
    escape, first = "\\", 0
    # Parser directives count only at the very top, before any comment or instruction.
    while first < len(lines):
        match = _DIRECTIVE.fullmatch(lines[first].strip())
        if match is None:
            break
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise DockerfileError(
                    first + 1, "", "the escape directive takes \\ or ` as its character"
                )
            escape = match.group(2)
        first += 1  # syntax=, check= and others are BuildKit's business: ignored
    out: list[Line] = []
    parts: list[str] = []
    start = 0
    for number in range(first, len(lines)):
        stripped = lines[number].strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number + 1
        body = lines[number].rstrip()
        continued = body.endswith(escape)
        parts.append(body[:-1] if continued else body)
        if not continued:
            out.append(Line(start, _join(parts)))
            parts = []
    if parts:  # a continuation on the last line: Docker ends the instruction there
        out.append(Line(start, _join(parts)))
    return escape, out


def _join(parts: list[str]) -> str:
    text = parts[0].lstrip()
    for part in parts[1:]:
        if text[-1:].isspace() or part[:1].isspace():
            text = text.rstrip() + " " + part.lstrip()
        else:
            text += part
    return text.strip()


def split_words(
    text: str, lookup: Lookup, escape: str = "\\", *, keep_unknown: bool = False, split: bool = True
) -> list[Word]:
    """``text`` as words: quotes and escapes removed, ``$NAME`` / ``${NAME}`` substituted
    (also ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:+alt}``, ``${NAME+alt}``), and
    nothing inside single quotes. With ``split=False`` all of it is one word.

    A variable ``lookup`` does not know is kept as a ``Ref`` with ``keep_unknown``; otherwise
    it is an error, unless a default gives its value.
    """
    return _Lexer(text, lookup, escape, keep_unknown).words(split)


def literal(word: Word) -> str:
    """A word without references as its text."""
    return "".join(p for p in word if isinstance(p, str))


class _Lexer:
    def __init__(self, text: str, lookup: Lookup, escape: str, keep_unknown: bool) -> None:
        self.text, self.pos = text, 0
        self.lookup, self.escape, self.keep_unknown = lookup, escape, keep_unknown

    def words(self, split: bool) -> list[Word]:
        words: list[Word] = []
        word: Word = []
        started = False
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if split and ch.isspace():
                if started:
                    words.append(word)
                    word, started = [], False
                self.pos += 1
                continue
            started = True
            if ch == self.escape:
                word.append(self.text[self.pos + 1 : self.pos + 2] or ch)
                self.pos += 2
            elif ch == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise RecipeError("a single quote is not closed; close it or escape it")
                word.append(self.text[self.pos + 1 : end])
                self.pos = end + 1
            elif ch == '"':
                self._double_quoted(word)
            elif ch == "$":
                word.extend(self._variable())
            else:
                word.append(ch)
                self.pos += 1
        if started:
            words.append(word)
        return [_merge(w) for w in words]

    def _double_quoted(self, word: Word) -> None:
        self.pos += 1
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                return
            if ch == self.escape and self.text[self.pos + 1 : self.pos + 2] in ('"', "$", ch):
                word.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == "$":
                word.extend(self._variable())
            else:
                word.append(ch)
                self.pos += 1
        raise RecipeError("a double quote is not closed; close it or escape it")

    def _variable(self) -> Word:
        start = self.pos
        self.pos += 1  # the $
        if self.text.startswith("{", self.pos):
            end = self._closing_brace(self.pos)
            inner = self.text[self.pos + 1 : end]
            self.pos = end + 1
            match = _NAME.match(inner)
            if match is None:
                raise RecipeError(f"{self.text[start : end + 1]} is not a variable reference")
            name, rest = match.group(), inner[match.end() :]
            modifier = next((m for m in _MODIFIERS if rest.startswith(m)), None)
            if rest and modifier is None:
                raise RecipeError(
                    f"{self.text[start : end + 1]}: firebox substitutes ${{NAME}}, "
                    "${NAME:-default} and ${NAME:+alternative} only"
                )
            return self._value(
                name, self.text[start : end + 1], modifier, rest[len(modifier or "") :]
            )
        match = _NAME.match(self.text, self.pos)
        if match is None:
            return ["$"]  # a lone dollar is literal, as in Docker
        self.pos = match.end()
        return self._value(match.group(), "${" + match.group() + "}", None, "")

    def _closing_brace(self, opening: int) -> int:
        depth = 0
        for i in range(opening, len(self.text)):
            if self.text[i] == "{":
                depth += 1
            elif self.text[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
        raise RecipeError("a ${ has no closing }; close it or escape the $")

    def _value(self, name: str, raw: str, modifier: str | None, word: str) -> Word:
        value = self.lookup(name)
        if value is None and self.keep_unknown:
            return [Ref(name, raw)]
        if modifier is None:
            if value is None:
                raise RecipeError(
                    f"${{{name}}} is not defined here: declare it with ARG {name}=... or ENV "
                    "before this line, or pass it as a build argument"
                )
            return [value]
        is_set = value is not None and (value != "" or not modifier.startswith(":"))
        use_word = is_set if modifier.endswith("+") else not is_set
        if not use_word:
            return [value or ""] if modifier.endswith("-") else []
        inner = _Lexer(word, self.lookup, self.escape, self.keep_unknown).words(split=False)
        return inner[0] if inner else []


def _merge(word: Word) -> Word:
    """Adjacent literal pieces as one string."""
    out: Word = []
    for piece in word:
        if isinstance(piece, str) and out and isinstance(out[-1], str):
            out[-1] += piece
        else:
            out.append(piece)
    return out
