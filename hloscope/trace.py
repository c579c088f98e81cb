"""Per-instruction memory of a parsed module: the Fig. 2 accumulated curve and a live-heap simulation.

    trace = trace_module(parse_module(compiled.as_text()), memory=result.memory,
                         buffer_assignment=result.dumps.get("buffer_assignment"))
    trace.prealloc_accumulated[-1], trace.live_peak, trace.xla_total

docs/figures.md says what each figure means and how they relate on a measured example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from hloscope.buffer_assignment import BufferAssignment, parse_buffer_assignment
from hloscope.heap_layout import best_fit_heap, into_output_allocations
from hloscope.hlo import CALL_OPCODES, HloModule, Instruction

#: The calling instructions above an instruction, outermost first (a while, call or
#: conditional per level); it tells the copies of a computation with several callers apart.
Stack = tuple[Instruction, ...]

# Results that are another value under a new name: they add nothing to prealloc_accumulated.
# MLIR 'reshape' is here because XLA turns it into a bitcast; 'return' is the terminator. The
# instructions a while/call/conditional runs are walked and counted themselves, so the calling
# instruction counts 0 there (the live simulation gives a call's result its own buffer).
ALIAS_OPCODES = frozenset({
    "parameter", "get-tuple-element", "get_tuple_element", "tuple", "bitcast", "reshape",
    "while", "conditional", "case", "if", "return", "opt-barrier", "optimization_barrier",
    "after-all", "after_all", "add-dependency", "domain",
}) | CALL_OPCODES
# HLO 'reshape' survives optimisation only where it moves data; there it is a real copy.
_HLO_REAL = frozenset({"reshape"})
# Calls whose computations run at the point of the call; their instructions are walked there
# (CALL_OPCODES: calls and shard_map's sdy.manual_computation region, which runs once per device).
# Fusions and reducers (reduce, sort, map, scatter, all-reduce ...) are leaves: they allocate
# their output and nothing else that XLA exposes.
WALKED_CALLS = frozenset({"while", "conditional", "case", "if"}) | CALL_OPCODES
# Updates XLA performs in place on their first operand (the result shares its buffer).
IN_PLACE = frozenset({"dynamic-update-slice", "dynamic_update_slice", "scatter"})
# Elementwise opcodes: XLA may write their result into an operand's buffer when it dies there.
ELEMENTWISE = frozenset({
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "power", "remainder", "atan2",
    "and", "or", "xor", "not", "negate", "abs", "sign", "exponential", "exponential-minus-one", "log",
    "log-plus-one", "logistic", "tanh", "tan", "sqrt", "rsqrt", "cbrt", "sine", "cosine", "floor", "ceil",
    "round-nearest-afz", "round-nearest-even", "clamp", "select", "is-finite", "erf",
    "shift-left", "shift-right-arithmetic", "shift-right-logical",
})
# Calls whose results get a buffer of the caller (the callee writes its outputs there).
_RESULT_IN_CALLER = frozenset({"conditional", "case", "if"}) | CALL_OPCODES


def called_in_order(module: HloModule, inst: Instruction) -> list[str]:
    """The computations `inst` runs where it stands: a while's condition then body, a call's
    callee, every branch of a conditional/case; [] for fusions and other leaves."""
    if inst.opcode not in WALKED_CALLS:
        return []
    if inst.opcode == "while":
        cond, body = inst.attributes.get("condition"), inst.attributes.get("body")
        names = [n.lstrip("%") for n in (cond, body) if n]
        return [n for n in names if n in module.computations] or list(inst.called_computations)
    return [c for c in inst.called_computations if c in module.computations]


def walk_schedule(module: HloModule) -> Iterator[tuple[Instruction, Stack]]:
    """Yields every instruction in schedule order with its calling stack.

    The entry computation in its order; the computations of a while (condition, body), call or
    conditional are walked once, right after the calling instruction. Optimized HLO is
    scheduled, so textual order is XLA's order; StableHLO has no schedule (textual order).
    """
    def walk(comp: str, stack: Stack) -> Iterator[tuple[Instruction, Stack]]:
        for inst in module.computations[comp].instructions:
            yield inst, stack
            for callee in called_in_order(module, inst):
                if len(stack) < 64 and inst not in stack:  # recursion is invalid HLO; never hang
                    yield from walk(callee, stack + (inst,))
    yield from walk(module.entry, ())


def output_bytes(inst: Instruction) -> int:
    """Bytes of the buffer an instruction allocates (its output; for async '*-start' only the
    result part of its (operands, result, context) tuple)."""
    shape = inst.shape
    if inst.opcode.endswith("-start") and shape.is_tuple and len(shape.elements) >= 2:
        return shape.elements[1].nbytes()
    return shape.nbytes()


def is_alias(module: HloModule, inst: Instruction) -> bool:
    """True when the result is only a new name for existing buffers (see ALIAS_OPCODES)."""
    if inst.opcode in _HLO_REAL and module.dialect == "hlo":
        return False
    return inst.opcode in ALIAS_OPCODES or inst.opcode.endswith("-done")


def prealloc_bytes(module: HloModule, inst: Instruction) -> int:
    """What an instruction adds to the Fig. 2 curve: its output bytes, 0 for aliases.

    Constants count (XLA allocates them); in-place updates count their whole output, as the
    paper's per-instruction metric does.
    """
    return 0 if is_alias(module, inst) else output_bytes(inst)


def _root_through(module: HloModule, comp: str) -> Instruction:
    """A computation's result instruction, seen through bitcasts and a single-operand return."""
    inst = module.computations[comp].root()
    while inst.opcode in ("return", "bitcast") and len(inst.operands) == 1:
        inst = module.operands_of(inst)[0]
    return inst


