"""Shape syntax: HLO ``f32[8,<=4]{1,0:T(8,128)}`` / tuples, and MLIR ``tensor<8x?xbf16>`` types."""

from __future__ import annotations

import re
from functools import lru_cache

from hloscope.hlo.errors import ScanError
from hloscope.hlo.model import DTYPES, MAX_ARRAY_BYTES, Shape
from hloscope.hlo.scan import split_top

# Deeper nesting than this is not a real program; refusing it keeps recursion bounded.
MAX_NESTING = 64

_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([^\]\[]*)\]")
_INT = re.compile(r"-?\d+$")

# MLIR element type -> HLO element type name.
_MLIR_ELEMENT = {
    "i1": "pred", "i2": "s2", "i4": "s4", "i8": "s8", "i16": "s16", "i32": "s32", "i64": "s64",
    "si2": "s2", "si4": "s4", "si8": "s8", "si16": "s16", "si32": "s32", "si64": "s64",
    "ui1": "u1", "ui2": "u2", "ui4": "u4", "ui8": "u8", "ui16": "u16", "ui32": "u32", "ui64": "u64",
    "bf16": "bf16", "f16": "f16", "f32": "f32", "f64": "f64",
    "complex<f32>": "c64", "complex<f64>": "c128",
    "f8E5M2": "f8e5m2", "f8E4M3": "f8e4m3", "f8E4M3FN": "f8e4m3fn",
    "f8E4M3B11FNUZ": "f8e4m3b11fnuz", "f8E5M2FNUZ": "f8e5m2fnuz", "f8E4M3FNUZ": "f8e4m3fnuz",
    "f8E3M4": "f8e3m4", "f8E8M0FNU": "f8e8m0fnu", "f4E2M1FN": "f4e2m1fn",
    "index": "s64",
}
_TOKEN_TYPES = {"!stablehlo.token", "!mhlo.token", "token"}
_MLIR_DIM = re.compile(r"\s*(\d+|\?)\s*x\s*")  # tensor<3x4xf32>, also tensor<3 x f64>
_QUANT = re.compile(r"!quant\.\w+<([a-z0-9]+)")
_BOUNDS = re.compile(r"bounds\s*(?:=\s*\[|<)([^\]>]*)")


