"""Offenders: the buffers that explain a module's memory, with the loops, source line and cause.

    for f in find_offenders(parse_module(text), budget_bytes=80 << 30):
        print(f.kind, f.shape, f.bytes, f.loops, f.source, f.cause)

Kinds, most specific first: `loop_stacked_residual` (a loop writes one slice per iteration into
a buffer it carries: what autodiff of `lax.scan` does with a residual, Appendix A's buffer),
`large_integer_table` (an integer buffer of at least `min_bytes`), `large_buffer` (at least
`budget_share` of `budget_bytes`). docs/figures.md has the rules and the measured example.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

from hloscope.hlo import CALL_OPCODES, HloModule, Instruction, WhileLoop
from hloscope.hlo.frames import shown_source
from hloscope.trace import Stack, dus_of, in_place_operand, prealloc_bytes, walk_schedule
from hloscope.units import short_bytes

_KIND_RANK = {"loop_stacked_residual": 0, "large_integer_table": 1, "large_buffer": 2}
_INTEGER = ("s", "u")
# Seen through when following a buffer to where it is carried (no data change).
_ALIAS = frozenset({"bitcast", "copy", "get-tuple-element", "tuple", "reshape"})
# Seen through when following a stacked update back to the loop that produced it.
_RESHAPING = _ALIAS | {"broadcast", "broadcast_in_dim", "transpose", "convert"}
# Values that differ from one execution to the next even with the same operands.
_VARYING = frozenset({"rng", "rng-bit-generator", "rng-get-and-update-state", "rng_bit_generator",
                      "custom-call", "custom_call", "infeed", "recv", "recv-done"})
# Ops whose computation's parameters are their operands and whose results are its results
# (a shard_map body included: its sdy.manual_computation region is one).
_CALLS = CALL_OPCODES | {"fusion"}
_MAX_DEPTH = 600
Val = tuple[Instruction, tuple[int, ...], Stack]


@dataclass
class Finding:
    """One buffer that matters, and why. `loops` are trip counts, outermost first."""

    kind: str
    instruction: str
    computation: str
    opcode: str
    shape: str
    dtype: str
    bytes: int
    op_name: str | None
    source: str | None
    loops: list[int] = field(default_factory=list)
    loop_invariant: bool | None = None
    context: str | None = None
    cause: str = ""
    remedy: str = ""
    origin: str | None = None  # where a loop-invariant stacked value was made, e.g. an entry argument
    user_source: str | None = None  # the user's line when `source` is a library's (hloscope.hlo.frames)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


class _Flow:
    """Follows values through tuples, aliases, fusions, calls and loops, keeping the call stack
    so a computation with several callers is resolved for the caller at hand."""

    def __init__(self, module: HloModule) -> None:
        self.m = module
        self.loops: dict[int, WhileLoop] = {id(w.instruction): w for w in module.while_loops()}
        self.memo: dict[tuple, bool] = {}

    def operand(self, inst: Instruction, k: int, stack: Stack, idx: tuple[int, ...] = ()) -> Val:
        op = self.m.operands_of(inst)[k]
        result = inst.operand_results[k] if k < len(inst.operand_results) else None
        if op.computation != inst.computation:  # an MLIR capture: the stack of the holder
            cut = [p for p, s in enumerate(stack) if s.computation == op.computation]
            stack = stack[:cut[-1]] if cut else stack
        return op, ((result,) if result is not None else ()) + idx, stack

    def output(self, comp: str, idx: tuple[int, ...], stack: Stack) -> Val:
        root = self.m.computations[comp].root()
        if root.opcode == "return":  # MLIR: the terminator's operands are the results
            if not root.operands:
                return root, idx, stack
            k = idx[0] if idx and len(root.operands) > 1 else 0
            return self.operand(root, k, stack, idx[1:] if idx and len(root.operands) > 1 else idx)
        return root, idx, stack

    def carried(self, val: Val) -> tuple[WhileLoop, int] | None:
        """(loop, element) when `val` is a loop-carried element seen inside that loop's body."""
        inst, idx, stack = val
        if inst.opcode != "parameter" or not stack or stack[-1].opcode != "while":
            return None
        loop = self.loops.get(id(stack[-1]))
        if loop is None or inst.computation != loop.body:
            return None
        if self.m.dialect == "hlo":
            return (loop, idx[0]) if idx else None
        return loop, inst.int_attribute("parameter_number", -1)

    def init(self, loop: WhileLoop, k: int, stack: Stack) -> Val:
        """The value element k of `loop` starts from (`stack` is the while's own stack)."""
        w = loop.instruction
        return self.operand(w, 0, stack, (k,)) if len(w.operands) == 1 else self.operand(w, k, stack)

    def step(self, val: Val, through: frozenset[str], enter: bool = True) -> Val | None:
        """One step towards where `val` comes from, or None where it is made (`enter`: look
        inside fusions and calls for what they return)."""
        inst, idx, stack = val
        op = inst.opcode
        if op in ("get-tuple-element", "get_tuple_element") and "get-tuple-element" in through:
            return self.operand(inst, 0, stack, (inst.int_attribute("index", 0),) + idx)
        if op == "tuple" and idx and "tuple" in through:
            return self.operand(inst, idx[0], stack, idx[1:])
        if op in through and inst.operands and op not in ("tuple", "get-tuple-element"):
            return self.operand(inst, 0, stack, idx)
        if op == "parameter" and self.carried(val) is None:
            if stack and inst.computation in stack[-1].called_computations:
                caller, rest = stack[-1], stack[:-1]
            else:  # no stack for this computation: its first caller, as loop_nest does
                caller, rest = (self.m.callers(inst.computation) or [None])[0], ()
            if caller is None:
                return None
            number = inst.int_attribute("parameter_number", -1)
            if caller.opcode in _CALLS and 0 <= number < len(caller.operands):
                return self.operand(caller, number, rest, idx)
            if caller.opcode == "conditional" and inst.computation in caller.called_computations:
                branch = caller.called_computations.index(inst.computation)
                return self.operand(caller, branch + 1, rest, idx)
            return None
        if enter and op in _CALLS and inst.called_computations:
            return self.output(inst.called_computations[0], idx, stack + (inst,))
        return None

    def source(self, val: Val, through: frozenset[str], enter: bool = True) -> Val:
        for _ in range(_MAX_DEPTH):
            nxt = self.step(val, through, enter)
            if nxt is None:
                return val
            val = nxt
        return val

    def passthrough(self, loop: WhileLoop, k: int, stack: Stack) -> bool:
        """Whether the body returns element k unchanged (`stack` ends with the while)."""
        out = self.source(self.output(loop.body, (k,), stack), _ALIAS)
        found = self.carried(out)
        return found is not None and found[0] is loop and found[1] == k

    def invariant(self, val: Val, loop: Instruction, depth: int = 0) -> bool:
        """Whether `val` is the same in every iteration of `loop` (see docs/figures.md)."""
        inst, idx, stack = val
        if loop not in stack:
            return True  # made before the loop starts
        key = (id(inst), idx, tuple(map(id, stack)), id(loop))
        if key in self.memo:
            return self.memo[key]
        if depth > _MAX_DEPTH:
            return False
        self.memo[key] = False  # a cycle is a dependence on the previous iteration
        result = self._invariant(val, loop, depth + 1)
        self.memo[key] = result
        return result

    def origin(self, val: Val, loop: Instruction, depth: int = 0) -> Instruction | None:
        """The instruction outside `loop` that an invariant `val` comes from (the same paths as
        `invariant`, following the operand of the same dtype), or None if none is found."""
        inst, idx, stack = val
        if loop not in stack:
            # Outside the loops: follow aliases and call boundaries out to where it was made.
            return self.source(val, _ALIAS | {"convert", "broadcast", "broadcast_in_dim"}, enter=False)[0]
        if depth > _MAX_DEPTH:
            return None
        carried = self.carried(val)
        if carried is not None:
            w, k = carried
            return self.origin(self.init(w, k, stack[:stack.index(w.instruction)]), loop, depth + 1)
        if inst.opcode == "while" and idx and id(inst) in self.loops:
            return self.origin(self.init(self.loops[id(inst)], idx[0], stack), loop, depth + 1)
        if inst.opcode in ("conditional", "case", "if"):
            branches = (self.output(c, idx, stack + (inst,)) for c in inst.called_computations
                        if c in self.m.computations)
            return next((o for o in (self.origin(b, loop, depth + 1) for b in branches)
                         if o is not None and o.opcode != "constant"), None)
        nxt = self.step(val, frozenset({"get-tuple-element", "tuple"}))
        if nxt is not None:
            return self.origin(nxt, loop, depth + 1)
        for k in range(len(inst.operands)):
            operand = self.operand(inst, k, stack)
            if operand[0].shape.dtype == inst.shape.dtype and operand[0].opcode != "constant":
                found = self.origin(operand, loop, depth + 1)
                if found is not None:
                    return found
        return None

    def _invariant(self, val: Val, loop: Instruction, depth: int) -> bool:
        inst, idx, stack = val
        op = inst.opcode
        carried = self.carried(val)
        if carried is not None:
            w, k = carried
            at = stack.index(w.instruction)
            if not self.passthrough(w, k, stack[:at + 1]):
                return False
            return w.instruction is loop or self.invariant(self.init(w, k, stack[:at]), loop, depth)
        if op == "while" and idx:
            w = self.loops.get(id(inst))
            return (w is not None and self.passthrough(w, idx[0], stack + (inst,))
                    and self.invariant(self.init(w, idx[0], stack), loop, depth))
        if op in ("conditional", "case", "if"):
            # Either branch may run: each must give an invariant value or a constant (the
            # zeros a skipped block returns); which one runs is not asked.
            return all(self.invariant(self.output(c, idx, stack + (inst,)), loop, depth)
                       for c in inst.called_computations if c in self.m.computations)
        if op in ("constant", "iota") or op in _VARYING:
            return op not in _VARYING
        nxt = self.step(val, frozenset({"get-tuple-element", "tuple"}))
        if nxt is not None:
            return self.invariant(nxt, loop, depth)
        if op == "parameter":
            return False  # a parameter we cannot map to a caller: do not claim invariance
        return all(self.invariant(self.operand(inst, k, stack), loop, depth)
                   for k in range(len(inst.operands)))


