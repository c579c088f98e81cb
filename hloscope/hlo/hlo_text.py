"""Parser of XLA HLO text (``compiled.as_text()``, ``*after_optimizations.txt`` dumps)."""

from __future__ import annotations

import re

from hloscope.hlo.build import build_module
from hloscope.hlo.errors import ParseError, ScanError
from hloscope.hlo.frames import user_source
from hloscope.hlo.model import Alias, Computation, HloModule, Instruction, NodeKey, Shape
from hloscope.hlo.scan import STRING, balance, blank_strings, find_close, split_top, strip_comments, unquote
from hloscope.hlo.sharding import hlo_global_reason
from hloscope.hlo.shapes import parse_hlo_shape

# Some CPython 3.11 releases' re get possessive repeats wrong (Debian 12's system 3.11.2 does;
# pyenv's 3.11.7 does not): this probe matches there, and _LINE read "k={[}" as an attribute (the general
# path refuses it; found by test_hlo_line_path under /usr/bin/python3). Such an interpreter
# reads every line through the general path. (Greedy repeats instead would be correct but
# backtrack for minutes on long lines.)
_LINE_PATH_OK = re.fullmatch(r'\{(?:[^{}()\[\]"/]++|\[[^{}()\[\]"/]*+\])*+\}', "{[}") is None

_HEADER = re.compile(r"HloModule\s+([^\s,]+)\s*(,.*)?$")
# One entry of input_output_alias={ {0}: (0, {}, may-alias), {1}: (2, {0}) }.
_ALIAS = re.compile(r"\{([\d,\s]*)\}\s*:\s*\(\s*(\d+)\s*,\s*\{([\d,\s]*)\}\s*(?:,\s*([\w\-]+)\s*)?\)")
_COMP = re.compile(r"(ENTRY\s+)?%?([\w.\-]+)")
_HEADER_LIKE = re.compile(r"(ENTRY\s+)?%?[\w.\-]+\s*(\(|\{$)")  # no '=': not an instruction
_INSTR = re.compile(r"(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")
_INFERRED = Shape("tuple", (), None, ())  # placeholder until _infer_shapes
# A line that goes on with the statement before: ', attr=..' or 'opcode(' (no 'name =' first).
_GOES_ON = re.compile(r",|[a-z][\w\-]*\(")
_NAME = re.compile(r"%?([\w.\-]+)$")
# The common instruction: array shape, so name, shape and opcode come out of one match.
_FAST = re.compile(r"(ROOT\s+)?%?([\w.\-]+)\s*=\s*([a-z][a-z0-9]*\[[^\]\[]*\](?:\{[^{}]*\})?)\s*([\w\-]+)\(")
_TYPED = r"\s*(?:[a-z][a-z0-9]*\[[^\]\[]*\](?:\{[^{}]*\})?\s+)?%?[\w.\-]+\s*"
_TYPED_OPERANDS = re.compile(_TYPED + r"(?:," + _TYPED + r")*")
_OPERAND_SHAPE = re.compile(r"[a-z][a-z0-9]*\[[^\]\[]*\](?:\{[^{}]*\})?")
_SIMPLE_OPERANDS = re.compile(r"\s*%?[\w.\-]+\s*(?:,\s*%?[\w.\-]+\s*)*$")
_ATTR_START = re.compile(r",\s*([\w.\-]+)=")
_META = re.compile(r'(\w+)=("[^"\\]*+(?:\\.[^"\\]*+)*+"|[^\s}]+)')
_SECTION_ENTRY = re.compile(r"(\d+)\s+(.*)$")
_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
# Attributes whose value names computations (``select``/``scatter`` only on select-and-scatter).
# One whole instruction line in the form XLA prints, matched in one go (most lines of a large
# module): name, shape (array or tuple of arrays), opcode, operands that are names with or without
# their shapes, and attributes whose values are a string, a bracket-free word or braces nested at
# most three deep (inside, ( ) and [ ] one deep). No '/' outside strings, so no comment hides in
# it. A line this does not match takes the general path below, which accepts more and reports
# errors; on the lines this matches the two give the same instruction (tests/hloscope/
# test_hlo_parser.py checks that on the fixtures).
_ARRAY_SHAPE = r"[a-z][a-z0-9]*\[[^\]\[/]*+\](?:\{[^{}/]*+\})?"
_LINE_SHAPE = _ARRAY_SHAPE + r"|\((?:[^()/]++|\([^()/]*+\))*+\)"
# Runs of characters and possessive quantifiers: the engine never backtracks into a value.
_STR = r'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
_IN = r'[^{}()\[\]"/]++'  # plain characters inside braces
_BRACE1 = r"\{(?:" + _IN + "|" + _STR + r")*+\}"
_INNER = (_IN + "|" + _STR + r'|\[[^{}()\[\]"/]*+\]|\((?:' + _IN + "|" + _STR + "|" + _BRACE1 + r")*+\)")
_BRACE2 = r"\{(?:" + _INNER + "|" + _BRACE1 + r")*+\}"
_BRACE3 = r"\{(?:" + _INNER + "|" + _BRACE2 + r")*+\}"
_WORD = r'[^,{}()\[\]"/\s]++'
_VALUE = _STR + "|" + r"\{(?:" + _INNER + "|" + _BRACE3 + r")*+\}|" + _WORD + r"(?:\s++" + _WORD + ")*+"
_OPERAND = r"(?:(?:" + _LINE_SHAPE + r")\s+)?%?[\w.\-]+"
_ATTR = r"\s*,\s*[\w.\-]+=\s*(?:" + _VALUE + ")"
# The last attribute is captured on its own (the others go through _LINE_ATTR.findall): it is
# mostly the long metadata={...}, which is then scanned once. The lazy '*?' retries one short
# attribute at a time, each try stopping at its end.
# The first two operands' names are captured on their own (most instructions have at most
# two), the others together: one findall fewer per line.
# Names on this path are ASCII ([\w] tests every character's Unicode category, a tenth of the
# match): a line with another name takes the general path, which reads it the same.
_NAMED_OPERAND = r"(?:(?:" + _LINE_SHAPE + r")\s+)?%?([0-9A-Za-z_.\-]+)"
_LINE = re.compile((r"\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(" + _LINE_SHAPE + r")\s*([\w\-]+)\(\s*((?:"
                    + _NAMED_OPERAND + r"\s*(?:,\s*" + _NAMED_OPERAND + r"\s*((?:,\s*" + _OPERAND
                    + r"\s*)*+))?)?)\)(?:((?:" + _ATTR
                    + r")*?)\s*,\s*([\w.\-]+)=\s*(" + _VALUE + r"))?\s*")
                   .replace(r"[\w.\-]", r"[0-9A-Za-z_.\-]").replace(r"[\w\-]", r"[0-9A-Za-z_\-]"))
