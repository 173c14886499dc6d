"""Records without ``dataclasses``: the run-time stand-in the protocol's messages are made with.

The agent imports the protocol on every sandbox start, where ``typing`` and ``dataclasses``
(which pulls in ``inspect``) cost over 10 ms of a ~20 ms budget. Type checkers see real
dataclasses; at run time ``_record`` builds the same __init__/__eq__/__repr__ cheaply. A module
of the protocol (or of the agent) takes ``dataclass`` and ``field`` from here, and ``Any`` only
under ``TYPE_CHECKING``, so that neither ``typing`` nor ``dataclasses`` is imported at run time.
"""

from __future__ import annotations

# ``typing.TYPE_CHECKING`` would import ``typing``; type checkers treat this name the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from dataclasses import dataclass, field
    from typing import Any
else:

    def dataclass(cls=None, /, **_options):
        return _record if cls is None else _record(cls)

    def field(*, default_factory):
        return _Factory(default_factory)


_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Any) -> None:
        self.make = make


def _record(cls: Any) -> Any:
    """Run-time stand-in for ``@dataclass``: fields in annotation order, base classes first."""
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name in klass.__dict__.get("__annotations__", {}):
            fields[name] = klass.__dict__.get(name, fields.get(name, _MISSING))
    cls.__dataclass_fields__ = fields

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__} takes at most {len(fields)} positional arguments")
        for name, value in zip(fields, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got {name!r} twice")
            kwargs[name] = value
        for name, default in fields.items():
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is _MISSING:
                raise TypeError(f"{cls.__name__} is missing {name!r}")
            else:
                value = default.make() if isinstance(default, _Factory) else default
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{cls.__name__} got unexpected {', '.join(map(repr, kwargs))}")

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in fields)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in fields)
        return f"{cls.__name__}({inner})"

    cls.__init__, cls.__eq__, cls.__repr__, cls.__hash__ = __init__, __eq__, __repr__, None
    return cls


def display(name: str) -> str:
    """A file name as text for the wire: Linux names are bytes, and one that is not UTF-8
    (decoded by Python with surrogate escapes) gets U+FFFD where its bad bytes were, since
    JSON text and the API's clients need valid Unicode."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate no file name decoding makes
        return name.encode("utf-8", "replace").decode("utf-8")


def as_dict(record: Any) -> dict[str, Any]:
    """A record's fields as a dict (shallow: values are JSON-ready already)."""
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
