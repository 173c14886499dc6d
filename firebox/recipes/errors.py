"""The two errors of ``firebox.recipes``: a template that is not valid, and a Dockerfile that
firebox cannot build. Both are ``ValueError``s, so the daemon can answer them as a bad request
and the SDK can re-raise them as its own ``InvalidArgumentException``."""

from __future__ import annotations


class RecipeError(ValueError):
    """A template (its wire shape, a name, a COPY source...) is not valid.

    ``field`` is where, as a path into the wire shape (``"steps[3].args[0]"``), and ``step``
    the index of the step at fault; both are None when the error is about no one place.
    """

    def __init__(self, message: str, *, field: str | None = None, step: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.step = step


class DockerfileError(RecipeError):
    """A Dockerfile that firebox cannot turn into a template; ``line`` is the 1-based line of
    the instruction at fault (0 when the error is about the whole file) and ``instruction``
    its keyword, upper-cased ("" when there is none)."""

    def __init__(self, line: int, instruction: str, problem: str):
        where = f"line {line}: " if line else ""
        super().__init__(where + problem)
        self.line = line
        self.instruction = instruction

    def __reduce__(self) -> tuple[object, ...]:
        # ``args`` holds the formatted message, not the constructor's arguments.
        problem = self.message.split(": ", 1)[1] if self.line else self.message
        return (type(self), (self.line, self.instruction, problem))
