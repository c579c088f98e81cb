"""MLIR source locations (``loc(...)`` and ``#locN = loc(...)`` aliases) -> op_name, file, line.

``as_text(debug_info=True)`` nests locations: an op's ``loc(#loc43)`` is a NameLoc
``"dynamic_update_slice"(#loc22)`` whose child is the function NameLoc ``"f.<locals>.body"``
wrapping the FileLineColLoc ``"/x/y.py":10:15``; call stacks are ``callsite(callee at caller)``
and merged ops ``fused[...]``. The op name is the first (outermost) name met depth-first,
callee before caller, and the file:line is the first file location met the same way, i.e. the
innermost Python frame: the line that produced the op. The call stack (every file location of
the callsite chain, innermost first) gives the user's frame (`hloscope.hlo.frames`).
"""

from __future__ import annotations

import re

from hloscope.hlo.errors import ScanError
from hloscope.hlo.scan import STRING, find_close, unquote

# Real nesting is a few levels per Python frame; this bound keeps bad input from recursing far.
_MAX_DEPTH = 200
_ALIAS = re.compile(r"#[\w.$\-]+")
_STRING = re.compile(STRING)
_FILE_POS = re.compile(r":(\d+)(?::(\d+))?(?:\s+to\s+(?:\d+)?(?::\d+)?)?")
_SPACE = re.compile(r"\s*")

Stack = tuple[tuple[str, int], ...]  # (file, line) of the call stack, innermost first
Info = tuple[str | None, str | None, int | None, Stack]  # op_name, file, line, stack
_NONE: Info = (None, None, None, ())


def _merge(first: Info, second: Info) -> Info:
    """Parts of a fused location: the first name and the first part's file location."""
    name = first[0] if first[0] is not None else second[0]
    if first[1] is not None:
        return (name, *first[1:])
    return (name, *second[1:])


def _callsite(callee: Info, caller: Info) -> Info:
    """``callsite(callee at caller)``: the callee's name and line, the caller's frames after its own."""
    name, source_file, line, _ = _merge(callee, caller)
    return name, source_file, line, callee[3] + caller[3]


class LocResolver:
    """Holds the ``#loc`` aliases of one module and resolves location text against them."""

    def __init__(self) -> None:
        self._text: dict[str, tuple[str, int]] = {}
        self._done: dict[str, Info] = {}
        self._active: set[str] = set()

    def define(self, alias: str, text: str, lineno: int) -> None:
        """Records ``#alias = <text>`` (text is the whole ``loc(...)``)."""
        if alias in self._text:
            raise ScanError(f"expected a new alias name; {alias} is already defined on line {self._text[alias][1]}")
        self._text[alias] = (text, lineno)

    def aliases(self) -> list[tuple[str, int]]:
        """Every alias with its line, in definition order."""
        return [(alias, lineno) for alias, (_, lineno) in self._text.items()]

    def resolve_alias(self, alias: str) -> Info:
        return self._alias(alias, 0)

    def resolve(self, text: str | None) -> Info:
        """op_name, file, line and call stack of location text such as ``#loc12`` or
        ``"name"("f.py":3:4)``."""
        if not text:
            return _NONE
        known = self._done.get(text)  # '#loc12', resolved before: most ops' location
        if known is not None:
            return known
        info, end = self._loc(text, 0, 0)
        if text[end:].strip():
            raise ScanError(f"expected the end of the location, got {text[end:].strip()[:40]!r}")
        return info

    def _alias(self, alias: str, depth: int) -> Info:
        if alias in self._done:
            return self._done[alias]
        if alias not in self._text:
            raise ScanError(f"expected location alias {alias} to be defined")
        if alias in self._active:
            raise ScanError(f"expected location aliases without cycles ({alias} refers to itself)")
        self._active.add(alias)
        try:
            text = self._text[alias][0]
            info, end = self._loc(text, 0, depth + 1)
            if text[end:].strip():
                raise ScanError(f"expected the end of the location, got {text[end:].strip()[:40]!r}")
        finally:
            self._active.discard(alias)
        self._done[alias] = info
        return info

    def _loc(self, s: str, i: int, depth: int) -> tuple[Info, int]:
        if depth > _MAX_DEPTH:
            raise ScanError("expected locations nested less deeply")
        i = _SPACE.match(s, i).end()
        if s.startswith("loc(", i):
            close = find_close(s, i + 3, angles=True)
            info, end = self._loc(s[:close], i + 4, depth + 1)
            if s[end:close].strip():
                raise ScanError(f"expected ')' to end the location, got {s[end:close].strip()[:40]!r}")
            return info, close + 1
        if s.startswith("#", i):
            m = _ALIAS.match(s, i)
            if m is None:
                raise ScanError("expected a location alias like #loc12")
            return self._alias(m.group(), depth), m.end()
        if s.startswith("unknown", i):
            return _NONE, i + 7
        if s.startswith("callsite(", i):
            close = find_close(s, i + 8, angles=True)
            inner = s[:close]
            callee, j = self._loc(inner, i + 9, depth + 1)
            j = _SPACE.match(inner, j).end()
            if not inner.startswith("at", j):
                raise ScanError("expected 'callsite(<callee> at <caller>)'")
            caller, j = self._loc(inner, j + 2, depth + 1)
            if inner[j:].strip():
                raise ScanError("expected ')' after the caller of a callsite location")
            return _callsite(callee, caller), close + 1
        if s.startswith("fused", i):
            j = i + 5
            if s.startswith("<", j):  # fused<metadata>[...]
                j = find_close(s, j, angles=True) + 1
            if not s.startswith("[", j):
                raise ScanError("expected 'fused[<locations>]'")
            close = find_close(s, j, angles=True)
            info = _NONE
            j += 1
            while True:
                part, j = self._loc(s[:close], j, depth + 1)
                info = _merge(info, part)
                j = _SPACE.match(s, j).end()
                if j >= close:
                    return info, close + 1
                if s[j] != ",":
                    raise ScanError("expected ',' between fused locations")
                j += 1
        m = _STRING.match(s, i)
        if m is None:
            raise ScanError(f"expected a location, got {s[i:i + 40]!r}")
        value = unquote(m.group())
        j = m.end()
        pos = _FILE_POS.match(s, j)
        if pos is not None:
            line = int(pos.group(1))
            return (None, value, line, ((value, line),)), pos.end()
        if s.startswith("(", j):  # NameLoc with a child location
            close = find_close(s, j, angles=True)
            child, end = self._loc(s[:close], j + 1, depth + 1)
            if s[end:close].strip():
                raise ScanError("expected ')' after the child of a named location")
            return (value, *child[1:]), close + 1
        return (value, None, None, ()), j