def dus_of(module: HloModule, inst: Instruction, depth: int = 0) -> tuple[Instruction, Stack] | None:
    """The dynamic-update-slice whose result `inst`'s output is, with the fusions/calls between.

    `inst` itself, the root of a fusion (how optimized HLO writes in-place updates), or the
    result of a called function (StableHLO's `dynamic_update_index_in_dim` helpers).
    """
    if inst.opcode in ("dynamic-update-slice", "dynamic_update_slice"):
        return inst, ()
    if (inst.opcode == "fusion" or inst.opcode in CALL_OPCODES) and inst.called_computations and depth < 8:
        callee = inst.called_computations[0]
        if callee in module.computations:
            root = _root_through(module, callee)
            found = dus_of(module, root, depth + 1)
            if found is not None:
                return found[0], (inst,) + found[1]
    return None


def in_place_operand(module: HloModule, inst: Instruction) -> int | None:
    """Which operand's buffer `inst` updates in place (None if it allocates a new one)."""
    if inst.opcode in IN_PLACE:
        return 0
    if (inst.opcode == "fusion" or inst.opcode in CALL_OPCODES) and inst.called_computations:
        callee = inst.called_computations[0]
        if callee not in module.computations:
            return None
        root = _root_through(module, callee)
        if root.opcode in IN_PLACE and root.operands:
            target = module.operands_of(root)[0]
            while target.opcode in ("bitcast",) and target.operands:
                target = module.operands_of(target)[0]
            if target.opcode == "parameter" and target.computation == callee:
                number = target.int_attribute("parameter_number", -1)
                return number if 0 <= number < len(inst.operands) else None
    return None


@dataclass
class Trace:
    """Memory figures of one module (docs/figures.md).

    schedule[i] is the i-th walked instruction and stacks[i] its calling stack;
    prealloc_accumulated[i] and live_curve[i] are the two curves at that point. live_at_peak
    lists the buffers live at live_peak (by allocating instruction), largest first; their bytes
    add up to live_peak. figures holds every named figure of the buffer-assignment dump.
    """

    schedule: list[Instruction]
    stacks: list[Stack]
    prealloc_accumulated: list[int]
    live_curve: list[int]
    live_peak: int
    live_peak_index: int | None
    live_at_peak: list[tuple[Instruction, int]]
    xla_total: int | None
    sources: dict[str, str]
    layout_total: int | None = None
    buffer_assignment: BufferAssignment | None = None
    buffer_assignment_temp: int | None = None
    buffer_assignment_total: int | None = None
    figures: dict[str, int | None] = field(default_factory=dict)

    @property
    def prealloc_total(self) -> int:
        """The last value of the accumulated curve (0 for an empty module)."""
        return self.prealloc_accumulated[-1] if self.prealloc_accumulated else 0

    def largest_allocators(self, n: int = 10) -> list[tuple[Instruction, int]]:
        """The n walked instructions that add the most to prealloc_accumulated."""
        steps = [(inst, b - a) for inst, a, b in
                 zip(self.schedule, [0] + self.prealloc_accumulated[:-1], self.prealloc_accumulated)]
        return sorted((s for s in steps if s[1] > 0), key=lambda s: -s[1])[:n]


