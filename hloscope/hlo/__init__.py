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
from hloscope.hlo.model import CALL_OPCODES, Computation, HloModule, Instruction, Shape, WhileLoop

__all__ = [
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

_MLIR_START = re.compile(r'(module\b|func\.func\b|func\s+@|"builtin\.module"|"func\.func"|#)')


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


def parse_module(text: str) -> HloModule:
    """Parses either text, recognised by its first statement (``HloModule`` or MLIR)."""
    if not isinstance(text, str):
        raise TypeError(f"expected the module text as str, got {type(text).__name__}")
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("//"):
            continue
        if s.startswith("HloModule"):
            return parse_hlo(text)
        if _MLIR_START.match(s):
            return parse_stablehlo(text)
        raise ParseError("expected 'HloModule <name>' (XLA HLO) or 'module @name' / 'func.func' (StableHLO) first",
                         lineno, line)
    raise ParseError("expected 'HloModule <name>' (XLA HLO) or 'module @name' / 'func.func' "
                     "(StableHLO); the input is empty", 1, None)