def _skip_spaces(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t":
        i += 1
    return i


def parse_hlo_shape(s: str, i: int = 0, depth: int = 0) -> tuple[Shape, int]:
    """Parses the HLO shape starting at ``s[i]``; returns it and the index after it."""
    i = _skip_spaces(s, i)
    if s.startswith("(", i):
        if depth >= MAX_NESTING:
            raise ScanError(f"tuple shapes nested deeper than {MAX_NESTING}")
        i = _skip_spaces(s, i + 1)
        elements: list[Shape] = []
        if s.startswith(")", i):
            return Shape("tuple", (), None, ()), i + 1
        while True:
            element, i = parse_hlo_shape(s, i, depth + 1)
            elements.append(element)
            i = _skip_spaces(s, i)
            if s.startswith(",", i):
                i += 1
            elif s.startswith(")", i):
                return Shape("tuple", (), None, tuple(elements)), i + 1
            else:
                raise ScanError(f"expected ',' or ')' in a tuple shape at column {i + 1}")
    m = _ARRAY.match(s, i)
    if m is None:
        raise ScanError(f"expected a shape like f32[8,128]{{1,0}} at column {i + 1}")
    dtype = m.group(1)
    if dtype not in DTYPES or dtype == "tuple":
        raise ScanError(f"expected an element type such as f32, s32 or pred; unknown element type {dtype!r}")
    dims = _hlo_dims(m.group(2))
    _check_size(dtype, dims)
    i = m.end()
    layout = None
    if s.startswith("{", i):
        j = s.find("}", i)
        if j < 0:
            raise ScanError("expected '}' to close the layout")
        # Minor-to-major comes first; tiling T(..), element size E(..), memory space S(..)
        # follow a ':' and do not change the byte count we report.
        mtm = s[i + 1:j].split(":", 1)[0].strip()
        parts = [p.strip() for p in mtm.split(",")] if mtm else []
        if not all(p.isdecimal() for p in parts):
            raise ScanError(f"expected a minor-to-major layout like {{1,0}}, got {s[i:j + 1]!r}")
        layout = tuple(int(p) for p in parts)
        i = j + 1
    return Shape(dtype, dims, layout), i


def _hlo_dims(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    dims: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("<="):  # dynamic dimension: its bound is what gets allocated
            part = part[2:].strip()
        if part == "?":
            dims.append(-1)
        elif part.isdecimal():
            dims.append(int(part))
        else:
            raise ScanError(f"expected a dimension size, got {part!r}")
    return tuple(dims)


def parse_mlir_type(text: str, depth: int = 0) -> Shape:
    """Converts an MLIR type (``tensor<8x1x64xi32>``, ``tuple<..>``, ``!stablehlo.token``)."""
    if depth >= MAX_NESTING:
        raise ScanError(f"types nested deeper than {MAX_NESTING}")
    return _mlir_type(text.strip(), depth)


@lru_cache(maxsize=8192)  # a module repeats a few hundred distinct types thousands of times
def _mlir_type(t: str, depth: int) -> Shape:
    if t.startswith("tensor<") and t.endswith(">"):
        parts = split_top(t[7:-1], angles=True)
        return _tensor(parts[0].strip(), ",".join(parts[1:]))
    if t.startswith(("tuple<", "!mhlo.async_bundle<")) and t.endswith(">"):
        # An async bundle (mhlo.async_start's result) holds its members like a tuple.
        inner = t[t.index("<") + 1:-1].strip()
        if not inner:
            return Shape("tuple", (), None, ())
        members = tuple(parse_mlir_type(p, depth + 1) for p in split_top(inner, angles=True))
        return Shape("tuple", (), None, members)
    if t in _TOKEN_TYPES:
        return Shape("token", ())
    return Shape(_element(t), ())


def _tensor(body: str, encoding: str) -> Shape:
    dims: list[int] = []
    i = 0
    if body.startswith("*x"):  # unranked: rank unknown, reported as one unknown dimension
        return Shape(_element(body[2:]), (-1,))
    while True:
        m = _MLIR_DIM.match(body, i)
        if m is None:
            break
        dims.append(-1 if m.group(1) == "?" else int(m.group(1)))
        i = m.end()
    bounds = _BOUNDS.search(encoding) if encoding and -1 in dims else None
    if bounds is not None:
        values = [b.strip() for b in bounds.group(1).split(",")]
        if len(values) == len(dims):
            dims = [int(v) if d < 0 and v.isdecimal() else d for d, v in zip(dims, values)]
    dtype = _element(body[i:])
    _check_size(dtype, dims)
    return Shape(dtype, tuple(dims))


def _check_size(dtype: str, dims: "list[int] | tuple[int, ...]") -> None:
    """Refuses an array larger than MAX_ARRAY_BYTES (an absurd size, not a program)."""
    size = Shape(dtype, tuple(dims)).nbytes()
    if size > MAX_ARRAY_BYTES:
        raise ScanError(f"expected a shape that fits in memory; {dtype}{list(dims)} would be "
                        f"{size:.3g} bytes (over {MAX_ARRAY_BYTES >> 50} PiB)")


def _element(t: str) -> str:
    t = t.strip()
    if t in _MLIR_ELEMENT:
        return _MLIR_ELEMENT[t]
    m = _QUANT.match(t)  # quantized: memory holds the storage type
    if m is not None and m.group(1) in _MLIR_ELEMENT:
        return _MLIR_ELEMENT[m.group(1)]
    if t in _TOKEN_TYPES:
        return "token"
    raise ScanError(f"expected an element type such as f32, i32 or i1; unknown element type {t!r}")


def parse_int_literal(text: str) -> int | None:
    """The integer of a scalar literal: HLO ``8`` / ``-1``, MLIR ``dense<8>`` or a typed
    attribute ``0 : i32`` (the generic form's ``{index = 0 : i32}``); else None."""
    text = text.strip()
    if " : " in text:
        text = text.rsplit(" : ", 1)[0].strip()
    if text.startswith("dense<") and text.endswith(">"):
        text = text[6:-1].strip()
    return int(text) if _INT.match(text) else None