_LINE_ATTR = re.compile(r",\s*([\w.\-]+)=\s*(" + _VALUE + ")")
_LINE_OPERAND = re.compile(r"(?:(?:" + _LINE_SHAPE + r")\s+)?%?([\w.\-]+)")
_PARAM = r"[\w.\-]+\s*:\s*(?:" + _LINE_SHAPE + r")\s*"
_SIGNATURE = re.compile(r"\(\s*(?:" + _PARAM + r"(?:,\s*" + _PARAM + r")*+)?\)\s*->\s*(?:" + _LINE_SHAPE + ")")
_GOES_ON_LINE = re.compile(r"\s*(?:,|[a-z][\w\-]*\()")
_CALL_KEYS = frozenset({"calls", "to_apply", "body", "condition", "true_computation",
                        "false_computation", "branch_computations", "called_computations"})


class _Comp:
    """A computation while it is being read."""

    def __init__(self, name: str, is_entry: bool, lineno: int) -> None:
        self.name = name
        self.is_entry = is_entry
        self.lineno = lineno
        self.instructions: list[Instruction] = []
        self.lines: dict[str, int] = {}  # instruction name -> line, for later errors
        self.frames: dict[str, int] = {}  # instruction name -> stack_frame_id


def parse_hlo(text: str) -> HloModule:
    """Parses XLA HLO text into an HloModule (dialect 'hlo'); raises ParseError on bad input."""
    return _HloParser(text).parse()


