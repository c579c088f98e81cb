"""Parser of StableHLO / MHLO MLIR text (``jax.jit(f).lower(x).as_text()``, pretty or generic).

Every ``func.func`` becomes a Computation; every region of an op (while cond/body, case
branches, reduce bodies, ...) becomes a Computation of its own named
``<parent>/<opcode>.<result>/<label>`` (``main/while.1/body``) that the op calls, so loops and
calls look the same as in HLO. MLIR prints one op per line with regions on the lines between
``{`` and ``}``, so the parser reads line by line and keeps a stack of open functions/regions.
"""

from __future__ import annotations

import re

from hloscope.hlo.build import build_module
from hloscope.hlo.errors import ParseError, ScanError
from hloscope.hlo.frames import user_source
from hloscope.hlo.mlir_locs import LocResolver
from hloscope.hlo.mlir_ops import (TERMINATORS, OpSyntax, generic_tail, parse_args, parse_attr_dict, parse_op,
                                   read_type, result_shape, set_signature, split_loc)
from hloscope.hlo.mlir_scope import EMPTY, Frame, OpenOp, Scope, fill_applies_body, region_label
from hloscope.hlo.model import Alias, Computation, HloModule, Instruction, NodeKey, Shape
from hloscope.hlo.scan import blank_strings, find_close, split_top, strip_strings, unquote
from hloscope.hlo.sharding import mlir_global_reason
from hloscope.hlo.shapes import parse_mlir_type

_MODULE = re.compile(r'module(?:\s+@([\w$.\-]+|"[^"]*"))?')
_FUNC = re.compile(r'(?:func\.func|func)\s+(?:(public|private|nested)\s+)?@([\w$.\-]+|"[^"]*")\s*(?=\()')
_BLOCK = re.compile(r"\^[\w$.\-]+")
# The common op line, '%3 = stablehlo.add %1, %2 : tensor<8x16xf32> loc(#loc4)': one result,
# value operands only, plain tensor types, an aliased or no location. It is read here in one
# match; every other line (and this one where the next line might go on with it) goes through
# _Joiner, _line and parse_op, which give the same instruction for it (test_hlo_line_path).
_TENSOR = r"tensor<[\w?]*>"
_SIMPLE_OP = re.compile(r"%([\w$.\-]+)\s*=\s*([A-Za-z_][\w$]*\.[\w$.]+)\s+(%[\w$.\-]+(?:#\d+)?(?:\s*,\s*%[\w$.\-]+"
                        r"(?:#\d+)?)*)\s+:\s+(" + _TENSOR + r"(?:\s*,\s*" + _TENSOR + r")*)"
                        r"(?:\s+loc\((#[\w.$\-]+|unknown)\))?")
_SIMPLE_OPERAND = re.compile(r"%([\w$.\-]+)(?:#(\d+))?")
_SPECIAL_OPS = ("compare", "constant", "while", "return")  # parse_op gives these more than names
_CONTINUATION = re.compile(r"([A-Za-z_]\w*)\s*((?:\(.*\))?)\s*\{$")
_TYPE_ALIAS = re.compile(r"(![\w.$\-]+)\s*=\s*(.*)$")
_TYPE_USE = re.compile(r"(![\w.$\-]+)")
_ALIAS_DEF = re.compile(r"(#[\w.$\-]+)\s*=\s*(.*)$")
_MODULE_OP = re.compile(r'[A-Za-z_][\w$]*\.[\w$.]+\s|"[\w$.]+"')
_SYMBOL_LIST = re.compile(r'@([\w$.\-]+|"[^"]*")')
# A donated argument: '%arg0: tensor<..> {tf.aliasing_output = 0 : i32}' (jax donate_argnums).
_ALIASING_OUTPUT = re.compile(r"\btf\.aliasing_output\s*=\s*(\d+)")


def _net_open(t: str) -> int:
    """Open ( [ < of one line, strings and '->' not counted."""
    if '"' in t:
        t = strip_strings(t)
    return t.count("(") - t.count(")") + t.count("[") - t.count("]") + t.count("<") - t.count(">") + t.count("->")