class _LiveSim:
    """Liveness simulation over the walked schedule (see trace_module for the rules)."""

    def __init__(self, module: HloModule) -> None:
        self.module = module
        self.curve: list[int] = []
        self.levels: list[dict[tuple[str, int], tuple[Instruction, int]]] = []
        self.snapshot_at: int | None = None
        self.snapshot: list[tuple[Instruction, int]] = []
        self._ancestor: dict[tuple[str, str], Instruction | None] = {}
        # Buffers, per computation, that sit in a dead donated argument (_in_dead_arguments).
        self.placed: dict[str, frozenset[Owner]] = {}
        # Caller's buffers a loop body has vacated (_carry_windows), and the level each left.
        self._vacated: dict[Owner, tuple[tuple[Instruction, int], dict]] = {}
        self.entry_outputs: frozenset[Owner] = frozenset()
        # Each temporary's (first, last curve index, bytes, XLA's value order), for the heap
        # layout; arguments and the entry's outputs are allocations of their own (fixed_bytes).
        self.intervals: list[tuple[int, int, int, tuple[int, int, int]]] = []
        self._ids: dict[str, tuple[int, int]] = {}
        self._open: dict[Owner, int] = {}
        self.fixed_bytes = 0
        self.outputs: list[tuple[int, int]] = []  # (defined at, bytes) of the entry's outputs
        self._elementwise: dict[tuple[str, int], bool] = {}  # (fusion computation, parameter) -> _elementwise_use

    def _ancestor_in(self, user: Instruction, comp: str) -> Instruction | None:
        """The op of `comp` whose region (transitively) holds `user` (MLIR captures)."""
        key = (user.computation, comp)
        if key not in self._ancestor:
            current, found, seen = user.computation, None, set()
            while current not in seen:
                seen.add(current)
                callers = self.module.callers(current)
                if not callers:
                    break
                if callers[0].computation == comp:
                    found = callers[0]
                    break
                current = callers[0].computation
            self._ancestor[key] = found
        return self._ancestor[key]

    def _record(self, total: int) -> None:
        if self.snapshot_at is not None and len(self.curve) == self.snapshot_at:
            merged: dict[int, list] = {}
            for level in self.levels:
                for inst, size in level.values():
                    merged.setdefault(id(inst), [inst, 0])[1] += size
            self.snapshot = [(inst, size) for inst, size in merged.values()]
        self.curve.append(total)

    def _shareable(self, comp: str, values: dict[str, "Owners"], end: "dict[Owner, int]",
                   outputs: "frozenset[Owner]") -> dict[str, int]:
        """Instructions that write their result into an operand's buffer, as XLA's buffer
        assignment does when the operand dies there (CanShareOperandBufferWithUser): an
        elementwise op, or a loop fusion whose parameter feeds only elementwise ops, of the
        operand's shape, the operand being the instruction that makes it. Returns
        {instruction: operand index}. Optimized HLO only."""
        if self.module.dialect != "hlo":
            return {}
        shared: dict[str, int] = {}
        insts = self.module.computations[comp].instructions
        for i, inst in enumerate(insts):
            if inst.shape.is_tuple or not (inst.opcode in ELEMENTWISE or inst.opcode == "fusion"):
                continue
            if (inst.name, -1) in outputs:
                # An output is the caller's (or a donated argument's) buffer: the operand's own
                # buffer must still be counted until it dies.
                continue
            for k, op in enumerate(self.module.operands_of(inst)):
                if op.computation != comp or op.shape.is_tuple or op.shape.dims != inst.shape.dims \
                        or op.shape.nbytes() != inst.shape.nbytes():
                    continue
                if op.opcode in ALIAS_OPCODES and op.opcode not in _HLO_REAL:
                    # XLA's heap simulator shares only with a value its user reads straight
                    # from the instruction that defines it (IsUserOf the defining instruction):
                    # not through a get-tuple-element of a loop's result, nor a bitcast.
                    continue
                owners = _flat(values.get(op.name, frozenset()))
                if len(owners) != 1:
                    continue
                (owner,) = owners
                if owner in outputs or end.get(owner) != i or owner[1] >= 0 \
                        or self.module.instruction(comp, owner[0]).opcode == "parameter":
                    continue
                if inst.opcode == "fusion" and not self._elementwise_use(inst, k):
                    continue
                shared[inst.name] = k
                break
        return shared

    def _elementwise_use(self, fusion: Instruction, k: int) -> bool:
        """Whether parameter k of `fusion`'s computation feeds only elementwise ops, of its
        shape, up to the root."""
        callee = fusion.called_computations[0] if fusion.called_computations else None
        if callee not in self.module.computations or not _writes_like_a_loop(fusion):
            return False
        if (callee, k) not in self._elementwise:   # a fusion computation may be called many times
            self._elementwise[(callee, k)] = self._transitively_elementwise(callee, k)
        return self._elementwise[(callee, k)]

    def _transitively_elementwise(self, callee: str, k: int) -> bool:
        comp = self.module.computations[callee]
        params = [i for i in comp.instructions if i.opcode == "parameter" and i.int_attribute("parameter_number", -1) == k]
        if len(params) != 1:
            return False
        # Transitively, as XLA's AreTransitiveUsesElementwiseOrTuple: a parameter read by an
        # elementwise op whose result feeds a reduce is still needed while the output is
        # written (an RMSNorm's backward YNNPACK fusion on XLA:CPU does not reuse its input).
        users_of: dict[str, list[Instruction]] = {}
        for inst in comp.instructions:
            for name in dict.fromkeys(inst.operands):
                users_of.setdefault(name, []).append(inst)
        dims = params[0].shape.dims
        if not users_of.get(params[0].name):
            return False
        stack, seen = [params[0].name], set()
        while stack:
            for user in users_of.get(stack.pop(), ()):
                if user.opcode == "tuple":
                    continue
                if user.opcode not in ELEMENTWISE or user.shape.dims != dims:
                    return False
                if user.name not in seen:
                    seen.add(user.name)
                    stack.append(user.name)
        return True

    def _layout(self, comp: str, uses: "Uses") -> tuple[dict[str, "Owners"], "dict[Owner, int]", "Owners",
                                                         frozenset[Owner]]:
        """The buffers of `comp`'s values, the index of each buffer's last use, the root's
        value and the buffers that are results (live to the end)."""
        insts = self.module.computations[comp].instructions
        values = self._values(comp)
        end = self._ends(insts, values, uses, comp)
        root_value = values[self.module.computations[comp].root().name]
        shared = self._shareable(comp, values, end, _flat(root_value))
        if shared:  # results written into a dying operand's buffer: values and ends again
            values = self._values(comp, shared)
            end = self._ends(insts, values, uses, comp)
            root_value = values[self.module.computations[comp].root().name]
        outputs = _flat(root_value)
        for owner in outputs:
            end[owner] = len(insts)  # results live on: in the caller, or as program outputs
        return values, end, root_value, outputs

    def _loop_bodies(self, insts: list[Instruction], uses: "Uses") -> list[tuple[int, str, list]]:
        """(entry index, body, [(buffer, bytes, first, last)]) of each entry while loop and of
        the while loops nested in its body: the buffers a body makes that are not its results
        (those are the loop's own), with lifetimes on the entry's time scale. An entry while
        at i holds its body's buffers inside (i + 0.05, i + 0.35) (see _in_dead_arguments);
        a while nested at body step j of n holds its own inside that body's step j, so that
        XLA's flattened schedule, which runs a nested body within its while, is kept."""
        bodies: list[tuple[int, str, list]] = []

        def visit(i: int, comp_insts: list[Instruction], start: float, width: float, seen: frozenset) -> None:
            n = len(comp_insts) + 1
            for j, inst in enumerate(comp_insts):
                body = inst.attributes.get("body", "").strip().lstrip("%") if inst.opcode == "while" else ""
                if body not in self.module.computations or body in seen:
                    continue
                at, span = start + width * j / n, width / n
                body_insts = self.module.computations[body].instructions
                values, end, _, outputs = self._layout(body, uses)
                where = {b.name: k for k, b in enumerate(body_insts)}
                m = len(where) + 1
                made = {}
                for value in values.values():
                    for owner in _flat(value):
                        made_by = self.module.instruction(body, owner[0])
                        if owner in outputs or made_by.opcode == "parameter":
                            continue
                        size = output_bytes(made_by) if owner[1] < 0 else made_by.shape.elements[owner[1]].nbytes()
                        made[owner] = (size, at + span * where[owner[0]] / m, at + span * end[owner] / m)
                bodies.append((i, body, [(owner, *times) for owner, times in made.items()]))
                visit(i, body_insts, at, span, seen | {body})

        for i, inst in enumerate(insts):
            visit(i, [inst], i + 0.05, 0.3 * 2, frozenset())
        return bodies

    def _values(self, comp: str, shared: "dict[str, int] | None" = None) -> dict[str, "Owners"]:
        """Which buffers each value of `comp` is: a set of owners, or one set per tuple element.

        An owner is (allocating instruction, tuple element or -1): the elements of a tuple-shaped
        result (a custom-call's output and workspace) are separate buffers with their own ends.
        """
        module, is_entry = self.module, comp == self.module.entry
        values: dict[str, Owners] = {}

        def of(user: Instruction, k: int) -> Owners:
            op = module.operands_of(user)[k]
            if op.computation != comp:
                return frozenset()  # captured from an enclosing region: that level owns it
            value = values.get(op.name, frozenset())
            result = user.operand_results[k] if k < len(user.operand_results) else None
            if isinstance(value, list) and result is not None and result < len(value):
                return value[result]
            return _flat(value)

        for inst in module.computations[comp].instructions:
            place = in_place_operand(module, inst)
            if shared and inst.name in shared:
                place = shared[inst.name]
            n = len(inst.operands)
            if inst.opcode == "parameter":
                if is_entry:
                    values[inst.name] = frozenset({(inst.name, -1)})
                elif module.dialect == "hlo" and inst.shape.is_tuple:
                    # the caller's buffers, one per element: never allocated or freed here, but
                    # their last use in this computation is known (a loop's carry windows)
                    values[inst.name] = [frozenset({(inst.name, k)}) for k in range(len(inst.shape.elements))]
                else:
                    values[inst.name] = frozenset()
            elif place is not None and place < n:
                values[inst.name] = of(inst, place)
            elif inst.opcode in ("get-tuple-element", "get_tuple_element") and n == 1:
                whole = values.get(inst.operands[0], frozenset())
                at = inst.int_attribute("index", -1)
                element = isinstance(whole, list) and 0 <= at < len(whole)
                values[inst.name] = whole[at] if element else of(inst, 0)
            elif inst.opcode == "tuple" or (inst.opcode in ("while", "return") and n > 1):
                values[inst.name] = [of(inst, k) for k in range(n)]
            elif inst.opcode == "while" and n == 1:
                values[inst.name] = of(inst, 0) if module.operands_of(inst)[0].computation != comp \
                    else values.get(inst.operands[0], frozenset())
            elif inst.opcode == "constant":
                values[inst.name] = frozenset()  # read-only data of the executable, not heap
            elif module.dialect == "hlo" and inst.opcode.endswith("-start") and inst.shape.is_tuple \
                    and len(inst.shape.elements) >= 2 and n >= 1:
                # (operands, result, context...): element 0 is the operands' own buffers, which
                # stay live until the -done; the result and contexts are new
                values[inst.name] = [frozenset().union(*(of(inst, k) for k in range(n)))] + [
                    frozenset({(inst.name, i)}) for i in range(1, len(inst.shape.elements))]
            elif inst.opcode.endswith("-done") and n == 1 and isinstance(values.get(inst.operands[0]), list) \
                    and len(values[inst.operands[0]]) >= 2 and module.operands_of(inst)[0].opcode.endswith("-start"):
                values[inst.name] = values[inst.operands[0]][1]  # the start's result buffer
            elif is_alias(module, inst) and inst.opcode not in _RESULT_IN_CALLER:
                values[inst.name] = frozenset().union(*(of(inst, k) for k in range(n)))
            elif inst.shape.is_tuple:
                values[inst.name] = [frozenset({(inst.name, i)}) for i in range(len(inst.shape.elements))]
            else:
                values[inst.name] = frozenset({(inst.name, -1)})
        return values

    @staticmethod
    def _ends(insts: list[Instruction], values: dict[str, "Owners"], uses: "Uses", comp: str) -> "dict[Owner, int]":
        """Index of the last use of each buffer of `comp` (its own index when never used)."""
        end: dict[Owner, int] = {}
        for i, inst in enumerate(insts):
            value = values[inst.name]
            for result, last in uses.get((comp, inst.name), {}).items():
                element = isinstance(value, list) and result is not None and result < len(value)
                part = value[result] if element else _flat(value)
                for owner in part:
                    end[owner] = max(end.get(owner, -1), last)
            for owner in _flat(value):
                end.setdefault(owner, i)  # never used: freed right after it is made
        return end

    def run(self, comp: str, stack: Stack, base: int, uses: "Uses",
            carried: "list[Owner | None] | None" = None) -> None:
        """Appends one curve point per instruction of `comp` (and of what it calls). `carried`
        (a while body's run) names the caller's buffer of each loop-carried element."""
        module = self.module
        insts = module.computations[comp].instructions
        is_entry = comp == module.entry
        by_name = {inst.name: inst for inst in insts}
        values, end, root_value, outputs = self._layout(comp, uses)
        vacated, refilled = self._carry_windows(insts, values, end, root_value, carried)
        if is_entry:
            self.entry_outputs = outputs
            donated = _donated_owners(module, root_value)
            if donated:
                self.placed = _in_dead_arguments(module, insts, values, end, root_value, outputs,
                                                 self._loop_bodies(insts, uses))
                donated = donated | self.placed.get(comp, frozenset())
        else:
            donated = self.placed.get(comp, frozenset())
        frees: dict[int, list[Owner]] = {}
        for owner, i in end.items():
            frees.setdefault(i, []).append(owner)
        live, level = 0, {}
        self.levels.append(level)
        if is_entry:  # arguments are live from the start to the end
            for inst in insts:
                if inst.opcode == "parameter":
                    live += output_bytes(inst)
                    level[(inst.name, -1)] = (inst, output_bytes(inst))
                    self.fixed_bytes += output_bytes(inst)
        for i, inst in enumerate(insts):
            if inst.opcode != "parameter":
                for owner in _flat(values[inst.name]):
                    # A called computation's results are written into its caller's buffers.
                    if owner[0] == inst.name and (is_entry or owner not in outputs):
                        size = output_bytes(inst) if owner[1] < 0 else inst.shape.elements[owner[1]].nbytes()
                        if owner in donated:  # written into a donated argument's buffer
                            size = 0
                        live += size
                        level[owner] = (inst, size)
                        if is_entry and owner in outputs:
                            self.fixed_bytes += size  # its own allocation, not the temp heap
                            self.outputs.append((len(self.curve), size))
                        elif size:
                            self._open_interval(owner, size)
            for owner in refilled.get(i, ()):
                base += self._lend(owner, back=True)
            self._record(base + live)
            for callee in called_in_order(module, inst):
                if len(stack) < 64 and inst not in stack:
                    self.run(callee, stack + (inst,), base + live, uses, self._carried_by(comp, inst, values, callee))
            for owner in frees.get(i, ()):
                if owner in level and by_name[owner[0]].opcode != "parameter":
                    live -= level.pop(owner)[1]
                    self._close_interval(owner)
            for owner in vacated.get(i, ()):
                base -= self._lend(owner)
        for owner in level:
            self._close_interval(owner)
        self.levels.pop()

    def _open_interval(self, owner: Owner, size: int) -> None:
        self._open[owner] = len(self.intervals)
        self.intervals.append((len(self.curve), len(self.curve), size, self._value_id(owner)))

    def _close_interval(self, owner: Owner) -> None:
        at = self._open.pop(owner, None)
        if at is not None:
            start, _, size, order = self.intervals[at]
            self.intervals[at] = (start, max(start, len(self.curve) - 1), size, order)

    def _value_id(self, owner: Owner) -> tuple[int, int, int]:
        """The order in which XLA's dataflow analysis numbers `owner`'s value: computations in
        textual order (callees print first, as in XLA's post order), and in each, operands
        before users, from each instruction nobody uses, in textual order. The heap layout
        breaks ties between equal buffers by it, as XLA does by value id."""
        if not self._ids:
            for c, comp in enumerate(self.module.computations.values()):
                by_name = {inst.name: inst for inst in comp.instructions}
                used = {op for inst in comp.instructions for op in inst.operands}
                order: dict[str, int] = {}
                for start in comp.instructions:
                    if start.name in used:
                        continue
                    stack = [(start, 0)]
                    while stack:  # iterative post-order: a module may nest thousands deep
                        inst, k = stack.pop()
                        if inst.name in order:
                            continue
                        if k < len(inst.operands):
                            stack.append((inst, k + 1))
                            op = by_name.get(inst.operands[k])
                            if op is not None and op.name not in order:
                                stack.append((op, 0))
                        else:
                            order[inst.name] = len(order)
                for name, position in order.items():
                    self._ids[name] = (c, position)
        return (*self._ids.get(owner[0], (len(self.module.computations), 0)), max(owner[1], 0))

    def _carried_by(self, comp: str, inst: Instruction, values: dict[str, "Owners"],
                    callee: str) -> "list[Owner | None] | None":
        """For a while's body: the caller's buffer of each carried element that the loop owns
        alone (one owner, in one element, allocated in a walked computation), else None."""
        if inst.opcode != "while" or callee != inst.attributes.get("body", "").strip().lstrip("%") \
                or self.module.dialect != "hlo":
            return None
        value = values.get(inst.name)
        if not isinstance(value, list):
            return None
        counts: dict[Owner, int] = {}
        for element in value:
            for owner in element:
                counts[owner] = counts.get(owner, 0) + 1
        carried: list[Owner | None] = []
        for element in value:
            owner = next(iter(element)) if len(element) == 1 else None
            made_by = self.module.instruction(comp, owner[0]) if owner is not None else None
            held = owner is not None and any(level.get(owner, (None, 0))[1] > 0 for level in self.levels)
            # An entry output or argument is an allocation of its own in XLA, never vacated.
            alone = held and counts[owner] == 1 and owner not in self.entry_outputs
            carried.append(owner if alone and made_by.opcode != "parameter" else None)
        return carried

    def _carry_windows(self, insts: list[Instruction], values: dict[str, "Owners"], end: "dict[Owner, int]",
                       root_value: "Owners", carried: "list[Owner | None] | None") -> tuple[dict, dict]:
        """XLA frees a loop-carried buffer inside the body between the last read of the
        parameter's element and the instruction that makes the element's next value (the
        body's copy of the carry, the usual first instruction, is what the body reads):
        ({index: owners vacated after it}, {index: owners refilled before it})."""
        vacated: dict[int, list[Owner]] = {}
        refilled: dict[int, list[Owner]] = {}
        params = [inst for inst in insts if inst.opcode == "parameter"]
        if not carried or len(params) != 1 or not isinstance(root_value, list) \
                or not isinstance(values.get(params[0].name), list):
            return vacated, refilled
        where = {inst.name: i for i, inst in enumerate(insts)}
        for k, owner in enumerate(carried):
            if owner is None or k >= len(root_value) or len(root_value[k]) != 1:
                continue
            (made,) = root_value[k]
            if made[0] == params[0].name or made[0] not in where:
                continue  # passed through, or written in place: never free
            last_read = end.get((params[0].name, k), 0)
            if last_read < where[made[0]]:
                vacated.setdefault(last_read, []).append(owner)
                refilled.setdefault(where[made[0]], []).append(owner)
        return vacated, refilled

    def _lend(self, owner: Owner, back: bool = False) -> int:
        """Takes a caller's buffer out of the live set (or puts it back); returns its bytes."""
        if back:
            if owner not in self._vacated:
                return 0
            (inst, size), level = self._vacated.pop(owner)
            level[owner] = (inst, size)
            if size:
                self._open_interval(owner, size)
            return size
        for level in reversed(self.levels[:-1]):
            if owner in level:
                self._vacated[owner] = (level.pop(owner), level)
                self._close_interval(owner)
                return self._vacated[owner][0][1]
        return 0


