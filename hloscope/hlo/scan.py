"""Bracket- and string-aware scanning of one statement of HLO or MLIR text.

A regex finds only the characters that matter (brackets, commas, whole string literals), so the
Python loop runs per bracket rather than per character; nothing here backtracks, so a 100k-line
module scans in linear time. MLIR also nests ``<...>`` (``tensor<4xf32>``, ``dense<..>``), which
HLO does not (``<=`` in dynamic shapes), hence the ``angles`` switch; ``->`` is never a bracket.
"""

from __future__ import annotations

import re

from hloscope.hlo.errors import ScanError

STRING = r'"(?:[^"\\\n]|\\.)*"'
# A lone '"' matches only when the string literal is not terminated on this statement.
_HLO_TOKENS = re.compile(STRING + r'|[()\[\]{}",]')
_MLIR_TOKENS = re.compile(STRING + r'|->|[()\[\]{}<>",]')
_CLOSER = {"(": ")", "[": "]", "{": "}", "<": ">"}
# Same tokens with one group per kind: 1 string, 2 unterminated quote, 3 comma, 4 opener, 5 closer.
_HLO_SPLIT = re.compile("(" + STRING + r')|(")|(,)|([(\[{])|([)\]}])')
_MLIR_SPLIT = re.compile("(" + STRING + r')|(")|(,)|([(\[{<])|([)\]}>])|->')
_HLO_SPECIAL = '()[]{}"'
_MLIR_SPECIAL = '()[]{}<>"'
_STRINGS = re.compile(STRING)
_COMMENT = re.compile(STRING + r"|/\*.*?\*/")


def _tokens(angles: bool) -> re.Pattern[str]:
    return _MLIR_TOKENS if angles else _HLO_TOKENS


def _track(t: str, stack: list[str]) -> bool:
    """Updates the bracket `stack` with token `t`; returns True when `t` closed a bracket."""
    c = t[0]
    if c == '"':
        if len(t) == 1:
            raise ScanError("expected a closing '\"' (unterminated string)")
    elif c in _CLOSER and t != "->":
        stack.append(_CLOSER[c])
    elif c in ")]}>":
        if not stack or stack.pop() != t:
            raise ScanError(f"unexpected {t!r} (brackets do not match)")
        return True
    return False


def find_close(s: str, i: int, angles: bool = False) -> int:
    """Index of the bracket that closes the opener at ``s[i]``."""
    stack: list[str] = []
    for m in _tokens(angles).finditer(s, i):
        t = m.group()
        if _track(t, stack) and not stack:
            return m.start()
    raise ScanError(f"expected {stack[-1]!r} to close {s[i]!r} opened at column {i + 1}" if stack
                    else f"expected a bracket at column {i + 1}")


def split_top(s: str, angles: bool = False) -> list[str]:
    """Splits ``s`` at commas outside brackets and strings; raises ScanError if unbalanced."""
    if not any(c in s for c in (_MLIR_SPECIAL if angles else _HLO_SPECIAL)):
        return s.split(",")  # nothing nests: the common operand list '%a, %b'
    pieces: list[str] = []
    stack: list[str] = []
    start = 0
    for m in (_MLIR_SPLIT if angles else _HLO_SPLIT).finditer(s):
        kind = m.lastindex  # dispatch on the group number: cheaper than comparing strings
        if kind == 3:
            if not stack:
                pieces.append(s[start:m.start()])
                start = m.end()
        elif kind == 4:
            stack.append(_CLOSER[m.group()])
        elif kind == 5:
            if not stack or stack.pop() != m.group():
                raise ScanError(f"unexpected {m.group()!r} (brackets do not match)")
        elif kind == 2:
            raise ScanError("expected a closing '\"' (unterminated string)")
    if stack:
        raise ScanError(f"expected {stack[-1]!r} before the end of the statement")
    pieces.append(s[start:])
    return pieces


def top_level_find(s: str, needle: str, angles: bool = False, last: bool = False) -> int:
    """Index of the first (or last) ``needle`` outside brackets and strings, -1 if none.

    ``needle`` must not contain brackets or quotes. Also validates the brackets of ``s``.
    """
    stack: list[str] = []
    found = -1
    start = 0  # start of the current depth-0 stretch
    for m in _tokens(angles).finditer(s):
        t = m.group()
        c = t[0]
        if c == ",":
            continue
        if not stack:
            k = s.rfind(needle, start, m.start()) if last else s.find(needle, start, m.start())
            if k >= 0:
                found = k
                if not last:
                    break
        _track(t, stack)
        if not stack:
            start = m.end()
    else:
        if stack:
            raise ScanError(f"expected {stack[-1]!r} before the end of the statement")
        k = s.rfind(needle, start) if last else s.find(needle, start)
        if k >= 0:
            found = k
    return found


def blank_strings(s: str) -> str:
    """``s`` with the inside of every string literal replaced by '_' (same length, so indices
    found in the result are indices into ``s``); raises ScanError on an unterminated string."""
    if '"' not in s:
        return s
    blank = _STRINGS.sub(lambda m: '"' + "_" * (len(m.group()) - 2) + '"', s)
    if blank.count('"') % 2:
        raise ScanError("expected a closing '\"' (unterminated string)")
    return blank


def balance(s: str) -> tuple[int, int, int]:
    """Net open ( [ { counts of string-free text."""
    return (s.count("(") - s.count(")"), s.count("[") - s.count("]"), s.count("{") - s.count("}"))


def strip_comments(s: str) -> str:
    """Removes ``/*...*/`` comments (XLA writes ``/*index=5*/`` in long tuples), not in strings."""
    if "/*" not in s:
        return s
    return _COMMENT.sub(lambda m: m.group() if m.group()[0] == '"' else "", s)


def strip_strings(s: str) -> str:
    """``s`` with every string literal emptied (so their contents cannot look like syntax)."""
    return _STRINGS.sub('""', s) if '"' in s else s


def unquote(s: str) -> str:
    """The value of a C-style quoted string as XLA and MLIR print them."""
    body = s[1:-1]
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            n = body[i + 1]
            hexa = body[i + 1:i + 3]
            if n in "\"\\'":
                out.append(n)
                i += 2
                continue
            if n in "nt":
                out.append("\n" if n == "n" else "\t")
                i += 2
                continue
            if len(hexa) == 2 and all(h in "0123456789abcdefABCDEF" for h in hexa):
                out.append(chr(int(hexa, 16)))  # MLIR escapes bytes as \22
                i += 3
                continue
        out.append(c)
        i += 1
    return "".join(out)
