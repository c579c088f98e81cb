"""Assembles an HloModule from parsed computations: indexes, call relation, graph, while loops."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Callable

from hloscope.hlo.errors import ParseError
from hloscope.hlo.model import MAX_CALL_DEPTH, Computation, HloModule, Instruction, NodeKey, WhileLoop
from hloscope.hlo.trip_count import infer_trip_count, known_trip_count

if TYPE_CHECKING:
    import networkx


def build_module(
    name: str,
    dialect: str,
    computations: list[Computation],
    entry: str,
    is_scheduled: bool,
    operand_keys: dict[NodeKey, list[NodeKey]],
    loop_parts: dict[NodeKey, tuple[str, str]],
    fail: Callable[[str, NodeKey], ParseError] | None = None,
    forward: set[str] | None = None,
    index: dict[NodeKey, Instruction] | None = None,
    calling: list[Instruction] | None = None,
) -> HloModule:
    """Builds the module; the parsers have already checked that every name resolves.

    Programs that cannot run are refused with ``fail(reason, node key of the culprit)`` (a
    ParseError naming its line): operand cycles, calls that recurse (a while body calling
    itself), call chains deeper than MAX_CALL_DEPTH.

    ``operand_keys`` maps each instruction to the node keys of its operands (which differ from
    ``(computation, operand name)`` only for MLIR region captures); ``loop_parts`` maps each
    while instruction to its (body, condition) computation names. ``forward`` names the
    computations where an operand is defined at or after its user, if the parser knows them
    (only those can hold an operand cycle); None: they are found here. ``index`` (every
    instruction by node key, in textual order) and ``calling`` (the instructions that call
    computations, in textual order) save two walks over every instruction when the parser
    collected them as it read; None: they are found here.
    """
    comps = {c.name: c for c in computations}
    if fail is None:
        def fail(reason: str, key: NodeKey) -> ParseError:
            return ParseError(f"{reason} (at {key[0]}/{key[1]})")
    if index is None or calling is None:
        index, calling = {}, []
        for comp in computations:
            cname = comp.name
            for inst in comp.instructions:
                index[(cname, inst.name)] = inst
                if inst.called_computations:
                    calling.append(inst)
    _check_calls(comps, entry, fail, calling)
    _check_operand_cycles(computations, operand_keys, fail, forward)
    for comp in computations:
        comp.is_entry = comp.name == entry
    callers: dict[str, list[Instruction]] = defaultdict(list)
    for inst in calling:
        for callee in dict.fromkeys(inst.called_computations):  # once per distinct callee
            callers[callee].append(inst)

    module = HloModule(
        name=name,
        dialect=dialect,
        computations=comps,
        entry=entry,
        is_scheduled=is_scheduled,
        _index=index,
        _operand_keys=operand_keys,
        _callers=dict(callers),
    )
    for key, (body, condition) in loop_parts.items():
        inst = index[key]
        trips = known_trip_count(inst.attributes.get("backend_config"))
        if trips is None:
            trips = infer_trip_count(module, inst, body, condition)
        module._loops.append(WhileLoop(inst, body, condition, trips))
        module._loop_of[key] = module._loops[-1]
    if len(module._loops) > 1:
        order = {id(inst): i for i, inst in enumerate(module.instructions())}
        module._loops.sort(key=lambda w: order[id(w.instruction)])
    return module


def build_graph(module: HloModule) -> "networkx.DiGraph":
    """The module's networkx graph (HloModule.graph builds it on first use: a large module's
    analyses do not need it, and it costs a fifth of a parse)."""
    import networkx  # imported when a graph is built: it costs a third of `--hlo`'s start-up

    graph = networkx.DiGraph()
    graph.add_nodes_from((key, {"instruction": inst}) for key, inst in module._index.items())
    graph.add_edges_from(((src, dst) for dst, srcs in module._operand_keys.items() for src in srcs), kind="data")
    graph.add_edges_from(
        ((comp.name, inst.name), (callee, module.computations[callee].root().name),
         {"kind": "calls", "computation": callee})
        for comp in module.computations.values()
        for inst in comp.instructions
        for callee in inst.called_computations
    )
    return graph


def _check_calls(comps: dict[str, Computation], entry: str,
                 fail: Callable[[str, NodeKey], ParseError], calling: list[Instruction]) -> None:
    """Refuses recursion (a computation reachable from itself through calls) and call chains
    deeper than MAX_CALL_DEPTH below the entry. Iterative: a deep chain must not overflow
    Python's stack here either. ``calling``: the instructions that call, in textual order."""
    calls: dict[str, list[tuple[str, Instruction]]] = {name: [] for name in comps}
    for inst in calling:
        edges = calls.get(inst.computation)
        if edges is not None:
            edges.extend((callee, inst) for callee in dict.fromkeys(inst.called_computations) if callee in comps)
    height: dict[str, int] = {}  # longest chain of calls below a computation
    on_path: set[str] = set()
    for start in comps:
        if start in height:
            continue
        if not calls[start]:  # most computations (fusions, reducers) call nothing
            height[start] = 0
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        on_path.add(start)
        while stack:
            name, k = stack[-1]
            edges = calls[name]
            if k < len(edges):
                stack[-1] = (name, k + 1)
                callee, inst = edges[k]
                if callee in on_path:
                    raise fail(f"expected no recursion: {inst.opcode} {inst.name!r} in {name!r} calls "
                               f"{callee!r}, which is already running (a program that never ends)",
                               (name, inst.name))
                if callee not in height:
                    on_path.add(callee)
                    stack.append((callee, 0))
                continue
            height[name] = max((height[c] + 1 for c, _ in edges), default=0)
            on_path.discard(name)
            stack.pop()
    if height.get(entry, 0) > MAX_CALL_DEPTH:
        raise fail(f"expected calls nested at most {MAX_CALL_DEPTH} deep; the entry's chain of "
                   f"calls is {height[entry]} deep", (entry, comps[entry].instructions[0].name))


def _check_operand_cycles(computations: list[Computation], operand_keys: dict[NodeKey, list[NodeKey]],
                          fail: Callable[[str, NodeKey], ParseError], known: set[str] | None = None) -> None:
    """Refuses an instruction that depends on itself through its operands. Only computations
    with a forward reference (an operand defined at or after its user, which HLO text allows)
    can have one, so the others cost one pass (none when the parser has listed the computations
    with a forward reference in ``known``)."""
    for comp in computations:
        cname = comp.name
        if known is not None and cname not in known:
            continue
        where = {inst.name: i for i, inst in enumerate(comp.instructions)}
        forward = False
        for i, inst in enumerate(comp.instructions):
            keys = operand_keys.get((cname, inst.name))
            if keys:
                for c, name in keys:
                    if c == cname and where.get(name, -1) >= i:
                        forward = True
                        break
                if forward:
                    break
        if not forward:
            continue
        import networkx  # only for a computation with a forward reference

        graph = networkx.DiGraph()
        graph.add_nodes_from(where)
        graph.add_edges_from((name, inst.name) for inst in comp.instructions
                             for c, name in operand_keys.get((comp.name, inst.name), ()) if c == comp.name)
        try:
            cycle = networkx.find_cycle(graph)
        except networkx.NetworkXNoCycle:
            continue
        names = " -> ".join(edge[0] for edge in cycle) + f" -> {cycle[0][0]}"
        raise fail(f"expected no operand cycle; {names} depend on each other", (comp.name, cycle[0][0]))
