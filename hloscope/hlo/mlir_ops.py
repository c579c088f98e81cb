"""Syntax of one MLIR operation line, pretty (``stablehlo.add %a, %b : tensor<f32>``) or generic
(``%5 = "mhlo.dynamic_update_slice"(%3, %4) : (...) -> tensor<...>``); regions are handled by
the caller (mlir_text), which hands over the text before ``({`` / ``{`` and after ``})``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hloscope.hlo.errors import ScanError
from hloscope.hlo.scan import find_close, split_top, strip_strings, top_level_find, unquote
from hloscope.hlo.model import Shape
from hloscope.hlo.shapes import parse_mlir_type

_VALUE = r"%[\w$.\-]+"
_RESULTS = re.compile(rf"((?:{_VALUE}(?::\d+)?\s*,\s*)*{_VALUE}(?::\d+)?)\s*=\s*")
_RESULT = re.compile(rf"%([\w$.\-]+)(?::(\d+))?")
_OPERAND = re.compile(r"%([\w$.\-]+)(?:#(\d+))?")
_OPERAND_EXACT = re.compile(r"%([\w$.\-]+)(?:#(\d+))?$")
_OP_NAME = re.compile(r"[A-Za-z_][\w$.]*")
_GENERIC_NAME = re.compile(r'"([A-Za-z_][\w$.\-]*)"')  # "stablehlo.cross-replica-sum" too
# A symbol (@foo, @"<lambda>"), or a string literal to skip over (its text is not a symbol).
_SYMBOL = re.compile(r'@([\w$.\-]+|"(?:[^"\\]|\\.)*")|"(?:[^"\\]|\\.)*"')
# Pretty ops may end in ' attributes {...}' (a while under set_xla_metadata or a sharding).
_ATTRIBUTES_KW = " attributes "
_TYPE = re.compile(r"[!\w.$]+")
_ARG = re.compile(r"\s*%([\w$.\-]+)\s*:\s*")
_ATTR = re.compile(r'\s*("[^"]*"|[\w$.\-]+)\s*(?:=\s*(.*))?$', re.S)
# '#stablehlo<comparison_direction LT>', older '#mhlo<"comparison_direction LT">' or '"LT"'.
_DIRECTION = re.compile(r"\b(LT|LE|GT|GE|EQ|NE)\b")
_LOC_ALIAS_TAIL = re.compile(r"\s+loc\((#[\w.$\-]+|unknown)\)$")
_DENSE = re.compile(r"dense<(.*)>$", re.S)
_APPLIES = re.compile(r"\bapplies\s+([\w.$]+)")
# Unqualified names that are operations (func dialect ops may drop their prefix inside func.func).
_BARE_OPS = {"return", "call", "call_indirect", "constant"}
TERMINATORS = {"return", "func.return", "stablehlo.return", "mhlo.return"}


@dataclass
class OpSyntax:
    """What one operation line says."""

    results: list[tuple[str, int]]  # (value name, number of results it names)
    op: str  # full name, e.g. 'stablehlo.add'
    generic: bool
    operands: list[tuple[str, int | None]] = field(default_factory=list)  # (value, #k)
    attributes: dict[str, str] = field(default_factory=dict)
    types: list[str] | None = None  # result types (operand types for a terminator); None: no ': ...'
    inputs: list[str] = field(default_factory=list)  # operand types of a functional '(..) -> ..'
    functional: bool = False  # types came from '(...) -> (...)'
    block_args: list[tuple[str, str]] = field(default_factory=list)  # pretty while: (iterArg, type)
    symbols: list[str] = field(default_factory=list)  # @symbol references (callees)

    @property
    def count(self) -> int:
        return sum(n for _, n in self.results)

    @property
    def opcode(self) -> str:
        return opcode_of(self.op)

    @property
    def is_terminator(self) -> bool:
        return self.op in TERMINATORS


def opcode_of(op: str) -> str:
    """The op name without its dialect: 'stablehlo.dynamic_update_slice' -> 'dynamic_update_slice'."""
    return op.partition(".")[2] if "." in op else op


def split_loc(t: str) -> tuple[str, str | None]:
    """Splits a trailing ``loc(...)`` off a line: (rest, location text inside loc(...))."""
    if not t.endswith(")") or "loc(" not in t:
        return t, None
    m = _LOC_ALIAS_TAIL.search(t, max(0, len(t) - 64))
    if m is not None:
        return t[:m.start()], m.group(1)
    k = len(t)
    while True:
        k = t.rfind("loc(", 0, k)
        if k < 0:
            return t, None
        if k == 0 or t[k - 1] in " \t":
            try:
                if find_close(t, k + 3, angles=True) == len(t) - 1:
                    return t[:k].rstrip(), t[k + 4:-1]
            except ScanError:
                pass
        if k == 0:
            return t, None


def read_type(s: str, i: int) -> tuple[str, int]:
    """The type starting at ``s[i]`` (``tensor<..>``, ``!stablehlo.token``, ``f32``) and its end."""
    m = _TYPE.match(s, i)
    if m is None:
        raise ScanError(f"expected a type at {s[i:i + 30]!r}")
    j = m.end()
    if s.startswith("<", j):
        j = find_close(s, j, angles=True) + 1
    return s[i:j], j


def parse_args(text: str) -> list[tuple[str, str, str | None]]:
    """``%arg0: tensor<..> {attrs} loc(..), ...`` -> [(name, type, loc text)]."""
    args: list[tuple[str, str, str | None]] = []
    if not text.strip():
        return args
    for piece in split_top(text, angles=True):
        piece, loc = split_loc(piece.strip())
        m = _ARG.match(piece)
        if m is None:
            raise ScanError(f"expected '%name: type', got {piece.strip()[:40]!r}")
        type_text, _ = read_type(piece, m.end())
        args.append((m.group(1), type_text, loc))
    return args


def set_signature(syntax: OpSyntax, sig: str) -> None:
    """Reads ``(a, b) -> (c, d)`` / ``(a) -> c`` / ``a, b`` into the op's types."""
    sig = sig.strip()
    arrow = _top_level_arrow(sig)
    if arrow < 0:
        syntax.types, syntax.functional = _split_types(sig), False
    else:
        syntax.inputs = _type_list(sig[:arrow].strip())
        syntax.types, syntax.functional = _type_list(sig[arrow + 2:].strip()), True