def _net_curly(t: str) -> int:
    if '"' in t:
        t = strip_strings(t)
    return t.count("{") - t.count("}")


def _uncomment(t: str) -> str:
    """``t`` without a ``// comment`` outside strings."""
    blank = t if '"' not in t else _BLANKED.sub(lambda m: '"' + "_" * (len(m.group()) - 2) + '"', t)
    k = blank.find("//")
    return t if k < 0 else t[:k].rstrip()


_BLANKED = re.compile(r'"(?:[^"\\\n]|\\.)*"')
# A line that starts a statement of its own (not the rest of the one before).
_STATEMENT_START = re.compile(r'[%"}^#]|//|(?:func|return|module)\b|[A-Za-z_][\w$]*\.[\w$.]+(?:[\s(]|$)')
# 'key = value' of an attribute dictionary whose '{' ended the line before.
_ATTR_ENTRY = re.compile(r'(?:[A-Za-z_][\w$.\-]*|"[^"]*")\s*=')


# Where a second statement may start on a line: a result definition '%x =' / '%x:2 =' / '%a, %b
# =' or a terminator, after white space (_second_statement checks it is outside brackets).
_NEXT_STATEMENT = re.compile(r"\s(?=%[\w$.\-]+(?::\d+)?(?:\s*,\s*%[\w$.\-]+(?::\d+)?)*\s*=[^=]"
                             r"|(?:func\.return|return|stablehlo\.return|mhlo\.return)\b)")


def _second_statement(t: str) -> int:
    """Index in ``t`` where a second statement starts, outside brackets and strings (MLIR is
    not line-based: XLA's own tests write '%0 = stablehlo.add ..  func.return %0 : ..'); 0
    when there is none."""
    if t.count("=") < 2 and "return" not in t[1:]:
        return 0
    try:
        blank = blank_strings(t)
    except ScanError:
        return 0  # an unterminated string: the statement's own reading reports it
    for m in _NEXT_STATEMENT.finditer(blank, 1):
        head = blank[:m.start()].rstrip()
        if not head or head.endswith(","):  # '%a, %b = ...': one statement's results
            continue
        arrows = head.count("->")
        if (head.count("(") == head.count(")") and head.count("[") == head.count("]")
                and head.count("{") == head.count("}") and head.count("<") == head.count(">") - arrows):
            return m.start() + 1
    return 0


class _Joiner:
    """Decides whether an MLIR statement goes on on the next line: MLIR is not line-based, and
    other tools wrap operands, types, attribute dictionaries and func headers.

    It does while ( [ < stay open (a '{' at the end and a '}' at the start are regions and do
    not count, nor a trailing '({' / leading '})'), after a line ending in ',', '=' or ':',
    before a line starting with ':', '->' or 'attributes', into an attribute dictionary opened
    at the end of a line (then '{' '}' count), and, for an op with results whose ': type' has
    not come yet, before a line that does not start a statement of its own."""

    def __init__(self, first: str) -> None:
        self.first = first
        self.last = first
        self.opened = _net_open(first) - first.endswith("({") + first.startswith("})")
        self.curly: int | None = None  # open { } once inside an attribute dictionary
        if not first.endswith("{") and "{" in first and _net_curly(first) > 0:
            self.curly = _net_curly(first)  # '"op"(%a) {key = 1,' and the rest below
        eq = first.find("=") if first.startswith("%") else -1
        self.typed = eq < 0 or ":" in strip_strings(first[eq + 1:])

    def goes_on(self, following: str) -> bool:
        last, nxt = self.last, following.strip()
        if self.curly is not None and self.curly > 0:
            return True
        if self.opened > 0:
            return True
        if last.endswith((",", "=", "->")) or (last.endswith(":") and not self.first.startswith("^")):
            return True
        if nxt.startswith((":", "->")) and not last.endswith("{"):
            return True
        if nxt.startswith("attributes") and nxt[10:11] in (" ", "{"):
            return True
        if last.endswith("{") and not last.endswith("({") and (
                _ATTR_ENTRY.match(nxt) or nxt.startswith(("} :", "}:"))):  # '{ key = ..' / '{ } : types'
            self.curly = 1
            return True
        if nxt.startswith("{") and not last.endswith("{"):  # no statement starts with '{': attributes
            self.curly = 0
            return True
        if not self.typed and not last.endswith("{") and nxt and not _STATEMENT_START.match(nxt):
            return True
        return False

    def add(self, piece: str) -> None:
        self.last = piece
        self.opened += _net_open(piece) - piece.endswith("({")
        if self.curly is not None:
            net = _net_curly(piece)
            if piece.endswith("{") and self.curly + net == 1:
                self.curly = 0  # '}} {': the dictionary closes and the body (a region) opens
            else:
                self.curly += net
        if not self.typed and ":" in strip_strings(piece):
            self.typed = True