def _stacked_dim(buffer: Instruction, update_dims: tuple[int, ...]) -> int | None:
    """The one dimension a one-slice-per-iteration update writes (update size 1 there)."""
    dims = buffer.shape.dims
    if buffer.shape.is_tuple or len(dims) != len(update_dims):
        return None
    differ = [d for d, (a, b) in enumerate(zip(dims, update_dims)) if a != b]
    return differ[0] if len(differ) == 1 and update_dims[differ[0]] == 1 and dims[differ[0]] > 1 else None


def _stacking(flow: _Flow, site: Instruction, stack: Stack, ref: Instruction | None, depth: int = 0):
    """(loops, invariant, init instruction, dim) when `site` stacks into its loop's carry."""
    found = dus_of(flow.m, site)
    if found is None or depth > 8:
        return None
    dus, inner = found
    at = stack + inner  # the fusions/calls between the site and the update itself
    buffer = flow.source(flow.operand(dus, 0, at), _ALIAS)
    carried = flow.carried(buffer)
    if carried is None:
        return None
    loop, k = carried
    update = flow.operand(dus, 1, at)
    dim = _stacked_dim(dus, update[0].shape.dims)
    if dim is None or (loop.trip_count is not None and loop.trip_count != dus.shape.dims[dim]):
        return None
    loops = [loop.trip_count or dus.shape.dims[dim]]
    ref = ref or loop.instruction
    w_at = buffer[2].index(loop.instruction)
    # What starts the stacked buffer (the zeros before the loop): the same memory, not a finding.
    init_val = flow.source(flow.init(loop, k, buffer[2][:w_at]),
                           frozenset({"bitcast", "get-tuple-element", "tuple"}), enter=False)
    src = flow.source(update, _RESHAPING)
    inner_loop = flow.loops.get(id(src[0])) if src[0].opcode == "while" and src[1] else None
    if inner_loop is not None:
        out = flow.source(flow.output(inner_loop.body, (src[1][0],), src[2] + (src[0],)), _ALIAS)
        deeper = _stacking(flow, out[0], out[2], ref, depth + 1)
        if deeper is not None:
            return loops + deeper[0], deeper[1], init_val[0], dim, deeper[4]
        return loops, None, init_val[0], dim, None
    invariant = flow.invariant(update, ref)
    return loops, invariant, init_val[0], dim, flow.origin(update, ref) if invariant else None