def _type_list(text: str) -> list[str]:
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        inner = text[1:-1].strip()  # '(tensor<..>, tensor<..>)': no nested parens to match
        return _split_types(inner) if inner else []
    if text.startswith("(") and find_close(text, 0, angles=True) == len(text) - 1:
        inner = text[1:-1].strip()
        return _split_types(inner) if inner else []
    return [text]


def _split_types(text: str) -> list[str]:
    # Plain tensor types hold no commas; encodings (#..), tuples, quantized (!quant) may.
    if not any(c in text for c in '#"{[(!') and "tuple" not in text:
        return [p.strip() for p in text.split(",")]
    return [p.strip() for p in split_top(text, angles=True)]


def _top_level_arrow(sig: str) -> int:
    # '->' never nests in types, so the first one outside brackets separates inputs from results.
    k = sig.find("->")
    if k < 0:
        return -1
    head = sig[:k]
    if '"' not in head and head.count("(") == head.count(")") and head.count("<") == head.count(">"):
        return k  # the usual '(tensor<..>, tensor<..>) -> tensor<..>'
    depth = 0
    i = 0
    n = len(sig)
    while i < n:
        c = sig[i]
        if c == "-" and sig.startswith("->", i):
            if depth == 0:
                return i
            i += 2
            continue
        if c == '"':
            i = sig.find('"', i + 1)
            if i < 0:
                raise ScanError("expected a closing '\"' (unterminated string)")
        elif c in "(<[{":
            depth += 1
        elif c in ")>]}":
            depth -= 1
        i += 1
    return -1


def result_shape(syntax: OpSyntax) -> Shape:
    """The Shape of the op's results (a tuple when it has several, empty tuple for none)."""
    n = syntax.count
    types = syntax.types or []
    if n == 0:
        return Shape("tuple", (), None, ())
    if syntax.types is None:
        raise ScanError(f"expected ': <type>' giving the type of {syntax.op}'s results")
    if len(types) != n and not (not syntax.functional and n == 1 and types):
        raise ScanError(f"expected {n} result type(s) for {syntax.op}, got {len(types)}")
    types = types[-n:]  # 'select %p, %a, %b : tensor<i1>, tensor<f32>': the last is the result
    if n == 1:
        return parse_mlir_type(types[0])
    return Shape("tuple", (), None, tuple(parse_mlir_type(t) for t in types))


