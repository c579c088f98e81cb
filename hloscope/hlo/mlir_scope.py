"""What the MLIR parser keeps while it reads: functions/regions (scopes) with their SSA values,
ops whose regions are open, and the stack frames of open ``{ ... }`` blocks."""

from __future__ import annotations

from hloscope.hlo.errors import ScanError
from hloscope.hlo.mlir_ops import OpSyntax, opcode_of
from hloscope.hlo.model import Instruction, NodeKey, Shape
from hloscope.hlo.shapes import parse_mlir_type

EMPTY = Shape("tuple", (), None, ())
_LABELS = {"while": ("cond", "body"), "if": ("true_branch", "false_branch"),
           "select_and_scatter": ("select", "scatter")}


def region_label(opcode: str, i: int) -> str:
    """The last part of the name of region ``i`` of an op: while -> cond/body, case -> branchN."""
    if opcode in _LABELS and i < len(_LABELS[opcode]):
        return _LABELS[opcode][i]
    if opcode == "case":
        return f"branch{i}"
    return "body" if i == 0 else f"body{i}"


class Scope:
    """A function or region being read: its instructions and the SSA values it defines."""

    def __init__(self, name: str, parent: "Scope | None", lineno: int) -> None:
        self.name = name
        self.parent = parent
        self.lineno = lineno
        self.instructions: list[Instruction] = []
        self.index: dict[str, Instruction] = {}
        # SSA value -> (instruction name, first result index, results named, results of the op)
        self.values: dict[str, tuple[str, int, int, int]] = {}
        self.keys: dict[str, list[NodeKey]] = {}  # instruction -> node keys of its operands
        self.lines: dict[str, int] = {}
        self.locs: dict[str, str | None] = {}
        self.symbols: dict[str, list[str]] = {}

    def lookup(self, value: str) -> "tuple[Scope, tuple[str, int, int, int]] | None":
        """The scope defining SSA ``value`` and its entry; regions see enclosing values."""
        scope: Scope | None = self
        while scope is not None:
            found = scope.values.get(value)
            if found is not None:
                return scope, found
            scope = scope.parent
        return None

    def add(self, inst: Instruction, keys: list[NodeKey], lineno: int, loc: str | None) -> None:
        """Appends an instruction (its operand node keys, line and location text)."""
        self.instructions.append(inst)
        self.index[inst.name] = inst
        self.keys[inst.name] = keys
        self.lines[inst.name] = lineno
        self.locs[inst.name] = loc

    def add_param(self, name: str, shape: Shape, loc: str | None, number: int, lineno: int) -> None:
        """A function argument or region/block argument, as a 'parameter' instruction."""
        if name in self.values or name in self.index:
            raise ScanError(f"expected a new value name; %{name} is already defined")
        inst = Instruction(
            name=name, opcode="parameter", shape=shape, computation=self.name,
            operands=[], called_computations=[], attributes={"parameter_number": str(number)},
            op_name=None, source_file=None, source_line=None,
            position=len(self.instructions), is_root=False, operand_results=[],
        )
        self.add(inst, [], lineno, loc)
        self.values[name] = (name, 0, 1, 1)

    def end(self) -> None:
        """Marks the root when the scope closes: its terminator, else its last instruction."""
        if not self.instructions:
            raise ScanError(f"expected at least one operation in {self.name}")
        for inst in reversed(self.instructions):
            if inst.opcode == "return":
                inst.is_root = True
                return
        self.instructions[-1].is_root = True


class OpenOp:
    """An op whose regions are being read (or may follow, for pretty ops)."""

    def __init__(self, inst: Instruction, scope: Scope, syntax: OpSyntax, generic: bool, lineno: int) -> None:
        self.inst, self.scope, self.syntax, self.generic, self.lineno = inst, scope, syntax, generic, lineno
        self.regions: list[str] = []
        self.deferred = False  # result types come after the regions


class Frame:
    """One open ``{``: of the module, a function or a region of an op."""

    def __init__(self, kind: str, lineno: int, generic: bool, scope: Scope | None = None,
                 op: OpenOp | None = None) -> None:
        self.kind, self.lineno, self.generic, self.scope, self.op = kind, lineno, generic, scope, op


def fill_applies_body(body: Scope, syntax: OpSyntax, lineno: int) -> None:
    """``reduce(...) applies stablehlo.add``: writes the reducer out into ``body`` as the
    generic form prints it: ``^bb0(%lhs0, %rhs0): %r = add %lhs0, %rhs0; return %r``."""
    inits = syntax.inputs[len(syntax.inputs) // 2:] if syntax.inputs else (syntax.types or [])
    elements = [Shape(parse_mlir_type(t).dtype, ()) for t in inits]  # scalars of the init types
    if not elements:
        raise ScanError("expected the reduce's types to write its 'applies' reducer")
    names = [f"lhs{i}" for i in range(len(elements))] + [f"rhs{i}" for i in range(len(elements))]
    for number, (name, shape) in enumerate(zip(names, elements + elements)):
        body.add_param(name, shape, None, number, lineno)
    applied = syntax.attributes["applies"]
    shape = elements[0] if len(elements) == 1 else Shape("tuple", (), None, tuple(elements))
    name = opcode_of(applied)
    op = Instruction(
        name=name, opcode=name, shape=shape, computation=body.name, operands=names,
        called_computations=[], attributes={"mlir_op": applied}, op_name=None, source_file=None,
        source_line=None, position=len(names), is_root=False, operand_results=[None] * len(names),
    )
    body.add(op, [(body.name, n) for n in names], lineno, None)
    ret = Instruction(
        name="return", opcode="return", shape=shape, computation=body.name, operands=[name],
        called_computations=[], attributes={"mlir_op": "stablehlo.return"}, op_name=None,
        source_file=None, source_line=None, position=len(names) + 1, is_root=True,
        operand_results=[None],
    )
    body.add(ret, [(body.name, name)], lineno, None)