def _context(chain: list[Instruction]) -> str | None:
    """'backward' if the first absolute op_name has transpose(, 'forward' if jvp(, else None.

    JAX names ops `jit(f)/jvp()/while/body/...` in the forward pass of a gradient and
    `jit(f)/transpose(jvp())/...` in its backward pass; names inside private functions are
    relative (`dynamic_update_slice`), so the callers' names are read after the op's own.
    """
    for inst in chain:
        name = inst.op_name or ""
        if "transpose(" in name:
            return "backward"
        if "jvp(" in name or "linearize(" in name:
            return "forward"
        if name.startswith(("jit(", "pjit(")):
            return None
    return None


def _where(chain: list[Instruction]) -> tuple[str | None, str | None, str | None]:
    """op_name, source line and the user's line (see Finding) of the innermost op in `chain` with each."""
    op_name = next((i.op_name for i in chain if i.op_name), None)
    at = next((i for i in chain if i.source_file and i.source_line), None)
    return op_name, at and f"{at.source_file}:{at.source_line}", at and at.user_source


def _stacked_finding(flow: _Flow, site: Instruction, stack: Stack, result) -> Finding:
    loops, invariant, _, dim, origin = result
    dus = dus_of(flow.m, site)[0]
    dims = list(dus.shape.dims)
    taken, at = [dim], dim
    for trips in loops[1:]:  # keep the inner loops whose trip counts the next dims show
        at += 1
        while at < len(dims) and dims[at] == 1 and trips != 1:
            at += 1
        if at >= len(dims) or dims[at] != trips:
            break
        taken.append(at)
    loops = loops[:len(taken)]
    slice_dims = [d for i, d in enumerate(dims) if i not in taken]
    chain = [site, dus, *reversed(stack)]
    op_name, source, user_source = _where(chain)
    context = _context(chain)
    dtype = site.shape.dtype
    what = f"{dtype}[{','.join(map(str, slice_dims))}]"
    counts = " x ".join(map(str, loops))
    made = _describe_origin(origin)
    subject = (f"a loop-invariant {what} value{made} (the same in every iteration: captured by the loop "
               "body or carried through it unchanged)" if invariant else f"a {what} value")
    why = {"forward": "autodiff of a scan saves a residual per iteration for the backward pass",
           "backward": "the backward loop writes one result per iteration, e.g. the gradient of "
                       "per-layer weights stacked over a scan of layers",
           None: "the loop stacks one slice per iteration (a scan's ys)"}[context]
    cause = (f"{subject} is saved once per iteration of the loops with trip counts {counts} into "
             f"{dus.shape} ({short_bytes(site.shape.nbytes())}) ({why}).")
    if invariant and context == "forward":
        remedy = ("give the loop body (e.g. the blockwise attention) a custom VJP that saves only its "
                  "inputs, or slice the closed-over value outside the loops and pass the slices as scan "
                  "xs (only chunk-sized slices are then saved), or use larger chunks so the loops run "
                  "fewer iterations.")
    elif context == "forward":
        remedy = ("rematerialise it in the backward pass (jax.checkpoint with a policy that does not save "
                  "it) or use larger chunks so the loops run fewer iterations.")
    elif context == "backward":
        # A gradient stacked over the loop is an output the step needs (an equinox/flax scan over
        # layers writes its weight gradients this way): fewer iterations cannot remove it.
        remedy = ("usually needed: it is the gradient of a value stacked over the loop (per-layer "
                  "weights); if the caller only sums it, accumulate inside the loop instead, or shard it.")
    else:
        remedy = ("return smaller per-iteration outputs from the loop, or reduce them inside it "
                  "instead of stacking them.")
    return Finding("loop_stacked_residual", site.name, site.computation, site.opcode, str(site.shape),
                   dtype, site.shape.nbytes(), op_name, source, loops, invariant, context, cause, remedy,
                   made.removeprefix(", ") or None, user_source)