def parse_op(t: str, has_regions: bool = False) -> OpSyntax:
    """Parses one op line (its loc already split off); ``has_regions``: text stops before them."""
    m = _RESULTS.match(t)
    results: list[tuple[str, int]] = []
    pos = 0
    if m is not None:
        for r in _RESULT.finditer(m.group(1)):
            results.append((r.group(1), int(r.group(2)) if r.group(2) else 1))
        pos = m.end()
    if t.startswith('"', pos):
        g = _GENERIC_NAME.match(t, pos)
        if g is None:
            raise ScanError("expected a quoted operation name like \"stablehlo.add\"")
        syntax = OpSyntax(results, g.group(1), True)
        _generic(t, g.end(), syntax, has_regions)
    else:
        g = _OP_NAME.match(t, pos)
        if g is None or ("." not in g.group() and g.group() not in _BARE_OPS):
            raise ScanError("expected an operation like '%0 = stablehlo.add %a, %b : tensor<f32>'")
        syntax = OpSyntax(results, g.group(), False)
        _pretty(t[g.end():], syntax)
    if syntax.count and syntax.is_terminator:
        raise ScanError(f"expected {syntax.op} to have no results")
    if "@" in t:
        syntax.symbols = [unquote(s) if s.startswith('"') else s for s in _SYMBOL.findall(t) if s]
    if syntax.op.endswith((".compare", "constant")):
        _normalize(syntax)
    return syntax


def _generic(t: str, i: int, syntax: OpSyntax, has_regions: bool) -> None:
    while t.startswith(" ", i):  # '"stablehlo.add" (%a, %b)' is the same op
        i += 1
    if not t.startswith("(", i):
        raise ScanError("expected '(' with the operands after the operation name")
    close = find_close(t, i, angles=True)
    inner = t[i + 1:close].strip()
    for piece in split_top(inner, angles=True) if inner else []:
        m = _OPERAND_EXACT.match(piece.strip())
        if m is None:
            raise ScanError(f"expected an operand like %3 or %3#1, got {piece.strip()[:40]!r}")
        syntax.operands.append((m.group(1), int(m.group(2)) if m.group(2) else None))
    rest = t[close + 1:].strip()
    if rest.startswith("["):  # successors of a branch: not values
        rest = rest[find_close(rest, 0, angles=True) + 1:].strip()
    if rest.startswith("<{"):
        end = find_close(rest, 0, angles=True)
        syntax.attributes.update(parse_attr_dict(rest[1:end]))
        rest = rest[end + 1:].strip()
    if has_regions:
        if rest:
            raise ScanError(f"expected '({{' to open the regions, got {rest[:40]!r}")
        return
    generic_tail(rest, syntax)


def generic_tail(rest: str, syntax: OpSyntax) -> None:
    """``[{attrs}] [: (inputs) -> results]``: what follows the operands (or the regions)."""
    rest = rest.strip()
    if rest.startswith("{"):
        end = find_close(rest, 0, angles=True)
        syntax.attributes.update(parse_attr_dict(rest[:end + 1]))
        rest = rest[end + 1:].strip()
    if rest.startswith(":"):
        set_signature(syntax, rest[1:])
    elif rest:
        raise ScanError(f"expected ': (operand types) -> result types', got {rest[:40]!r}")


