"""The parsed module: shapes, instructions, computations, while loops and the dataflow graph.

Both parsers (XLA HLO text and StableHLO/MHLO MLIR text) produce the same model, so analyses
never need to know which text they came from (``HloModule.dialect`` says it if they want to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import networkx


# Bits per element. Sub-byte types are counted packed (XLA packs s4/u4 on TPU and GPU); pred is
# a whole byte, as XLA stores it. token/opaque carry no data.
_BITS: dict[str, int] = {
    "pred": 8,
    "s1": 1, "u1": 1, "s2": 2, "u2": 2, "s4": 4, "u4": 4,
    "s8": 8, "u8": 8, "s16": 16, "u16": 16, "s32": 32, "u32": 32, "s64": 64, "u64": 64,
    "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
    "f8e5m2": 8, "f8e4m3": 8, "f8e4m3fn": 8, "f8e4m3b11fnuz": 8, "f8e5m2fnuz": 8,
    "f8e4m3fnuz": 8, "f8e3m4": 8, "f8e8m0fnu": 8, "f4e2m1fn": 4,
    "token": 0, "opaque": 0,
}

#: The deepest chain of calls (while, call, conditional, fusion, region) a module may have; the
#: schedule walk follows calls this deep, and a text with a deeper chain is refused.
MAX_CALL_DEPTH = 64
#: The largest array a shape may describe (1 PiB): more is no program that can run (a 2^63
#: dimension gives 10^38 bytes); such a text is refused rather than answered.
MAX_ARRAY_BYTES = 1 << 50

#: Every element type name a Shape may carry ('tuple' is the dtype of tuple shapes).
DTYPES: frozenset[str] = frozenset(_BITS) | {"tuple"}

#: Opcodes that run their one called computation once, where they stand, with its parameters
#: bound to their operands in order and its results as theirs: HLO/MLIR ``call``, and the
#: shardy region ops that hold a ``shard_map`` body (``sdy.manual_computation``, whose region
#: sees per-device shapes) or a named function (``sdy.named_computation``). Fusions map their
#: parameters the same way but are leaves of the schedule, so they are not listed here.
CALL_OPCODES: frozenset[str] = frozenset({"call", "manual_computation", "named_computation"})


@dataclass(frozen=True)
class Shape:
    """An HLO shape: an array ``dtype[dims]{layout}`` or a tuple of shapes.

    ``dims`` holds the bound of a dynamic dimension (``<=4`` gives 4) and -1 for a dimension
    with no known size or bound (only MLIR ``?`` without bounds produces it; it counts 0 bytes).
    """

    dtype: str
    dims: tuple[int, ...]
    layout: tuple[int, ...] | None = None
    elements: tuple["Shape", ...] = ()

    @property
    def is_tuple(self) -> bool:
        return self.dtype == "tuple"

    def nbytes(self) -> int:
        """Bytes of the data: prod(dims) * element size for arrays, the sum of members for tuples."""
        if self.is_tuple:
            return sum(e.nbytes() for e in self.elements)
        if any(d < 0 for d in self.dims):
            return 0
        return (math.prod(self.dims) * _BITS[self.dtype] + 7) // 8

    def __str__(self) -> str:
        if self.is_tuple:
            return "(" + ", ".join(str(e) for e in self.elements) + ")"
        return f"{self.dtype}[" + ",".join("?" if d < 0 else str(d) for d in self.dims) + "]"


@dataclass(eq=False, slots=True)  # slots: a 300K-instruction module holds 300K of these
class Instruction:
    """One HLO instruction or one MLIR operation.

    ``operands`` are instruction names; in HLO they are always in the same computation. In
    StableHLO an op inside a region may use a value of an enclosing region or function (MLIR
    regions capture): the name is then that of the enclosing instruction, and
    ``HloModule.operands_of`` returns the instructions themselves. ``operand_results`` says,
    per operand, which result of a multi-result MLIR op (``%3#1`` gives 1) is used; None means
    the operand's whole value (always the case in HLO).
    """

    name: str
    opcode: str
    shape: Shape
    computation: str
    operands: list[str]
    called_computations: list[str]
    attributes: dict[str, str]
    op_name: str | None
    source_file: str | None
    source_line: int | None
    position: int
    is_root: bool
    operand_results: list[int | None] = field(default_factory=list)
    # `file:line` of the innermost call-stack frame outside installed packages when the op's own
    # line (source_file) is a library's (flax, optax, ...): the line the user would change.
    user_source: str | None = None

    def __repr__(self) -> str:
        return f"<Instruction {self.computation}/{self.name} = {self.shape} {self.opcode}>"

    def int_attribute(self, key: str, default: int) -> int:
        """An integer attribute whatever the text's form: HLO ``index=1``, MLIR ``index = 1 :
        i32`` (generic form) or ``dense<1>``; ``default`` when absent or not an integer."""
        text = self.attributes.get(key, "").strip()
        if " : " in text:
            text = text.rsplit(" : ", 1)[0].strip()
        if text.startswith("dense<") and text.endswith(">"):
            text = text[6:-1].strip()
        try:
            return int(text)
        except ValueError:
            return default


@dataclass(eq=False)
class Computation:
    """A computation (HLO) or a function or region (MLIR), instructions in textual order.

    ``parent`` is the enclosing computation of an MLIR region (None for HLO computations and
    MLIR functions): its values are visible inside the region.
    """

    name: str
    instructions: list[Instruction]
    is_entry: bool
    parent: str | None = None

    def root(self) -> Instruction:
        """The ROOT instruction (HLO) or the terminator/return (MLIR)."""
        for inst in reversed(self.instructions):
            if inst.is_root:
                return inst
        # Parsers always mark a root; an empty or hand-built computation has none.
        raise ValueError(f"computation {self.name!r} has no root instruction")


@dataclass
class WhileLoop:
    """A while instruction with its body and condition computations.

    ``trip_count`` comes from XLA's ``known_trip_count`` when present, otherwise from the loop
    condition when it is a counted loop (see docs/hlo_parser.md); None when not sure.
    """

    instruction: Instruction
    body: str
    condition: str
    trip_count: int | None


NodeKey = tuple[str, str]


@dataclass(frozen=True)
class Alias:
    """An output that shares an entry parameter's buffer (donation): output tuple index
    ``output`` (() for a non-tuple output) is written into parameter ``parameter`` at
    ``parameter_index``. ``kind`` is XLA's 'may-alias' / 'must-alias' (HLO header
    ``input_output_alias``) or 'must-alias' for StableHLO's ``tf.aliasing_output``."""

    output: tuple[int, ...]
    parameter: int
    parameter_index: tuple[int, ...]
    kind: str


