"""Assembles an HloModule from parsed computations: indexes, call relation, graph, while loops."""

from __future__ import annotations

from collections import defaultdict

import networkx

from hloscope.hlo.model import Computation, HloModule, Instruction, NodeKey, WhileLoop
from hloscope.hlo.trip_count import infer_trip_count, known_trip_count


def build_module(
    name: str,
    dialect: str,
    computations: list[Computation],
    entry: str,
    is_scheduled: bool,
    operand_keys: dict[NodeKey, list[NodeKey]],
    loop_parts: dict[NodeKey, tuple[str, str]],
) -> HloModule:
    """Builds the module; the parsers have already checked that every name resolves.

    ``operand_keys`` maps each instruction to the node keys of its operands (which differ from
    ``(computation, operand name)`` only for MLIR region captures); ``loop_parts`` maps each
    while instruction to its (body, condition) computation names.
    """
    comps = {c.name: c for c in computations}
    index: dict[NodeKey, Instruction] = {}
    callers: dict[str, list[Instruction]] = defaultdict(list)
    for comp in computations:
        comp.is_entry = comp.name == entry
        for inst in comp.instructions:
            index[(comp.name, inst.name)] = inst
            for callee in dict.fromkeys(inst.called_computations):  # once per distinct callee
                callers[callee].append(inst)

    graph = networkx.DiGraph()
    graph.add_nodes_from((key, {"instruction": inst}) for key, inst in index.items())
    graph.add_edges_from(((src, dst) for dst, srcs in operand_keys.items() for src in srcs), kind="data")
    graph.add_edges_from(
        ((comp.name, inst.name), (callee, comps[callee].root().name), {"kind": "calls", "computation": callee})
        for comp in computations
        for inst in comp.instructions
        for callee in inst.called_computations
    )

    module = HloModule(
        name=name,
        dialect=dialect,
        computations=comps,
        entry=entry,
        is_scheduled=is_scheduled,
        graph=graph,
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
    order = {id(inst): i for i, inst in enumerate(module.instructions())}
    module._loops.sort(key=lambda w: order[id(w.instruction)])
    return module
