"""Type checks of dataclass fields against their annotations, for values from JSON, TOML or
`--set`: a plan with `"q_chunk": "abc"` is refused with one line naming the field, instead of
failing later in arithmetic with a TypeError traceback.

Annotations understood: int (numpy integers too), float (any real number, an int too), str,
bool, Any, `X | None`, `dict[K, V]`, `tuple[X, ...]` and classes (isinstance). bool is never
taken for int or float.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
          tuple: "a list", type(None): "null"}


def matches(value: Any, hint: Any) -> bool:
    """True when `value` is of the annotated type `hint`."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint is not bool:
        return False
    if hint is int:  # numpy integers too (configs built from computed shapes)
        return isinstance(value, numbers.Integral)
    if hint is float:
        return isinstance(value, numbers.Real)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, key) and matches(v, item) for k, v in value.items())
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(matches(v, args[0]) for v in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(matches, value, args))
    return isinstance(value, origin or hint)


def describe(hint: Any) -> str:
    """`hint` in words: "an integer", "a number or null", "a mapping of a string to an integer"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(hint))
    if origin is dict and typing.get_args(hint):
        key, item = typing.get_args(hint)
        return f"a mapping of {describe(key)} to {describe(item)}"
    if origin is tuple and typing.get_args(hint):
        return f"a list of {describe(typing.get_args(hint)[0])}"
    return _NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def check_field_types(instance: Any, what: str, error: type[Exception] = ValueError) -> None:
    """Raises `error("<what> <field> must be <type>, got <value>")` for the first field of the
    dataclass `instance` whose value does not match its annotation."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if not matches(value, hints[field.name]):
            raise error(f"{what} {field.name} must be {describe(hints[field.name])}, got {value!r}")
