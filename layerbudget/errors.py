"""Bad input: the error type, and typed records read from plain data with one-line errors.

:class:`LayerbudgetError` is raised for bad input (config, model path, budget, options, data); the CLI
prints it as one ``error:`` line and exits 2. :func:`read_record` fills a frozen dataclass from TOML or
JSON values, checking every key against the dataclass's fields and every value against the field's
type and its :func:`rule` (bounds, a further check); the first problem names the key as the user
wrote it (``where.key``). Lists become tuples and integers become floats where the type says so. A
:class:`Record` runs the same checks when it is built in code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar


class LayerbudgetError(ValueError):
    """Raised for bad input; its message names what is wrong and what would be right."""


T = TypeVar("T")
_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans")}


@dataclass(frozen=True)
class Rule:
    """What a field allows beyond its type."""

    least: float | None = None  # the smallest value allowed (numbers)
    check: Callable[[Any], str | None] | None = None  # None when the value is fine, else "must be ..."
    flat: bool = False  # a nested record whose keys stand beside this record's own keys


def rule(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
         least: float | None = None, check: Callable[[Any], str | None] | None = None, flat: bool = False) -> Any:
    """A dataclass field with a :class:`Rule`."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"rule": Rule(least, check, flat)})


def describe(tp: Any, plural: bool = False) -> str:
    """A type in words: ``"an integer"``, ``"a list of numbers"``, ``"one of 'cbc', 'highs'"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NOUNS:
        return _NOUNS[tp][plural]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a, plural) for a in args if a is not type(None))
    if origin is typing.Literal:
        return ("values among " if plural else "one of ") + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is Ellipsis:
        return "lists of " + describe(args[0], True) if plural else "a list of " + describe(args[0], True)
    if origin is tuple:
        inner = ", ".join(describe(a).split(" ", 1)[-1] for a in args)
        return f"[{inner}] lists" if plural else f"a [{inner}] list"
    if origin in (Mapping, dict) or dataclasses.is_dataclass(tp):
        if args and typing.get_origin(args[1]) in (Mapping, dict):
            return "tables of tables" if plural else "a table of tables"
        return "tables" if plural else "a table"
    return "values" if plural else "a value"


class _Bad(Exception):
    """A value that does not fit its type (reported by the caller, which knows the key)."""


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Bad
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _convert(value, a, where)
            except _Bad:
                continue
        raise _Bad
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Bad
    if tp is bool or tp is str:
        if isinstance(value, tp):
            return value
        raise _Bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _Bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Bad
    if origin is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise _Bad
        if args and args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise _Bad
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Bad
        inner = args[1] if args else Any
        return {k: _convert(v, inner, where) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return read_record(tp, value, where)
        raise _Bad
    raise TypeError(f"unsupported field type {tp!r}")  # a bug in a record's declaration


def _bound(tp: Any, least: float) -> str:
    whole = int in typing.get_args(tp) or tp is int
    if least == 1 and whole:
        return "a positive integer"
    if least == 0:
        return "a non-negative integer" if whole else "a non-negative number"
    return f"{'an integer' if whole else 'a number'} of at least {least:g}"


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any, Rule]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name], f.metadata.get("rule", Rule())) for f in dataclasses.fields(cls) if f.init]


def _check(name: str, value: Any, tp: Any, r: Rule, where: str) -> Any:
    """``value`` converted to ``tp``, with its rule checked; a one-line error naming ``where.name``."""
    key = f"{where}.{name}"
    try:
        value = _convert(value, tp, key)
    except _Bad:
        raise LayerbudgetError(f"{key} must be {describe(tp)}, but got {value!r}") from None
    if value is None:
        return value
    if r.least is not None and not value >= r.least:  # NaN fails too
        raise LayerbudgetError(f"{key} must be {_bound(tp, r.least)}, but got {value!r}")
    if r.check is not None and (wrong := r.check(value)) is not None:
        raise LayerbudgetError(f"{key} {wrong}, but got {value!r}")
    return value


def _own(cls: type) -> set[str]:
    return {f.name for f, _, r in _fields(cls) if not r.flat}


def keys(cls: type) -> list[str]:
    """The keys a record of ``cls`` reads: its fields, with those of flat nested records in their place
    (a key that is also one of ``cls``'s own fields is its own)."""
    out: list[str] = []
    for f, tp, r in _fields(cls):
        out += [k for k in keys(tp) if k not in _own(cls)] if r.flat else [f.name]
    return out


def read_record(cls: type[T], data: Mapping[str, Any], where: str, *, what: str = "key") -> T:
    """A ``cls`` built from ``data``; a one-line error for an unknown key or a value that does not fit."""
    if not isinstance(data, Mapping):
        raise LayerbudgetError(f"{where} must be a table of {what}s, but got {data!r}")
    unknown = [k for k in data if k not in keys(cls)]
    if unknown:
        names = ", ".join(f"{where}.{k}" for k in unknown)
        raise LayerbudgetError(f"unknown {what}(s) {names}; known: {', '.join(keys(cls)) or 'none'}")
    values: dict[str, Any] = {}
    for f, tp, r in _fields(cls):
        if r.flat:
            inner = {k: v for k, v in data.items() if k in keys(tp) and k not in _own(cls)}
            values[f.name] = read_record(tp, inner, where, what=what)
        elif f.name in data:
            values[f.name] = _check(f.name, data[f.name], tp, r, where)
    return cls(**values)


class Record:
    """Base of frozen dataclasses whose fields are checked (and normalised) when they are built."""

    WHERE: typing.ClassVar[str] = ""  # how errors name a record built in code

    def __post_init__(self) -> None:
        where = self.WHERE or type(self).__name__
        for f, tp, r in _fields(type(self)):
            object.__setattr__(self, f.name, _check(f.name, getattr(self, f.name), tp, r, where))
