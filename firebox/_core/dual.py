"""A method that does one thing on the class and the same thing, for itself, on an instance.

E2B offers ``Sandbox.kill(sandbox_id)`` next to ``sbx.kill()`` under one name, and ported code
uses both. Accessed on the class, ``ClassOrInstanceMethod`` gives ``on_class`` (a plain function
taking the sandbox id); on an instance it gives ``on_instance`` bound to it. Both keep their
own signatures for type checkers and ``inspect``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
S = TypeVar("S")


class ClassOrInstanceMethod(Generic[P, R, Q, S]):
    def __init__(
        self, on_class: Callable[P, R], on_instance: Callable[Concatenate[Any, Q], S]
    ) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_instance.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Callable[P, R]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[Q, S]: ...

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self.on_class
        return types.MethodType(self.on_instance, obj)