def parse_attr_dict(text: str) -> dict[str, str]:
    """``{a = 1 : i64, b, "c" = "x"}`` -> {'a': '1 : i64', 'b': '', 'c': '"x"'}."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ScanError(f"expected an attribute dictionary, got {text[:40]!r}")
    out: dict[str, str] = {}
    inner = text[1:-1].strip()
    for piece in split_top(inner, angles=True) if inner else []:
        m = _ATTR.match(piece)
        if m is None:
            raise ScanError(f"expected 'name = value' in an attribute dictionary, "
                            f"got {piece.strip()[:40]!r}")
        key = unquote(m.group(1)) if m.group(1).startswith('"') else m.group(1)
        out[key] = (m.group(2) or "").strip()
    return out


def _pretty(body: str, syntax: OpSyntax) -> None:
    if _ATTRIBUTES_KW in body:
        k = top_level_find(body, _ATTRIBUTES_KW, angles=True, last=True)
        if k >= 0 and body[k + len(_ATTRIBUTES_KW):].lstrip().startswith("{"):
            syntax.attributes.update(parse_attr_dict(body[k + len(_ATTRIBUTES_KW):]))
            body = body[:k]
    k = _signature_colon(body)
    args, signature = (body, None) if k < 0 else (body[:k], body[k + 3:])
    if k < 0 and ":" in body:  # '%a: tensor<..>' or '%a :(..) -> ..': spaces left out
        k = top_level_find(body, ":", angles=True, last=True)
        if k > 0:
            args, signature = body[:k], body[k + 1:]
    if signature is not None:
        set_signature(syntax, signature)
    pieces = split_top(args, angles=True)  # also validates the brackets of the operand part
    stripped = strip_strings(args)
    syntax.attributes["asm"] = args.strip()
    if syntax.op.endswith(".while") and args.lstrip().startswith("("):
        _pretty_while(args, syntax)
    else:
        syntax.operands = [(m.group(1), int(m.group(2)) if m.group(2) else None)
                           for m in _OPERAND.finditer(stripped)]
    for n, piece in enumerate(pieces):
        piece = piece.strip()
        if n == 0 and syntax.op.endswith(".compare"):
            syntax.attributes["comparison_direction"] = piece.split()[0] if piece else ""
        if "=" not in piece and "{" not in piece:
            continue
        eq = piece.find(" = ")
        if eq > 0 and _OP_NAME.fullmatch(piece[:eq].split()[-1]):
            syntax.attributes[piece[:eq].split()[-1]] = piece[eq + 3:].strip()
        elif piece.startswith("{") and piece.endswith("}"):
            syntax.attributes.update(parse_attr_dict(piece))
    applies = _APPLIES.search(stripped) if "applies" in stripped else None
    if applies is not None:
        syntax.attributes["applies"] = applies.group(1)
    if syntax.op.endswith(".constant") and "value" not in syntax.attributes:
        syntax.attributes["value"] = args.strip()


def _signature_colon(body: str) -> int:
    """Index of the top-level ' : ' before the types, -1 if none."""
    k = body.rfind(" : ")
    if k < 0:
        return -1
    if '"' not in body:
        # Fast path for the common line: a balanced prefix means the colon is at depth 0.
        head = body[:k]
        if (head.count("(") == head.count(")") and head.count("[") == head.count("]")
                and head.count("{") == head.count("}")
                and head.count("<") == head.count(">") - head.count("->")):
            return k
    return top_level_find(body, " : ", angles=True, last=True)


def _pretty_while(args: str, syntax: OpSyntax) -> None:
    """``(%iterArg = %arg0, %iterArg_1 = %c)``: operands are the inits, iterArgs the region args."""
    start = args.index("(")
    close = find_close(args, start, angles=True)
    inner = args[start + 1:close].strip()
    names: list[str] = []
    for piece in split_top(inner, angles=True) if inner else []:
        left, eq, right = piece.partition("=")
        lm, rm = _OPERAND_EXACT.match(left.strip()), _OPERAND_EXACT.match(right.strip())
        if not eq or lm is None or rm is None or lm.group(2):
            raise ScanError(f"expected '%iterArg = %init' in a while, got {piece.strip()[:40]!r}")
        names.append(lm.group(1))
        syntax.operands.append((rm.group(1), int(rm.group(2)) if rm.group(2) else None))
    types = syntax.types or []
    if len(types) != len(names):
        raise ScanError(f"expected {len(names)} types after ':' for the while's values, got {len(types)}")
    syntax.block_args = list(zip(names, types))


def _normalize(syntax: OpSyntax) -> None:
    """Fills the attributes analyses read whatever the form: direction, literal."""
    attrs = syntax.attributes
    if syntax.opcode == "compare":
        direction = attrs.get("comparison_direction", "")
        m = _DIRECTION.search(direction)
        attrs["direction"] = m.group(1) if m else direction.strip()
    if syntax.opcode == "constant" and "value" in attrs:
        value = attrs["value"]
        colon = top_level_find(value, " : ", angles=True, last=True)
        value = (value[:colon] if colon >= 0 else value).strip()
        m = _DENSE.match(value)
        attrs["literal"] = m.group(1).strip() if m else value