class _HloParser:
    def __init__(self, text: str, by_line: bool = True) -> None:
        self.lines = text.splitlines()
        self.by_line = by_line and _LINE_PATH_OK  # False: every statement through the general path
        self.comps: list[_Comp] = []
        self.sections: dict[str, dict[int, str]] = {s: {} for s in _SECTIONS}
        self.shapes: dict[str, Shape] = {}
        self.needs_entry = False
        self.header: dict[str, str] = {}
        self.inferred: list[tuple[_Comp, str]] = []  # instructions written without a shape
        self.aliases: list[Alias] = []
        self.metadata: dict[str, tuple[str | None, str | None, int | None, int | None]] = {}
        # Filled as instructions are read, so that _finish and build_module need not walk them all
        # again: the (computation, name) index, each instruction's operand keys, and the
        # instructions _finish must check (calls, or an operand not defined above its user).
        self.index: dict[NodeKey, Instruction] = {}
        self.operand_keys: dict[NodeKey, list[NodeKey]] = {}
        self.checks: list[tuple[_Comp, Instruction]] = []

    def fail(self, expected: str, lineno: int) -> ParseError:
        line = self.lines[lineno - 1] if 1 <= lineno <= len(self.lines) else None
        return ParseError(expected, lineno, line)

    def _code(self, j: int) -> str:
        """Line index ``j`` stripped, without a trailing ``// comment`` (outside strings)."""
        line = self.lines[j].strip()
        if "//" in line:
            try:
                k = blank_strings(line).find("//")
            except ScanError:
                return line  # an unterminated string: _statement reports it
            if k >= 0:
                line = line[:k].rstrip()
        return line

    def _statement(self, i: int, first: str) -> tuple[str, str, int]:
        """The statement starting on line index ``i`` (``first``: that line, see _code), joined
        while brackets stay open, a line ends with ',' or '=' or the next starts with ',' or an
        opcode; the same with its strings blanked (see blank_strings); the next line's index."""
        n = len(self.lines)
        try:
            blank = blank_strings(first)
        except ScanError as e:
            raise self.fail(str(e), i + 1) from None
        # The common statement: one balanced line, the next line not going on with it.
        if (blank.count("(") == blank.count(")") and blank.count("{") == blank.count("}")
                and blank.count("[") == blank.count("]") and "/*" not in blank
                and not blank.endswith((",", "="))
                and (i + 1 >= n or not _GOES_ON.match(self.lines[i + 1].lstrip()))):
            return first, blank, i + 1
        parts: list[str] = []
        blanks: list[str] = []
        depth = 0
        j = i
        n = len(self.lines)
        try:
            while True:
                if j >= n:
                    raise self.fail("expected the brackets of this statement to close "
                                    "before the end of the input", i + 1)
                line = self._code(j)
                blank = blank_strings(line)
                parts.append(line)
                blanks.append(blank)
                depth += sum(balance(blank))
                j += 1
                if depth <= 0:
                    if depth == 0 and j < n and (blank.endswith((",", "=")) or _GOES_ON.match(self.lines[j].lstrip())):
                        continue  # attributes, or the opcode after a long shape, on the next line
                    break
            if depth < 0:
                raise self.fail("expected no unmatched closing bracket", i + 1)
            stmt, blank = " ".join(parts), " ".join(blanks)
            if "/*" in blank:  # XLA's /*index=5*/ comments: drop them, then re-blank
                stmt = strip_comments(stmt)
                blank = blank_strings(stmt)
        except ScanError as e:
            raise self.fail(str(e), i + 1) from None
        return stmt, blank, j

    def _skip_block_comment(self, i: int) -> int:
        """Index of the line after the ``/* ... */`` comment starting line ``i`` (a fuzzer
        module's licence or seed); the comment must end its line."""
        for j in range(i, len(self.lines)):
            k = self.lines[j].find("*/")
            if k >= 0:
                if self.lines[j][k + 2:].strip():
                    raise self.fail("expected nothing after '*/' on the line that ends a comment", j + 1)
                return j + 1
        raise self.fail("expected '*/' to close this comment before the end of the input", i + 1)

    def parse(self) -> HloModule:
        name: str | None = None
        is_scheduled = False
        current: _Comp | None = None
        section: str | None = None
        i = 0
        lines = self.lines
        n = len(lines)
        by_line = self.by_line
        while i < n:
            if current is not None and by_line:
                i = self._line_run(i, current)
                if i >= n:
                    break
            lineno = i + 1
            s = self._code(i)
            if not s:
                i += 1
                continue
            if s.startswith("/*") and current is None:
                i = self._skip_block_comment(i)
                continue
            if current is not None and (s == "}" or (s.startswith("}") and s[1:].lstrip().startswith(","))):
                # '}, execution_thread="x"': attributes of the computation, not kept
                self._close(current)
                current = None
                i += 1
                continue
            if current is not None and s.endswith("{") and _HEADER_LIKE.match(s):
                raise self.fail(f"expected '}}' to close computation {current.name!r} (opened on line "
                                f"{current.lineno}) before the next computation", lineno)
            if current is None and name is not None and section is not None:
                m = _SECTION_ENTRY.match(s)
                if m is not None:
                    self.sections[section][int(m.group(1))] = m.group(2)
                    i += 1
                    continue
            if current is None and name is not None and s in _SECTIONS:
                section = s
                i += 1
                continue
            section = None
            if current is None and name is not None and s.endswith("{"):
                current = self._open(s, lineno)
                i += 1
                continue
            stmt, blank, i = self._statement(i, s)
            try:
                if name is None:
                    name, is_scheduled = self._header(stmt)
                elif current is None:
                    raise ScanError("expected a computation header like "
                                    "'%name (p: f32[2]) -> f32[2] {' or 'ENTRY %main {'")
                else:
                    self._instruction(stmt, blank, current, lineno)
            except ScanError as e:
                raise self.fail(str(e), lineno) from None
        if name is None:
            raise ParseError("expected an 'HloModule <name>' header (the input is empty)", 1, None)
        if current is not None:
            raise self.fail(f"expected '}}' to close computation {current.name!r} "
                            "before the end of the input", current.lineno)
        if not self.comps:
            raise self.fail("expected at least one computation after the HloModule header", n)
        return self._finish(name, is_scheduled)

    def _header(self, stmt: str) -> tuple[str, bool]:
        m = _HEADER.match(stmt)
        if m is None:
            raise ScanError("expected 'HloModule <name>, attribute=value, ...' as the first line")
        attributes = {}
        for piece in split_top(m.group(2)[1:]) if m.group(2) else []:
            key, _, value = piece.strip().partition("=")
            attributes[key.strip()] = value.strip()
        # XLA prints the entry's layout in the header and the ENTRY computation last; a text that
        # promises one and has none was cut short.
        self.needs_entry = "entry_computation_layout" in attributes
        self.header = attributes
        aliases = attributes.get("input_output_alias", "")
        for found in _ALIAS.finditer(aliases):
            self.aliases.append(Alias(_index(found.group(1)), int(found.group(2)), _index(found.group(3)),
                                      found.group(4) or "may-alias"))
        if aliases.strip("{} ") and not self.aliases:
            raise ScanError(f"expected input_output_alias={{ {{0}}: (0, {{}}, may-alias), ... }}, "
                            f"got {aliases[:40]!r}")
        return m.group(1), attributes.get("is_scheduled") == "true"

    def _open(self, s: str, lineno: int) -> _Comp:
        m = _COMP.match(s)
        signature = s[m.end():-1].strip() if m else ""
        try:
            if m is None or (signature and not signature.startswith(("(", ","))):
                raise ScanError("expected a computation header like '%name (p: f32[2]) -> f32[2] {'")
            if not _SIGNATURE.fullmatch(signature):  # the common form needs no scan
                split_top(signature)  # only to check its brackets and strings
        except ScanError as e:
            raise self.fail(str(e), lineno) from None
        return _Comp(m.group(2), bool(m.group(1)), lineno)

    def _close(self, comp: _Comp) -> None:
        if not comp.instructions:
            raise self.fail(f"expected at least one instruction in computation {comp.name!r}", comp.lineno)
        roots = [inst for inst in comp.instructions if inst.is_root]
        if len(roots) > 1:
            raise self.fail(f"expected one ROOT in computation {comp.name!r}, found {len(roots)}",
                            comp.lines[roots[1].name])
        if not roots:  # XLA's own parser makes the last instruction the root
            comp.instructions[-1].is_root = True
        self.comps.append(comp)

    def _line_run(self, i: int, comp: _Comp) -> int:
        """Reads the instruction lines _LINE matches from line index ``i`` on, as _instruction
        would read them but without scanning; returns the index of the first line it left.

        One loop for the run of lines (a large module is nearly all such lines), with what it
        uses bound to locals: a function call per line is a tenth of a parse."""
        lines = self.lines
        n = len(lines)
        match, goes_on = _LINE.fullmatch, _GOES_ON_LINE.match
        m = match(lines[i])
        if m is None:
            return i
        shapes, metadata, line_attr, line_operand = self.shapes, self.metadata, _LINE_ATTR.findall, _LINE_OPERAND.findall
        cname, defined_at, instructions = comp.name, comp.lines, comp.instructions
        setdefault, where = defined_at.setdefault, defined_at.get
        index, operand_keys, checks = self.index, self.operand_keys, self.checks
        call_keys_disjoint = _CALL_KEYS.isdisjoint
        lineno = i + 1
        try:
            while True:
                lineno = i + 1
                # The next line: another instruction line, or one that goes on with this one
                # (then this one is the general path's); a line _LINE matches never goes on.
                if lineno < n:
                    following = match(lines[lineno])
                    if following is None and goes_on(lines[lineno]):
                        return i
                else:
                    following = None
                root, name, text, opcode, inner, first, second, more, rest, last_key, last_value = m.groups()
                shape = shapes.get(text)
                if shape is None:  # a module repeats few distinct shapes: parse each once
                    shape, end = parse_hlo_shape(text)
                    if end != len(text):
                        raise ScanError(f"expected an opcode after the shape {text!r}")
                    shapes[text] = shape
                defined = setdefault(name, lineno)  # no line defines two instructions on this path
                if defined != lineno:
                    raise ScanError(f"expected a new instruction name; {name!r} is already defined "
                                    f"on line {defined}")
                if opcode == "parameter":
                    inner = inner.rstrip()
                    if not inner.isdecimal():
                        raise ScanError("expected parameter(<number>)")
                    operands: list[str] = []
                elif opcode == "constant" or first is None:
                    operands = []
                elif second is None:
                    operands = [first]
                elif more:
                    operands = [first, second, *line_operand(more)]
                else:
                    operands = [first, second]
                called: list[str] = []
                op_name = source_file = source_line = frame = None
                if last_key is None:
                    attributes: dict[str, str] = {}
                else:
                    if rest:
                        attributes = dict(line_attr(rest))
                        attributes[last_key] = last_value
                    else:
                        attributes = {last_key: last_value}
                    if opcode == "select-and-scatter" or not call_keys_disjoint(attributes):
                        called = _called(opcode, attributes)
                    meta = attributes.get("metadata")
                    if meta is not None:
                        found = metadata.get(meta)
                        if found is None:  # fusions repeat their caller's metadata: read each once
                            found = metadata[meta] = _metadata(meta)
                        op_name, source_file, source_line, frame = found
                        if frame is not None and source_file is None:
                            comp.frames[name] = frame
                if opcode == "constant":
                    attributes["literal"] = inner.rstrip()
                elif opcode == "parameter":
                    attributes["parameter_number"] = inner
                elif opcode == "while" and not ("body" in attributes and "condition" in attributes):
                    raise ScanError("expected condition=%cond and body=%body on a while")
                inst = Instruction(name, opcode, shape, cname, operands, called, attributes, op_name, source_file,
                                   source_line, len(instructions), root is not None, [None] * len(operands))
                instructions.append(inst)
                key = (cname, name)
                index[key] = inst
                if operands:
                    if len(operands) == 1:
                        operand_keys[key] = [(cname, first)]
                        there = where(first)
                        if called or there is None or there >= lineno:  # undefined or defined below
                            checks.append((comp, inst))
                    else:
                        operand_keys[key] = [(cname, o) for o in operands]
                        if called:
                            checks.append((comp, inst))
                        else:
                            for operand in operands:
                                there = where(operand)
                                if there is None or there >= lineno:
                                    checks.append((comp, inst))
                                    break
                elif called:
                    checks.append((comp, inst))
                i = lineno
                if following is None:
                    return i
                m = following
        except ScanError as e:
            raise self.fail(str(e), lineno) from None

    def _register(self, comp: _Comp, inst: Instruction, lineno: int) -> None:
        """Indexes an instruction the general path read (what _line_run does for its own) and
        lists it for _finish's checks when it calls computations or an operand is not defined
        above it (the others pass them as they are)."""
        key = (comp.name, inst.name)
        self.index[key] = inst
        if inst.operands:
            self.operand_keys[key] = [(comp.name, o) for o in inst.operands]
        if inst.called_computations or any(comp.lines.get(o, lineno) >= lineno for o in inst.operands):
            self.checks.append((comp, inst))

    def _instruction(self, s: str, blank: str, comp: _Comp, lineno: int) -> None:
        m = _FAST.match(s)
        if m is not None:
            shape = self.shapes.get(m.group(3))
            if shape is None:  # a module repeats few distinct shapes: parse each once
                shape, end = parse_hlo_shape(m.group(3))
                if end != len(m.group(3)):
                    raise ScanError(f"expected an opcode after the shape {m.group(3)!r}")
                self.shapes[m.group(3)] = shape
            opcode, paren = m.group(4), m.end() - 1
        else:
            m = _INSTR.match(s)
            if m is None:
                raise ScanError("expected an instruction "
                                "'[ROOT] %name = shape opcode(operands), attribute=value, ...'")
            if _OPCODE.match(s, m.end()):  # 'gte = get-tuple-element(t), index=0': XLA infers it
                shape, pos = _INFERRED, m.end()
                self.inferred.append((comp, m.group(2)))
            else:
                shape, pos = parse_hlo_shape(s, m.end())
            mo = _OPCODE.match(s, pos)
            if mo is None:
                raise ScanError(f"expected an opcode followed by '(' at column {pos + 1}")
            opcode, paren = mo.group(1), mo.end() - 1
        name = m.group(2)
        if name in comp.lines:
            raise ScanError(f"expected a new instruction name; {name!r} is already defined "
                            f"on line {comp.lines[name]}")
        close = blank.find(")", paren)
        if close < 0 or "(" in blank[paren + 1:close]:  # nested parens: the full scanner
            close = find_close(s, paren)
        inner = s[paren + 1:close].strip()
        attributes = _attributes(s, blank, close + 1)
        operands: list[str] = []
        if opcode == "constant":
            attributes["literal"] = inner
        elif opcode == "parameter":
            if not inner.isdecimal():
                raise ScanError("expected parameter(<number>)")
            attributes["parameter_number"] = inner
        elif inner and _SIMPLE_OPERANDS.match(inner):
            operands = [p.strip().lstrip("%") for p in inner.split(",")]
        elif inner and _TYPED_OPERANDS.fullmatch(inner):  # 'f32[2]{0} %a, f32[2]{0} %b'
            operands = [p.strip().lstrip("%") for p in _OPERAND_SHAPE.sub(" ", inner).split(",")]
        elif inner:
            for k, piece in enumerate(split_top(inner)):
                words = piece.split()
                if len(words) > 1 and piece.rstrip().endswith(")"):
                    # 'reshape(f32[1,8] parameter(0))': an instruction written in place of its
                    # name; it becomes an instruction of its own, just before its user.
                    nested = f"{m.group(2)}.operand{k}"
                    text = f"{nested} = {piece.strip()}"
                    self._instruction(text, blank_strings(text), comp, lineno)
                    operands.append(nested)
                    continue
                found = _NAME.match(words[-1]) if words else None
                if found is None:
                    raise ScanError(f"expected an operand name, got {piece.strip()[:40]!r}")
                operands.append(found.group(1))
        called = _called(opcode, attributes)
        if opcode == "while" and not ("body" in attributes and "condition" in attributes):
            raise ScanError("expected condition=%cond and body=%body on a while")
        op_name, source_file, source_line, frame = _metadata(attributes.get("metadata"))
        inst = Instruction(
            name=name, opcode=opcode, shape=shape, computation=comp.name, operands=operands,
            called_computations=called, attributes=attributes, op_name=op_name,
            source_file=source_file, source_line=source_line,
            position=len(comp.instructions), is_root=bool(m.group(1)),
            operand_results=[None] * len(operands),
        )
        comp.instructions.append(inst)
        comp.lines[name] = lineno
        self._register(comp, inst, lineno)
        if frame is not None and source_file is None:
            comp.frames[name] = frame

    def _infer_shapes(self) -> None:
        """Shapes of instructions written without one, as XLA infers them: a tuple element's
        from its tuple, any other's from its first operand (elementwise ops)."""
        for comp, name in self.inferred:
            inst = next(i for i in comp.instructions if i.name == name)
            by_name = {i.name: i for i in comp.instructions}
            source = by_name.get(inst.operands[0]) if inst.operands else None
            if source is None or source.shape is _INFERRED:
                raise self.fail(f"expected a shape on {name!r} (hloscope infers one only from an "
                                "operand defined before it)", comp.lines[name])
            shape = source.shape
            if inst.opcode == "get-tuple-element":
                index = inst.int_attribute("index", -1)
                if not (shape.is_tuple and 0 <= index < len(shape.elements)):
                    raise self.fail(f"expected index= of a tuple element of {source.name!r}", comp.lines[name])
                shape = shape.elements[index]
            inst.shape = shape

    def _layout_fits(self, comp: _Comp) -> bool:
        """Whether ``comp`` takes the parameters the header's entry_computation_layout lists
        (then, without ENTRY, it is the entry, as XLA takes the last computation; otherwise the
        text was cut short)."""
        layout = self.header.get("entry_computation_layout", "").strip()
        if layout.startswith("{"):
            layout = layout[1:]
        if not layout.startswith("("):
            return False
        try:
            inner = layout[1:find_close(layout, 0)].strip()
            expected = [str(parse_hlo_shape(p)[0]) for p in split_top(inner)] if inner else []
        except ScanError:
            return False
        params = sorted((inst.int_attribute("parameter_number", -1), str(inst.shape))
                        for inst in comp.instructions if inst.opcode == "parameter")
        return [shape for _, shape in params] == expected

    def _finish(self, name: str, is_scheduled: bool) -> HloModule:
        by_name: dict[str, _Comp] = {}
        for comp in self.comps:
            if comp.name in by_name:
                raise self.fail(f"expected a new computation name; {comp.name!r} is already "
                                f"defined on line {by_name[comp.name].lineno}", comp.lineno)
            by_name[comp.name] = comp
        entries = [c for c in self.comps if c.is_entry]
        if len(entries) > 1:
            raise self.fail("expected one ENTRY computation", entries[1].lineno)
        if not entries and self.needs_entry and not self._layout_fits(self.comps[-1]):
            raise self.fail("expected an ENTRY computation (the header has entry_computation_layout; "
                            "is the text cut short?)", len(self.lines))
        entry = entries[0].name if entries else self.comps[-1].name  # as XLA: the last one
        self._infer_shapes()
        loop_parts: dict[NodeKey, tuple[str, str]] = {}
        frames = _StackFrames(self.sections)
        # Computations where an operand may be defined after its user: one on the same line or
        # below (an operand written in place shares its user's line but comes first; such a
        # computation only gets the full check it would not need). Only the instructions the
        # readers listed can fail these checks or name such an operand (see _register).
        forward: set[str] = set()
        for comp, inst in self.checks:
            cname, lines = comp.name, comp.lines
            here = lines[inst.name]
            for operand in inst.operands:
                there = lines.get(operand)
                if there is None:
                    raise self.fail(f"expected operand {operand!r} to be an instruction of "
                                    f"computation {cname!r}", here)
                if there >= here:
                    forward.add(cname)
            if inst.called_computations:
                for callee in inst.called_computations:
                    if callee not in by_name:
                        raise self.fail(f"expected called computation {callee!r} to be defined", here)
                if inst.opcode == "while":
                    loop_parts[(cname, inst.name)] = (_strip(inst.attributes["body"]),
                                                      _strip(inst.attributes["condition"]))
        for comp in self.comps:
            if comp.frames:
                for inst in comp.instructions:
                    if inst.name in comp.frames:
                        inst.source_file, inst.source_line, inst.user_source = frames.lines(comp.frames[inst.name])
        computations = [Computation(c.name, c.instructions, c.name == entry) for c in self.comps]
        calling = [inst for _, inst in self.checks if inst.called_computations]
        module = build_module(name, "hlo", computations, entry, is_scheduled, self.operand_keys, loop_parts,
                              lambda reason, key: self.fail(reason, by_name[key[0]].lines[key[1]]),
                              forward=forward, index=self.index, calling=calling)
        module.input_output_alias = self.aliases
        module.sizes_are_global = hlo_global_reason(module)
        return module