def _writes_like_a_loop(fusion: Instruction) -> bool:
    """A loop fusion, or XLA:CPU's YNNPACK fusion (kind kCustom, "__ynn_fusion"), which XLA
    also lets write into an operand that only elementwise ops read (measured: the conv net's
    pooling fusion reuses its divisor's buffer)."""
    kind = fusion.attributes.get("kind", "")
    return kind == "kLoop" or (kind == "kCustom" and '"__ynn_fusion"' in fusion.attributes.get("backend_config", ""))


Owner = tuple[str, int]
Owners = "frozenset[Owner] | list[frozenset[Owner]]"
Uses = dict[tuple[str, str], dict["int | None", int]]


def _flat(value: "frozenset[Owner] | list[frozenset[Owner]]") -> frozenset[Owner]:
    return frozenset().union(*value) if isinstance(value, list) else value


def _donated_owners(module: HloModule, root_value: "frozenset[Owner] | list[frozenset[Owner]]") -> frozenset[Owner]:
    """The buffers of the entry's outputs that XLA places in a donated argument's buffer
    (``input_output_alias``, may- and must-alias alike): they cost nothing beyond that
    argument, which is live throughout. An output element that is several buffers (a nested
    tuple) is left as it is."""
    owners: set[Owner] = set()
    for alias in module.input_output_alias:
        part = _aliased_part(alias, root_value)
        if part is not None and len(part) == 1:
            owners |= part
    return frozenset(owners)