@dataclass(eq=False)
class HloModule:
    """A parsed module.

    ``graph`` is a networkx.DiGraph whose nodes are ``(computation, instruction name)`` tuples
    with the Instruction under the node attribute ``'instruction'``. Edges:

    * ``kind='data'``: operand -> user (for MLIR region captures, across computations);
    * ``kind='calls'``: calling instruction -> root of each computation it calls, with the
      called computation's name in the edge attribute ``'computation'``.
    """

    name: str
    dialect: str
    computations: dict[str, Computation]
    entry: str
    is_scheduled: bool
    #: Donated buffers: outputs that reuse an entry parameter's memory (see Alias).
    input_output_alias: list[Alias] = field(default_factory=list)
    #: None when sizes are per device. Otherwise one line saying why the module's sizes are
    #: global (whole-array) sizes that no per-device figure may be presented as (see
    #: hloscope.hlo.sharding).
    sizes_are_global: str | None = None
    _index: dict[NodeKey, Instruction] = field(default_factory=dict, repr=False)
    _graph: "networkx.DiGraph | None" = field(default=None, repr=False)
    _operand_keys: dict[NodeKey, list[NodeKey]] = field(default_factory=dict, repr=False)
    _callers: dict[str, list[Instruction]] = field(default_factory=dict, repr=False)
    _loops: list[WhileLoop] = field(default_factory=list, repr=False)
    _loop_of: dict[NodeKey, WhileLoop] = field(default_factory=dict, repr=False)
    _nests: dict[str, list[WhileLoop]] = field(default_factory=dict, repr=False)

    @property
    def graph(self) -> "networkx.DiGraph":
        """The dataflow and call graph (built on first use)."""
        if self._graph is None:
            from hloscope.hlo.build import build_graph  # build imports this module
            self._graph = build_graph(self)
        return self._graph

    def instruction(self, computation: str, name: str) -> Instruction:
        """The instruction ``name`` of ``computation``; KeyError when there is none."""
        try:
            return self._index[(computation, name)]
        except KeyError:
            raise KeyError(f"no instruction {name!r} in computation {computation!r}") from None

    def instructions(self) -> Iterator[Instruction]:
        """All instructions, computation by computation in textual order."""
        for comp in self.computations.values():
            yield from comp.instructions

    def operands_of(self, instruction: Instruction) -> list[Instruction]:
        """The operand instructions of ``instruction`` in operand order (captures resolved)."""
        keys = self._operand_keys.get((instruction.computation, instruction.name), [])
        return [self._index[k] for k in keys]

    def while_loops(self) -> list[WhileLoop]:
        """Every while instruction of the module, in textual order."""
        return list(self._loops)

    def callers(self, computation: str) -> list[Instruction]:
        """Instructions whose called_computations name ``computation``, in textual order."""
        if computation not in self.computations:
            raise KeyError(f"no computation {computation!r}")
        return list(self._callers.get(computation, []))

    def loop_nest(self, computation: str) -> list[WhileLoop]:
        """The while loops enclosing ``computation``, outermost first.

        Walks callers up to the entry: a computation reached from a while's body or condition
        (directly or through fusions, calls, regions of other ops) is inside that loop. Where a
        computation has several callers (a reducer shared by two reduces), the first caller in
        textual order is followed.
        """
        if computation not in self.computations:
            raise KeyError(f"no computation {computation!r}")
        if computation not in self._nests:
            nest: list[WhileLoop] = []
            seen = {computation}
            current = computation
            while self._callers.get(current):
                caller = self._callers[current][0]
                loop = self._loop_of.get((caller.computation, caller.name))
                if loop is not None and current in (loop.body, loop.condition):
                    nest.append(loop)
                current = caller.computation
                if current in seen:  # call cycles are invalid HLO; never loop forever on them
                    break
                seen.add(current)
            nest.reverse()
            self._nests[computation] = nest
        return list(self._nests[computation])
