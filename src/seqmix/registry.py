"""Name -> class registries (mixers, FFNs) with one declared option validator for all of them.

A registered class declares its options as keyword-only ``__init__`` arguments whose annotations say what is
allowed, and the registry checks every call against them before the class runs::

    def __init__(self, d_model, n_heads, *, layer_idx=0, n_layers=1,
                 chunk_size: Annotated[int, POWER_OF_TWO] = 32, window: Annotated[int, POSITIVE] | None = None,
                 variant: Literal["sh", "mh"] = "sh", norm_eps: Annotated[float, POSITIVE] = 1e-5): ...

``int`` admits integers but not booleans, ``float`` any real number but not booleans, ``bool`` only True or
False, ``Literal[...]`` the listed values, ``X | None`` also None, ``tuple[float, float]`` a pair; the rules in
``Annotated`` (``POSITIVE``, ``at_least(n)``, ...) then constrain the value. A bad value raises a ValueError
naming the class, the option, the value and what is allowed. Relations between options (one must divide
another, ...) stay in the class.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

CONTRACT_ARGS = ("self", "d_model", "n_heads", "layer_idx", "n_layers")

__all__ = ["Registry", "Rule", "POSITIVE", "NON_NEGATIVE", "POWER_OF_TWO", "EVEN", "at_least", "check_options",
           "Annotated", "Literal"]


@dataclass(frozen=True)
class Rule:
    """A constraint on a value, with the words that describe it ("> 0", "a power of two")."""
    text: str
    holds: Callable[[Any], bool]


POSITIVE = Rule("> 0", lambda v: v > 0)
NON_NEGATIVE = Rule("≥ 0", lambda v: v >= 0)
POWER_OF_TWO = Rule("a power of two", lambda v: v >= 1 and not v & (v - 1))
EVEN = Rule("even", lambda v: v % 2 == 0)


def at_least(low) -> Rule:
    return Rule(f"≥ {low}", lambda v: v >= low)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _admits(annotation, value) -> bool:
    """Whether `value` is of the declared type and satisfies its rules."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Annotated:
        return _admits(args[0], value) and all(rule.holds(value) for rule in annotation.__metadata__)
    if origin in (Union, types.UnionType):
        return any(_admits(a, value) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return _is_real(value)
    if origin is tuple:
        return (isinstance(value, (tuple, list)) and len(value) == len(args)
                and all(_admits(a, v) for a, v in zip(args, value)))
    if origin in (list, collections.abc.Sequence):
        return (isinstance(value, (list, tuple)) and (not args or all(_admits(args[0], v) for v in value)))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    raise TypeError(f"option annotation {annotation!r} is not one the validator understands")


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return f"{_describe(args[0])} ({' and '.join(rule.text for rule in annotation.__metadata__)})"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (list, collections.abc.Sequence):
        return f"a sequence of {_describe(args[0])}" if args else "a sequence"
    if origin is tuple:
        return f"a pair ({', '.join(_describe(a) for a in args)})" if len(args) == 2 else \
            f"a tuple ({', '.join(_describe(a) for a in args)})"
    return {type(None): "None", bool: "True or False", int: "an integer", float: "a number",
            str: "a string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


@functools.lru_cache(maxsize=None)
def _declared(cls: type) -> dict[str, Any]:
    """The keyword-only options of cls.__init__ with their (resolved) annotations."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    params = inspect.signature(cls.__init__).parameters
    return {p: hints.get(p, Any) for p, v in params.items() if p not in CONTRACT_ARGS and v.kind is v.KEYWORD_ONLY}


def check_options(cls: type, options: dict, owner: str) -> None:
    """Raise a ValueError naming `owner`, the option and what is allowed for the first option that `cls`
    does not declare or whose value its annotation does not admit."""
    declared = _declared(cls)
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) {unknown}; allowed: {list(declared)}")
    for name, value in options.items():
        if not _admits(declared[name], value):
            raise ValueError(f"{owner} option {name}={value!r}: must be {_describe(declared[name])}")


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator: make the class available under `name`; every construction of it, through the
        registry or directly, has its declared options checked first."""

        def deco(cls):
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.registered_name = name
            init = cls.__init__

            @functools.wraps(init)
            def checked_init(obj, *args, **kwargs):
                if type(obj) is cls:  # a subclass checks its own declaration
                    check_options(cls, {k: v for k, v in kwargs.items() if k not in CONTRACT_ARGS},
                                  f"{self.kind} {name!r}")
                init(obj, *args, **kwargs)

            cls.__init__ = checked_init
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"{self.kind}: unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def option_names(self, name: str) -> list[str]:
        """Keyword options the class accepts beyond the contract's own arguments."""
        return list(_declared(self.get(name)))

    def build(self, name: str, *args, options: dict | None = None, **contract):
        cls = self.get(name)
        options = dict(options or {})
        check_options(cls, options, f"{self.kind}_options for {name!r}")
        return cls(*args, **contract, **options)