def _index(text: str) -> tuple[int, ...]:
    """A ShapeIndex ``0, 1`` (the text inside its braces) as a tuple."""
    return tuple(int(p) for p in text.replace(" ", "").split(",") if p)


def _strip(name: str) -> str:
    return name.strip().lstrip("%")


def _attributes(s: str, blank: str, start: int) -> dict[str, str]:
    """``, key=value, key={nested, "quoted"}`` from ``s[start:]`` (``blank``: s with strings
    blanked). A ', key=' starts an attribute when the brackets before it are balanced; counting
    with str methods keeps this at C speed for the long JSON backend_configs."""
    attributes: dict[str, str] = {}
    rest = blank[start:].strip()
    if not rest:
        return attributes
    if not rest.startswith(","):
        raise ScanError(f"expected ', attribute=value' after the operands, got {s[start:].strip()[:40]!r}")
    cuts: list[re.Match[str]] = []
    count = blank.count
    depth, done = 0, start  # bracket depth of blank[start:done], counted once per stretch
    for m in _ATTR_START.finditer(blank, start):
        p = m.start()
        depth += (count("(", done, p) + count("[", done, p) + count("{", done, p)
                  - count(")", done, p) - count("]", done, p) - count("}", done, p))
        done = p
        if depth == 0:
            cuts.append(m)
    if any(balance(blank[start:])):
        raise ScanError("expected the brackets of the attributes to balance")
    if not cuts or blank[start:cuts[0].start()].strip():
        raise ScanError(f"expected attribute=value, got {s[start:].strip()[:40]!r}")
    for i, m in enumerate(cuts):
        end = cuts[i + 1].start() if i + 1 < len(cuts) else len(s)
        value = s[m.end():end].strip()
        if "," in value and not any(c in value for c in "([{\""):
            raise ScanError(f"expected attribute=value, got {value[:40]!r}")
        attributes[m.group(1)] = value
    return attributes