def _aliased_part(alias, root_value: "frozenset[Owner] | list[frozenset[Owner]]") -> frozenset[Owner] | None:
    """The buffers of the entry output that `alias` names (None if the root has no such element)."""
    if not alias.output:
        return _flat(root_value)
    if isinstance(root_value, list) and alias.output[0] < len(root_value):
        return root_value[alias.output[0]]
    return None


def _in_dead_arguments(module: HloModule, insts: list[Instruction], values: dict[str, "Owners"],
                       end: "dict[Owner, int]", root_value: "Owners", outputs: frozenset[Owner],
                       bodies: list[tuple[int, str, list]]) -> dict[str, frozenset[Owner]]:
    """Entry values that XLA places in a donated argument's buffer while that buffer holds
    nothing else: after the argument's last use and before the output aliased to it is written.

    XLA's buffer assignment (before its heap simulation of the temporaries) offers every
    buffer, largest first, to the allocations it already has; a donated argument's is one, of
    the argument's size, holding one value at a time at offset 0. Both XLA:CPU's and XLA:GPU's
    buffer-assignment dumps show temporaries there (a CPU train step with donated optimizer
    state: 336 values; haiku's ResNet-50 SGD step on a deviceless H100: the momentum of each
    convolution kernel is transposed into the convolution's layout early, and until the new
    momentum is transposed back the argument's buffer holds the step's weight transposes and
    cuBLAS workspaces). On XLA:GPU the window often never opens (an optimizer reads each
    argument until it writes the output), which is why GPU dumps of plain AdamW steps show none.

    Time runs over entry indices: an entry value made at i and last used at j holds its slot
    over [i, j + 0.4]; the donated argument over [0, its last use + 0.4]; the aliased output
    from its index + 0.5 (so it can be made from a value dying there, in place); a buffer of an
    entry while loop's body (the while at w) over its body lifetime scaled into (w, w + 0.4),
    so body buffers of disjoint lifetimes share a slot but none overlaps the entry values live
    across the loop. Returns {computation: buffers placed}."""
    position = {inst.name: i for i, inst in enumerate(insts)}
    params = {inst.int_attribute("parameter_number", -1): inst for inst in insts if inst.opcode == "parameter"}
    # (bytes, free after, free before, [first, last] times of the values placed in it)
    slots: list[tuple[int, float, float, list[tuple[float, float]]]] = []
    for alias in module.input_output_alias:
        param = params.get(alias.parameter)
        part = _aliased_part(alias, root_value)
        if param is None or alias.parameter_index or param.shape.is_tuple or part is None:
            continue
        free_from = end.get((param.name, -1), 0) + 0.4
        free_until = min((position[owner[0]] + 0.5 for owner in part if owner[0] in position), default=len(insts))
        # The output written into it, from where it is made to the end, may be made from a
        # value dying there, in place (hence + 0.5). Values placed later go to busy.
        slots.append((output_bytes(param), free_from, free_until, []))
    candidates = []
    for owner, last in end.items():
        name, element = owner
        inst = module.instruction(module.entry, name)
        if inst.opcode == "parameter" or owner in outputs:
            continue
        size = output_bytes(inst) if element < 0 else inst.shape.elements[element].nbytes()
        if size > 0:
            candidates.append((-size, position[name], module.entry, owner, last + 0.4))
    for _, body, made in bodies:
        candidates += [(-size, first, body, owner, last) for owner, size, first, last in made if size > 0]
    placed: dict[str, set[Owner]] = {}
    for negative, first, comp, owner, last in sorted(candidates):
        for size, free_from, free_until, busy in slots:
            if -negative <= size and free_from < first and last < free_until \
                    and all(last < a or first > b for a, b in busy):
                busy.append((first, last))
                placed.setdefault(comp, set()).add(owner)
                break
    return {comp: frozenset(owners) for comp, owners in placed.items()}


