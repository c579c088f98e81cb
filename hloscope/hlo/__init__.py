"""Parsers of XLA HLO text and StableHLO/MHLO MLIR text into one module graph.

    module = parse_module(compiled.as_text())          # or jax.jit(f).lower(x).as_text()
    for loop in module.loop_nest(inst.computation): ...

docs/hlo_parser.md describes the data model, what is inferred and the limits.
"""

from __future__ import annotations

import gc
import re
from typing import Callable

from hloscope.hlo.errors import ParseError
from hloscope.hlo.hlo_text import parse_hlo as _parse_hlo
from hloscope.hlo.mlir_text import parse_stablehlo as _parse_stablehlo
from hloscope.hlo.model import CALL_OPCODES, Alias, Computation, HloModule, Instruction, Shape, WhileLoop

__all__ = [
    "Alias",
    "CALL_OPCODES",
    "Computation",
    "HloModule",
    "Instruction",
    "ParseError",
    "Shape",
    "WhileLoop",
    "parse_hlo",
    "parse_module",
    "parse_stablehlo",
]

# The first statement of MLIR text: a module, a function, an alias, or a top-level op of another
# dialect (a text of 'sdy.mesh @mesh = ...' and functions without a module around them).
_MLIR_START = re.compile(r'(module\b|func\.func\b|func\s+@|"builtin\.module"|"func\.func"|#|![\w.$\-]+\s*='
                         r'|[A-Za-z_]\w*\.[\w.]+\s+@)')


def _guarded(parse: Callable[[str], HloModule], text: str) -> HloModule:
    """Runs a parser so that bad input can only ever surface as ParseError.

    The parsers check their input and raise ParseError themselves; this net turns anything
    they missed into a ParseError too (its message says so, so tests can tell the two apart).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the module text as str, got {type(text).__name__}")
    # A parse allocates one long-lived object after another and frees none, which makes the
    # cyclic GC rescan the growing heap again and again (a third of the time on 100k lines);
    # nothing here builds reference cycles, so it is paused for the duration.
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark some editors write
        text = text[1:]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return parse(text)
    except ParseError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the contract is "ParseError or a module"
        raise ParseError(f"internal parser error on malformed input ({type(e).__name__}: {e})") from e
    finally:
        if was_enabled:
            gc.enable()


def parse_hlo(text: str) -> HloModule:
    """Parses XLA HLO text (``compiled.as_text()``, ``*after_optimizations.txt`` dumps)."""
    return _guarded(_parse_hlo, text)


def parse_stablehlo(text: str) -> HloModule:
    """Parses StableHLO/MHLO MLIR text (``lowered.as_text()``, with or without debug_info)."""
    return _guarded(_parse_stablehlo, text)


def _lines(text: str):
    """The lines of ``text`` one at a time, as str.splitlines cuts them (only the first few are
    read, and splitting a 60 MB text whole costs a tenth of its parse)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        chunk = text[start:end]
        start = end
        # splitlines also cuts at \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029
        yield from chunk.splitlines() or [""]


def parse_module(text: str) -> HloModule:
    """Parses either text, recognised by its first statement (``HloModule`` or MLIR)."""
    if not isinstance(text, str):
        raise TypeError(f"expected the module text as str, got {type(text).__name__}")
    parse = _first_statement(text)
    return parse(text)


def _first_statement(text: str) -> Callable[[str], HloModule]:
    """The parser for ``text``, recognised by its first statement (the line reader is done
    before the parse starts: with the reader left suspended across the parse, the parse ran 4% more instructions under callgrind)."""
    in_comment = 0  # the line a /* comment opened on, while it is open
    for lineno, line in enumerate(_lines(text), 1):
        s = line.strip().lstrip("\ufeff")
        if in_comment or s.startswith("/*"):  # a leading /* ... */ (XLA's fuzzer modules)
            in_comment = (in_comment or lineno) if "*/" not in s else 0
            s = s[s.find("*/") + 2:].strip() if not in_comment else ""
        if not s or s.startswith("//"):
            continue
        if s.startswith("HloModule"):
            return parse_hlo
        if _MLIR_START.match(s):
            return parse_stablehlo
        raise ParseError("expected 'HloModule <name>' (XLA HLO) or 'module @name' / 'func.func' (StableHLO) first",
                         lineno, line)
    if in_comment:
        raise ParseError("expected '*/' to close this comment before the end of the input", in_comment,
                         text.splitlines()[in_comment - 1])
    raise ParseError("expected 'HloModule <name>' (XLA HLO) or 'module @name' / 'func.func' "
                     "(StableHLO); the input is empty", 1, None)