def parse_stablehlo(text: str) -> HloModule:
    """Parses StableHLO/MHLO MLIR text into an HloModule (dialect 'stablehlo')."""
    return _MlirParser(text).parse()


class _MlirParser:
    def __init__(self, text: str, by_line: bool = True) -> None:
        self.text = text
        self.lines = text.splitlines()
        self.by_line = by_line  # False: every line through the general path (tests)
        self.stack: list[Frame] = []
        self.scopes: list[Scope] = []
        self.by_name: dict[str, Scope] = {}
        self.funcs: list[tuple[str, str]] = []  # (name, visibility)
        self.declared: set[str] = set()
        self.module_name: str | None = None
        self.locs = LocResolver()
        self.pending: OpenOp | None = None
        self.aliases: dict[str, list[Alias]] = {}  # function -> its donated arguments
        self.type_aliases: dict[str, str] = {}  # '!name' -> the type it stands for

    def parse(self) -> HloModule:
        lines = self.lines
        n = len(lines)
        i = 0
        rest: str | None = None  # a second statement on the line just read
        while i < n or rest is not None:
            if rest is not None:
                t, rest = rest, None
            else:
                t = lines[i].strip()
                start = i
                i += 1
                if not t or t.startswith("//"):
                    continue
                if "//" in t:  # a trailing comment ('^bb0(..): // no predecessors')
                    t = _uncomment(t)
                if t.endswith("( {"):  # older MLIR printed a generic op's regions as '( {'
                    t = t[:-3].rstrip() + "({"
            try:
                # _SIMPLE_OP matches whole lines only, so a line it takes holds one statement.
                if self.by_line and t.startswith("%") and self._simple_op(t, i, start + 1):
                    continue
                cut = _second_statement(t)
                if cut > 0:  # '%0 = stablehlo.add %a, %b : tensor<4xf32>  func.return %0 : ..'
                    t, rest = t[:cut].rstrip(), t[cut:].strip()
                    self._line(t, start + 1)
                    continue
                # One statement may span several lines (see _Joiner).
                joiner = _Joiner(t)
                if i < n and joiner.goes_on(self._peek(i)):
                    parts = [t]
                    while i < n and joiner.goes_on(self._peek(i)):
                        piece = lines[i].strip()
                        i += 1
                        if "//" in piece:
                            piece = _uncomment(piece)
                        if piece:
                            parts.append(piece)
                            joiner.add(piece)
                    t = " ".join(parts)
                self._line(t, start + 1)
            except ScanError as e:
                raise ParseError(str(e), start + 1, lines[start]) from None
        if self.stack:
            frame = self.stack[-1]
            what = frame.scope.name if frame.scope is not None else "the module"
            raise ParseError(f"expected '}}' to close {what} before the end of the input",
                             frame.lineno, self.lines[frame.lineno - 1])
        return self._finish()

    def _simple_op(self, t: str, i: int, lineno: int) -> bool:
        """Reads ``t`` if it is the common op line (_SIMPLE_OP) in a function or region and the
        next line (index ``i``) starts a statement of its own; False: the general path reads it."""
        m = _SIMPLE_OP.fullmatch(t)
        if m is None or not self.stack or self.stack[-1].kind == "module":
            return False
        name, op, args, types, loc = m.groups()
        if op.rpartition(".")[2] in _SPECIAL_OPS or "applies" in args:
            return False
        if i < len(self.lines):
            nxt = self.lines[i].strip()
            if (not nxt or nxt.startswith(("//", ":", "->", "{"))
                    or (nxt.startswith("attributes") and nxt[10:11] in (" ", "{"))):
                return False  # see _Joiner.goes_on
            if nxt.endswith("{") or "//" in nxt:
                return False  # it may open a region of this op ('cond {'): see _line's pending
        # What _instruction does for this one-result op, inlined (most of a large module's
        # lines come here). Anything unusual (a name defined twice, an unknown operand, a bad
        # result number) is left to the general path, which says what is wrong.
        scope = self.stack[-1].scope
        if name in scope.values or op in TERMINATORS:
            return False
        pairs = _SIMPLE_OPERAND.findall(args)
        operands: list[str] = []
        results: list[int | None] = []
        keys: list[NodeKey] = []
        for value, k in pairs:
            found = scope.lookup(value)
            if found is None:
                return False
            owner, (inst_name, first, count, total) = found
            number = int(k) if k else 0
            if number >= count:
                return False
            operands.append(inst_name)
            results.append(first + number if total > 1 else None)
            keys.append((owner.name, inst_name))
        type_list = types.split(",")
        inst = Instruction(
            name=name, opcode=op.partition(".")[2], shape=parse_mlir_type(type_list[-1]),
            computation=scope.name, operands=operands, called_computations=[],
            attributes={"asm": args, "mlir_op": op}, op_name=None, source_file=None,
            source_line=None, position=len(scope.instructions), is_root=False, operand_results=results,
        )
        scope.add(inst, keys, lineno, loc)
        scope.values[name] = (name, 0, 1, 1)
        self.pending = None  # the next line opens no region of this op (checked above)
        return True

    def _expand(self, t: str) -> str:
        """``t`` with the type aliases defined so far (``!tuple = tuple<..>``) written out."""
        if not self.type_aliases:
            return t
        return _TYPE_USE.sub(lambda m: self.type_aliases.get(m.group(1), m.group()), t)

    def _peek(self, i: int) -> str:
        """Line ``i``, or the first line from ``i`` on that is neither blank nor a comment."""
        for j in range(i, min(i + 64, len(self.lines))):
            t = self.lines[j].strip()
            if t and not t.startswith("//"):
                return t
        return self.lines[i].strip()

    def _line(self, t: str, lineno: int) -> None:
        pending, self.pending = self.pending, None
        top = self.stack[-1] if self.stack else None
        if t.startswith("#"):
            if top is not None and top.kind != "module":
                raise ScanError("expected an operation (attribute aliases belong at the top level)")
            m = _ALIAS_DEF.match(t)
            if m is None:
                raise ScanError("expected '#alias = <attribute>'")
            if m.group(2).startswith("loc("):
                self.locs.define(m.group(1), m.group(2), lineno)
            return
        if t.startswith("!") and (top is None or top.kind == "module"):
            m = _TYPE_ALIAS.match(t)
            if m is None:
                raise ScanError("expected '!alias = <type>'")
            self.type_aliases[m.group(1)] = self._expand(m.group(2))
            return
        if self.type_aliases and "!" in t:
            t = self._expand(t)
        if t.startswith("}"):
            self._close(t[1:].strip(), lineno)
        elif top is None or top.kind == "module":
            self._top_level(t, lineno, top)
        elif _FUNC.match(t) or t.startswith('"func.func"'):
            raise ScanError(f"expected '}}' to close {top.scope.name} (opened on line {top.lineno}) "
                            "before the next function")
        elif t.startswith("^"):
            self._block(t, top.scope, lineno)
        elif pending is not None and _CONTINUATION.match(t):
            self._open_region(pending, lineno, _CONTINUATION.match(t).group(2))
        else:
            self._op(t, lineno, top.scope)

    def _new_scope(self, name: str, parent: Scope | None, lineno: int) -> Scope:
        if name in self.by_name:
            where = self.by_name[name].lineno
            raise ScanError(f"expected a new function name; @{name} is already defined on line {where}")
        scope = Scope(name, parent, lineno)
        self.scopes.append(scope)
        self.by_name[name] = scope
        return scope

    def _top_level(self, t: str, lineno: int, top: Frame | None) -> None:
        if _MODULE.match(t) and (len(t) == 6 or not (t[6].isalnum() or t[6] in "_.")):
            if top is not None or not t.endswith("{"):
                raise ScanError("expected 'module @name attributes {...} {' once, at the top")
            split_top(t[:-1], angles=True)  # only checks brackets and strings
            name = _MODULE.match(t).group(1)
            self.module_name = unquote(name) if name and name.startswith('"') else name
            self.stack.append(Frame("module", lineno, False))
        elif t.startswith('"builtin.module"'):
            if top is not None or not t.endswith("({"):
                raise ScanError("expected '\"builtin.module\"() ... ({' once, at the top")
            name = parse_op(t[:-2].rstrip(), has_regions=True).attributes.get("sym_name")
            self.module_name = unquote(name) if name and name.startswith('"') and len(name) > 1 else name
            self.stack.append(Frame("module", lineno, True))
        elif _FUNC.match(t):
            self._func(t, _FUNC.match(t), lineno)
        elif t.startswith('"func.func"'):
            self._generic_func(t, lineno)
        elif _MODULE_OP.match(t) and not t.endswith("{"):
            # Another dialect's module-level op (sdy.mesh ...), inside a module or in a text of
            # top-level ops without one: skipped.
            split_top(t, angles=True)
        else:
            raise ScanError("expected 'module @name {', 'func.func @name(...) {' or '}' here")

    def _func(self, t: str, m: re.Match[str], lineno: int) -> None:
        name = unquote(m.group(2)) if m.group(2).startswith('"') else m.group(2)
        close = find_close(t, m.end(), angles=True)
        try:
            args = parse_args(t[m.end() + 1:close])
        except ScanError:
            # 'func.func @main(tensor<4xf32>) {' then '^bb0(%arg0: tensor<4xf32>):': the
            # arguments are named by the entry block's label.
            pieces = split_top(t[m.end() + 1:close], angles=True)
            if not all(read_type(p.strip(), 0)[1] == len(p.strip()) for p in pieces):
                raise
            args = []
        rest = t[close + 1:].strip()
        if not rest.endswith("{"):
            split_top(rest, angles=True)
            self.declared.add(name)  # an external declaration: no body, no computation
            return
        split_top(rest[:-1], angles=True)
        scope = self._new_scope(name, None, lineno)
        self.funcs.append((name, m.group(1) or "public"))
        for number, (arg, type_text, loc) in enumerate(args):
            scope.add_param(arg, parse_mlir_type(type_text), loc, number, lineno)
        if "tf.aliasing_output" in t:
            pieces = split_top(t[m.end() + 1:close], angles=True)
            self.aliases[name] = [Alias((int(found.group(1)),), number, (), "must-alias")
                                  for number, piece in enumerate(pieces)
                                  for found in [_ALIASING_OUTPUT.search(piece)] if found]
        self.stack.append(Frame("func", lineno, False, scope))

    def _generic_func(self, t: str, lineno: int) -> None:
        body, _ = split_loc(t)
        has_body = body.endswith("({")
        syntax = parse_op(body[:-2].rstrip() if has_body else body, has_regions=has_body)
        raw = syntax.attributes.get("sym_name", "")
        if not (raw.startswith('"') and raw.endswith('"') and len(raw) > 1):
            raise ScanError("expected sym_name = \"<name>\" on a generic func.func")
        name = unquote(raw)
        if not has_body:
            self.declared.add(name)
            return
        scope = self._new_scope(name, None, lineno)
        visibility = unquote(syntax.attributes.get("sym_visibility", '"public"'))
        self.funcs.append((name, visibility))
        self.stack.append(Frame("func", lineno, True, scope))

    def _block(self, t: str, scope: Scope, lineno: int) -> None:
        m = _BLOCK.match(t)
        rest = t[m.end():] if m else ""
        args = []
        if rest.startswith("("):
            close = find_close(rest, 0, angles=True)
            args = parse_args(rest[1:close])
            rest = rest[close + 1:]
        if m is None or rest.strip() != ":":
            raise ScanError("expected a block label like '^bb0(%arg0: tensor<f32>):'")
        numbers = sum(1 for i in scope.instructions if i.opcode == "parameter")
        for k, (name, type_text, loc) in enumerate(args):
            scope.add_param(name, parse_mlir_type(type_text), loc, numbers + k, lineno)

    def _op(self, t: str, lineno: int, scope: Scope) -> None:
        body, loc = split_loc(t)
        if body.endswith("({"):  # generic op whose regions follow; types come after them
            syntax = parse_op(body[:-2].rstrip(), has_regions=True)
            op = OpenOp(self._instruction(syntax, scope, lineno, loc, deferred=True), scope, syntax, True, lineno)
            op.deferred = True
            self._open_region(op, lineno, "")
        elif body.endswith("{"):  # pretty op with a region, maybe '(%a: t) {' region arguments
            head, region_args = body[:-1].rstrip(), ""
            k = head.rfind("(%")
            if k >= 0 and head.endswith(")") and find_close(head, k, angles=True) == len(head) - 1:
                head, region_args = head[:k].rstrip(), head[k:]
            syntax = parse_op(head)
            op = OpenOp(self._instruction(syntax, scope, lineno, loc, deferred=True), scope, syntax, False, lineno)
            op.deferred = True
            self._open_region(op, lineno, region_args)
        else:
            syntax = parse_op(body)
            inst = self._instruction(syntax, scope, lineno, loc)
            if "applies" in syntax.attributes:
                reducer = self._new_scope(f"{scope.name}/{inst.opcode}.{inst.name}/body", scope, lineno)
                inst.called_computations.append(reducer.name)
                fill_applies_body(reducer, syntax, lineno)
            self.pending = OpenOp(inst, scope, syntax, False, lineno)

    def _instruction(self, syntax: OpSyntax, scope: Scope, lineno: int, loc: str | None,
                     deferred: bool = False) -> Instruction:
        position = len(scope.instructions)
        for value, _ in syntax.results:
            if value in scope.values:
                where = scope.lines.get(scope.values[value][0], "?")
                raise ScanError(f"expected a new value name; %{value} is already defined on line {where}")
        if syntax.results:
            name = syntax.results[0][0]
        else:
            name = "return" if syntax.is_terminator else f"{syntax.opcode}.{position}"
            while name in scope.index or name in scope.values:
                name = f"{name}.{position}"
        operands: list[str] = []
        results: list[int | None] = []
        keys: list[NodeKey] = []
        for value, k in syntax.operands:
            found = scope.lookup(value)
            if found is None:
                raise ScanError(f"expected %{value} to be defined before it is used")
            owner, (inst_name, first, count, total) = found
            if k is not None and k >= count:
                raise ScanError(f"expected a result number below {count} for %{value}, got #{k}")
            operands.append(inst_name)
            results.append(first + (k or 0) if total > 1 else None)
            keys.append((owner.name, inst_name))
        if deferred:
            shape = EMPTY
        elif syntax.is_terminator:
            shape = self._terminator_shape(syntax, keys, results)
        else:
            shape = result_shape(syntax)
        attributes = dict(syntax.attributes)
        attributes["mlir_op"] = syntax.op
        inst = Instruction(
            name=name, opcode=syntax.opcode, shape=shape, computation=scope.name, operands=operands,
            called_computations=[], attributes=attributes, op_name=None, source_file=None,
            source_line=None, position=position, is_root=False, operand_results=results,
        )
        scope.add(inst, keys, lineno, loc)
        first, total = 0, syntax.count
        for value, count in syntax.results:
            scope.values[value] = (name, first, count, total)
            first += count
        if syntax.symbols:
            scope.symbols[name] = syntax.symbols
        return inst

    def _terminator_shape(self, syntax: OpSyntax, keys: list[NodeKey], results: list[int | None]) -> Shape:
        if syntax.functional:  # generic '"func.return"(%3) : (tensor<..>) -> ()'
            shapes = [parse_mlir_type(t) for t in syntax.inputs]
        elif syntax.types is not None:  # pretty 'return %3 : tensor<..>'
            shapes = [parse_mlir_type(t) for t in syntax.types]
        else:
            shapes = []
            for (comp, name), r in zip(keys, results):
                shape = self.by_name[comp].index[name].shape
                ok = r is not None and shape.is_tuple and r < len(shape.elements)
                shapes.append(shape.elements[r] if ok else shape)
        return shapes[0] if len(shapes) == 1 else Shape("tuple", (), None, tuple(shapes))

    def _open_region(self, op: OpenOp, lineno: int, args_text: str) -> None:
        inst = op.inst
        label = region_label(inst.opcode, len(op.regions))
        scope = self._new_scope(f"{op.scope.name}/{inst.opcode}.{inst.name}/{label}", op.scope, lineno)
        op.regions.append(scope.name)
        inst.called_computations.append(scope.name)
        if inst.opcode == "while" and label in ("cond", "body"):
            inst.attributes["condition" if label == "cond" else "body"] = scope.name
        for number, (name, type_text) in enumerate(op.syntax.block_args):
            scope.add_param(name, parse_mlir_type(type_text), None, number, lineno)
        text = args_text.strip()
        while text:  # 'reducer(%a: t, %b: t) (%c: t, %d: t)': one or more argument groups
            if not text.startswith("("):
                raise ScanError(f"expected '(%arg: type, ...)' before '{{', got {text[:40]!r}")
            close = find_close(text, 0, angles=True)
            for name, type_text, loc in parse_args(text[1:close]):
                scope.add_param(name, parse_mlir_type(type_text), loc, len(scope.instructions), lineno)
            text = text[close + 1:].strip()
        self.stack.append(Frame("region", lineno, op.generic, scope, op))

    def _close(self, rest: str, lineno: int) -> None:
        if not self.stack:
            raise ScanError("expected no '}' here: nothing is open")
        frame = self.stack.pop()
        rest, loc = split_loc(rest)
        if frame.kind != "region":
            if frame.scope is not None:
                frame.scope.end()
            if frame.generic and not rest.startswith(")"):
                raise ScanError("expected '})' to end a generic operation's region")
            if frame.generic:
                generic_tail(rest[1:], OpSyntax([], "", True))  # ': () -> ()': checked, not kept
            elif rest:
                raise ScanError(f"expected nothing after '}}', got {rest[:40]!r}")
            return
        op = frame.op
        frame.scope.end()
        if op.generic:
            if rest.startswith(","):
                if rest[1:].strip() != "{":
                    raise ScanError("expected '}, {' between the regions of an operation")
                self._open_region(op, lineno, "")
                return
            if not rest.startswith(")"):
                raise ScanError("expected '})' or '}, {' after a region of a generic operation")
            generic_tail(rest[1:], op.syntax)
        else:
            m = _CONTINUATION.match(rest) if rest else None
            if m is not None:
                self._open_region(op, lineno, m.group(2))
                return
            if rest.startswith("{"):  # '} {attr = ..} : types': attributes after the region
                end = find_close(rest, 0, angles=True)
                op.syntax.attributes.update(parse_attr_dict(rest[:end + 1]))
                rest = rest[end + 1:].strip()
            if rest.startswith(":"):
                set_signature(op.syntax, rest[1:])
            elif rest:
                raise ScanError(f"expected 'do {{', ': <types>' or nothing after '}}', got {rest[:40]!r}")
            self.pending = op  # a pretty op may take one more region on the next line
        self._complete(op, loc)

    def _complete(self, op: OpenOp, loc: str | None) -> None:
        inst = op.inst
        if loc is not None:
            op.scope.locs[inst.name] = loc  # 'while(...) ... } loc(#loc50)': the op's location
        if op.deferred:
            inst.shape = result_shape(op.syntax)
            inst.attributes.update(op.syntax.attributes)

    def _finish(self) -> HloModule:
        if not self.funcs:
            raise ParseError("expected at least one func.func with a body", len(self.lines) or 1, None)
        names = [name for name, _ in self.funcs]
        public = [name for name, visibility in self.funcs if visibility == "public"]
        entry = "main" if "main" in names else (public or names)[0]
        for alias, lineno in self.locs.aliases():
            try:
                self.locs.resolve_alias(alias)
            except ScanError as e:
                raise ParseError(str(e), lineno, self.lines[lineno - 1]) from None
        operand_keys: dict[NodeKey, list[NodeKey]] = {}
        loop_parts: dict[NodeKey, tuple[str, str]] = {}
        index: dict[NodeKey, Instruction] = {}
        calling: list[Instruction] = []
        for scope in self.scopes:
            for inst in scope.instructions:
                lineno = scope.lines[inst.name]
                try:
                    if inst.opcode == "custom_call" or inst.name in scope.symbols:
                        self._calls(inst, scope.symbols.get(inst.name, []))
                    inst.op_name, inst.source_file, inst.source_line, stack = self.locs.resolve(scope.locs[inst.name])
                    inst.user_source = user_source(stack)
                    if inst.opcode == "while" and not {"body", "condition"} <= inst.attributes.keys():
                        raise ScanError("expected a while with a cond region and a body region")
                except ScanError as e:
                    raise ParseError(str(e), lineno, self.lines[lineno - 1]) from None
                key = (scope.name, inst.name)
                operand_keys[key] = scope.keys[inst.name]
                index[key] = inst
                if inst.called_computations:
                    calling.append(inst)
                if inst.opcode == "while":
                    loop_parts[key] = (inst.attributes["body"],
                                       inst.attributes["condition"])
        computations = [Computation(s.name, s.instructions, s.name == entry,
                                    s.parent.name if s.parent else None) for s in self.scopes]

        def fail(reason: str, key: NodeKey) -> ParseError:
            lineno = self.by_name[key[0]].lines[key[1]]
            return ParseError(reason, lineno, self.lines[lineno - 1])

        # An operand is looked up when its op is read, so it is defined earlier in the function
        # or in an enclosing one: no function has a forward reference (forward=set()).
        module = build_module(self.module_name or entry, "stablehlo", computations, entry, False,
                              operand_keys, loop_parts, fail, forward=set(), index=index, calling=calling)
        module.input_output_alias = self.aliases.get(entry, [])
        module.sizes_are_global = mlir_global_reason(self.text)
        return module

    def _calls(self, inst: Instruction, symbols: list[str]) -> None:
        """Adds the functions an op names with @symbol (call, composite, custom_call's list)."""
        if inst.opcode == "custom_call":  # its @target is a kernel name, not a function
            listed = inst.attributes.get("called_computations", "")
            symbols = [unquote(s) if s.startswith('"') else s for s in _SYMBOL_LIST.findall(listed)]
        for k, symbol in enumerate(symbols):
            if symbol in self.by_name and self.by_name[symbol].parent is None:
                inst.called_computations.append(symbol)
            elif inst.opcode == "call" and k == 0 and symbol not in self.declared:
                # The callee is the first symbol; later ones are attributes' (@mesh of a sharding).
                raise ScanError(f"expected function @{symbol} to be defined")