def _donated_argument_bytes(module: HloModule) -> int:
    """Bytes of the entry arguments that outputs alias (XLA's alias_size_in_bytes)."""
    params = {inst.int_attribute("parameter_number", -1): inst
              for inst in module.computations[module.entry].instructions if inst.opcode == "parameter"}
    total = 0
    for alias in dict.fromkeys((a.parameter, a.parameter_index) for a in module.input_output_alias):
        param = params.get(alias[0])
        if param is None:
            continue
        shape = param.shape
        for k in alias[1]:
            shape = shape.elements[k] if shape.is_tuple and k < len(shape.elements) else shape
        total += shape.nbytes()
    return total


def _last_uses(module: HloModule, sim: _LiveSim) -> Uses:
    """(computation, value) -> {result index or None: index of its last user there}; a use
    inside a nested MLIR region counts at the op that holds the region."""
    positions = {comp.name: {inst.name: i for i, inst in enumerate(comp.instructions)}
                 for comp in module.computations.values()}
    uses: Uses = {}
    for comp in module.computations.values():
        for i, user in enumerate(comp.instructions):
            for k, op in enumerate(module.operands_of(user)):
                if op.computation == comp.name:
                    at = i
                else:
                    holder = sim._ancestor_in(user, op.computation)
                    if holder is None:
                        continue
                    at = positions[op.computation][holder.name]
                result = user.operand_results[k] if k < len(user.operand_results) else None
                if result is None and user.opcode == "get-tuple-element" and op.shape.is_tuple:
                    # reads one element: the others (a cuBLAS call's workspace) may die before it
                    at_index = user.int_attribute("index", -1)
                    result = at_index if 0 <= at_index < len(op.shape.elements) else None
                slot = uses.setdefault((op.computation, op.name), {})
                slot[result] = max(slot.get(result, -1), at)
    return uses