def _describe_origin(origin: Instruction | None) -> str:
    """', the entry argument 3 (segment_ids)'-style words for where a value was made, or ''."""
    if origin is None:
        return ""
    if origin.opcode == "parameter":
        number = origin.attributes.get("parameter_number")
        label = f"argument {number}" if number is not None else "an argument"
        name = origin.op_name or origin.name
        return f", {label} {name!r} of {origin.computation}"
    line = f"{origin.source_file}:{origin.source_line}" if origin.source_file else None
    where = f" at {shown_source(line, origin.user_source)}" if line else ""
    return f", made by {origin.opcode} {origin.name!r}{where} before the loops"


_LAZY_BEFORE_FUSION = frozenset({"broadcast_in_dim", "broadcast", "iota"})


def find_offenders(module: HloModule, *, budget_bytes: int | None = None, budget_share: float = 0.05,
                   min_bytes: int = 1 << 20) -> list[Finding]:
    """Returns the offending buffers of `module`: loop-invariant stacked residuals first (pure
    waste), then the rest, each group largest first (one finding per buffer).

    Loop-stacked residuals and integer tables are reported from `min_bytes` up; any buffer of
    at least `budget_share * budget_bytes` is a large_buffer when a budget is given. Works on
    optimized HLO and on StableHLO (before XLA: no fusions, same loops).
    """
    if budget_bytes is not None and budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
    if not 0 < budget_share <= 1:
        raise ValueError(f"budget_share must be in (0, 1], got {budget_share}")
    flow = _Flow(module)
    threshold = budget_share * budget_bytes if budget_bytes else None
    found: dict[tuple[str, str], Finding] = {}
    covered: set[tuple[str, str]] = set()
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20 * _MAX_DEPTH))
    try:
        for inst, stack in walk_schedule(module):
            if any(s.opcode in CALL_OPCODES and dus_of(module, s) for s in stack):
                continue  # inside a helper whose call is the site itself
            key = (inst.computation, inst.name)
            size = inst.shape.nbytes()
            if key in found or size < min(min_bytes, threshold or min_bytes):
                continue
            if any(s.opcode == "while" for s in stack) and dus_of(module, inst):
                result = _stacking(flow, inst, stack, None)
                if result is not None and size >= min_bytes:
                    found[key] = _stacked_finding(flow, inst, stack, result)
                    covered.add((result[2].computation, result[2].name))
                    continue
            argument = inst.opcode == "parameter" and not stack and inst.computation == module.entry
            in_place = in_place_operand(module, inst) is not None
            if not argument and (prealloc_bytes(module, inst) == 0 or in_place):
                continue
            chain = [inst, *reversed(stack)]
            op_name, source, user_source = _where(chain)
            dtype = inst.shape.dtype
            common = dict(instruction=inst.name, computation=inst.computation, opcode=inst.opcode,
                          shape=str(inst.shape), dtype=dtype, bytes=size, op_name=op_name, source=source,
                          user_source=user_source, loops=[], context=_context(chain))
            # A parameter is data the caller hands in (segment ids, tokens), not a table XLA built;
            # before optimization a broadcast or iota is lazy: XLA fuses it into its consumers.
            lazy = module.dialect == "stablehlo" and inst.opcode in _LAZY_BEFORE_FUSION
            built = inst.opcode != "parameter" and not lazy
            if built and dtype.startswith(_INTEGER) and dtype[1:].isdigit() and size >= min_bytes:
                found[key] = Finding("large_integer_table", **common, cause=(
                    f"{inst.shape} holds {short_bytes(size)} of integers: a table built whole from ids, "
                    "positions or indices."), remedy=(
                    "compute the values on the fly where they are used (from the ids and a chunk "
                    "offset), or keep them in a narrower type (int8/int16/bool) if their range allows."))
            elif threshold is not None and size >= threshold:
                found[key] = Finding("large_buffer", **common, cause=(
                    f"{inst.shape} takes {size / budget_bytes:.1%} of the {short_bytes(budget_bytes)} budget."),
                    remedy="shard it over more devices, rematerialise it, or compute it in chunks.")
    finally:
        sys.setrecursionlimit(old_limit)
    findings = [f for k, f in found.items() if k not in covered or f.kind == "loop_stacked_residual"]
    # Loop-invariant stacks first, then by bytes: the same value stored once per iteration is
    # pure waste that a fix removes whole, where a varying stack is data the backward pass reads
    # (and goes only by restructuring the gradient, e.g. a custom VJP).
    return sorted(findings, key=lambda f: (not f.loop_invariant, -f.bytes, _KIND_RANK[f.kind],
                                           f.computation, f.instruction))