def _called(opcode: str, attributes: dict[str, str]) -> list[str]:
    called: list[str] = []
    for key, value in attributes.items():
        if key in _CALL_KEYS or (opcode == "select-and-scatter" and key in ("select", "scatter")):
            if value.startswith("{") and value.endswith("}"):
                value = value[1:-1]
            for part in value.split(","):
                part = part.strip()
                found = _NAME.match(part)
                if found is None:
                    raise ScanError(f"expected a computation name in {key}=, got {part[:40]!r}")
                called.append(found.group(1))
    return called


def _metadata(meta: str | None) -> tuple[str | None, str | None, int | None, int | None]:
    """op_name, source_file, source_line and stack_frame_id of ``metadata={...}``."""
    op_name = source_file = None
    source_line = frame = None
    if meta:
        for key, value in _META.findall(meta):
            text = unquote(value) if value.startswith('"') and len(value) >= 2 else value
            if key == "op_name":
                op_name = text
            elif key == "source_file":
                source_file = text
            elif key == "source_line" and text.isdecimal():
                source_line = int(text)
            elif key == "stack_frame_id" and text.isdecimal():
                frame = int(text)
    return op_name, source_file, source_line, frame


class _StackFrames:
    """Newer XLA prints source positions once, in FileNames/FileLocations/StackFrames tables,
    and metadata refers to them by ``stack_frame_id``; the frame's own location is the
    innermost Python line, the one that produced the op, and ``parent_frame_id`` leads to its
    caller. XLA's proto numbers frames from 1 with 0 for no parent, but its text printer (jax
    0.10) writes each parent one higher, so a root frame names itself: when frame 1, always a
    root (a parent is numbered before its children), is its own parent, every parent is read
    one lower."""

    def __init__(self, sections: dict[str, dict[int, str]]) -> None:
        self.files = {k: unquote(v) if v.startswith('"') and len(v) >= 2 else v
                      for k, v in sections["FileNames"].items()}
        self.locations = {k: dict(_META.findall(v)) for k, v in sections["FileLocations"].items()}
        self.frames = {k: dict(_META.findall(v)) for k, v in sections["StackFrames"].items()}
        self.parent_shift = 1 if self._parent(1, 0) == 1 else 0
        self._lines: dict[int, tuple[str | None, int | None, str | None]] = {}

    def _parent(self, frame_id: int, shift: int) -> int:
        text = self.frames.get(frame_id, {}).get("parent_frame_id", "")
        return int(text) - shift if text.isdecimal() else 0

    def source(self, frame_id: int) -> tuple[str | None, int | None]:
        location_id = self.frames.get(frame_id, {}).get("file_location_id", "")
        location = self.locations.get(int(location_id), {}) if location_id.isdecimal() else {}
        file_id, line = location.get("file_name_id", ""), location.get("line", "")
        source_file = self.files.get(int(file_id)) if file_id.isdecimal() else None
        return source_file, int(line) if line.isdecimal() else None

    def lines(self, frame_id: int) -> tuple[str | None, int | None, str | None]:
        """The op's own file and line, and the user's line (`hloscope.hlo.frames.user_source`);
        once per frame, which the ops of one Python line share."""
        if frame_id not in self._lines:
            stack = self.stack(frame_id)
            self._lines[frame_id] = (*(stack[0] if stack else (None, None)), user_source(stack))
        return self._lines[frame_id]

    def stack(self, frame_id: int) -> list[tuple[str, int]]:
        """(file, line) of frame `frame_id` and its callers, innermost first; stops at a frame
        without a file or line, or at one met before (malformed tables cannot loop)."""
        stack, seen = [], set()
        while frame_id > 0 and frame_id not in seen:
            seen.add(frame_id)
            source_file, line = self.source(frame_id)
            if source_file is None or line is None:
                break
            stack.append((source_file, line))
            frame_id = self._parent(frame_id, self.parent_shift)
        return stack