def heap_temporaries(module: HloModule) -> tuple[list[str], list[tuple[int, int, int, str]], int]:
    """What layout_total lays out, for comparing with XLA's dumps (analyses/layout_vs_xla.py):
    the walked schedule's instruction names, each temporary left for the heap as (first, last
    schedule index, bytes, "instruction{element}"), and the arguments' and outputs' bytes."""
    sim = _LiveSim(module)
    sim.run(module.entry, (), 0, _last_uses(module, sim))
    name_of = {value_id[:2]: name for name, value_id in sim._ids.items()}
    left = into_output_allocations(sim.intervals, sim.outputs)
    temporaries = [(first, last, size, f"{name_of.get(key[:2], '?')}{{{key[2] if key[2] > 0 else ''}}}")
                   for first, last, size, key in left]
    return [inst.name for inst, _ in walk_schedule(module)], temporaries, sim.fixed_bytes

def trace_module(module: HloModule, *, buffer_assignment: str | None = None,
                 memory: dict | None = None) -> Trace:
    """Returns the memory figures of `module` (optimized HLO, or StableHLO in textual order).

    prealloc_accumulated: running sum of prealloc_bytes over walk_schedule. live_curve: bytes
    live at each walked instruction: a value is allocated where defined and freed after its
    last use in its computation; aliases (ALIAS_OPCODES, in-place updates) add nothing and keep
    their source alive; a while/call/conditional adds the live bytes of its computations while
    they run (their results are the caller's buffers); entry parameters are live throughout;
    constants are executable data, not heap. `memory` is CompileResult.memory (XLA's
    memory_analysis, with 'xla_total'); `buffer_assignment` the text of XLA's
    *-buffer-assignment.txt dump (hloscope.buffer_assignment documents the format).
    """
    schedule: list[Instruction] = []
    stacks: list[Stack] = []
    accumulated: list[int] = []
    total = 0
    for inst, stack in walk_schedule(module):
        total += prealloc_bytes(module, inst)
        schedule.append(inst)
        stacks.append(stack)
        accumulated.append(total)

    sim = _LiveSim(module)
    uses = _last_uses(module, sim)
    sim.run(module.entry, (), 0, uses)
    curve = sim.curve
    peak_index = max(range(len(curve)), key=curve.__getitem__) if curve else None
    at_peak: list[tuple[Instruction, int]] = []
    if peak_index is not None:
        again = _LiveSim(module)
        again.snapshot_at = peak_index
        again.run(module.entry, (), 0, uses)
        at_peak = sorted(again.snapshot, key=lambda item: -item[1])
    order = ("optimized HLO schedule" if module.is_scheduled
             else "textual order of the module (it has no schedule)")
    sources = {
        "prealloc_accumulated": f"sum of instruction output bytes over the {order}",
        "live_peak": f"simulation over the {order}",
    }
    if module.sizes_are_global:
        sources["sizes_are_global"] = module.sizes_are_global
    if module.input_output_alias:
        donated = _donated_argument_bytes(module)
        trace_figures = {"donated_bytes": donated}
        sources["donated_bytes"] = ("input_output_alias of the module: outputs written into donated "
                                    "arguments' buffers (counted once, as the argument)")
        sources["live_peak"] += "; donated outputs share their argument's buffer"
    else:
        trace_figures = {}
    layout_total = None
    if module.dialect == "hlo" and module.is_scheduled:
        layout_total = sim.fixed_bytes + best_fit_heap(into_output_allocations(sim.intervals, sim.outputs))
        sources["layout_total"] = ("arguments + outputs + the temporaries placed at offsets as XLA's heap "
                                   "simulator does (best fit, largest first), gaps included")
    xla_total = None
    if memory is not None and memory.get("xla_total") is not None:
        xla_total = int(memory["xla_total"])
        sources["xla_total"] = memory.get("source", "XLA memory_analysis (argument + output + temp - alias)")
    trace = Trace(
        schedule=schedule, stacks=stacks, prealloc_accumulated=accumulated, live_curve=curve,
        live_peak=max(curve) if curve else 0, live_peak_index=peak_index, live_at_peak=at_peak,
        xla_total=xla_total, sources=sources, figures=trace_figures, layout_total=layout_total,
    )
    if buffer_assignment is not None:
        assignment = parse_buffer_assignment(buffer_assignment)
        trace.buffer_assignment = assignment
        trace.buffer_assignment_temp = assignment.temp_bytes
        trace.buffer_assignment_total = assignment.total_bytes
        trace.figures.update(assignment.figures())
        sources["buffer_assignment_temp"] = "XLA buffer assignment dump (preallocated-temp allocations)"
        sources["buffer_assignment_total"] = "XLA buffer assignment dump (sum of all allocations)"
    return trace

