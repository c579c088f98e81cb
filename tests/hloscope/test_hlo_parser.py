"""hloscope.hlo on text that jax itself produces: compiled HLO, unoptimized HLO, StableHLO (pretty,
with debug info, generic form). Every expected value comes from the programs below."""

from __future__ import annotations

import inspect
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from hloscope.hlo import HloModule, ParseError, parse_hlo, parse_module, parse_stablehlo

FORI_LENGTH = 8
OUTER_LENGTH, INNER_LENGTH = 3, 5


def fori_program(x):
    def body(i, buf):
        row = jnp.sin(x[i]) * 2.0 + 1.0
        return lax.dynamic_update_slice(buf, row[None], (i, 0))

    buf = jnp.zeros((FORI_LENGTH, 128), jnp.float32)
    out = lax.fori_loop(0, FORI_LENGTH, body, buf)
    return out, jnp.sum(out)


def nested_scan_program(x):
    def outer(carry, xs):
        def inner(c, y):
            return c + y, c * y

        carry, ys = lax.scan(inner, carry, xs)
        return carry, ys

    return lax.scan(outer, jnp.zeros(x.shape[-1]), x)


def branchy_program(x, p):
    y = lax.cond(p > 0, lambda a: a * 2, lambda a: a - 1, x)
    z = lax.switch(p, [lambda a: a, lambda a: a + 1, lambda a: a * 3], y)
    return jnp.max(z, axis=0), lax.reduce(z, 0.0, lambda a, b: a + b * b, (0,))


def line_of(func, needle: str) -> int:
    """The line of this file on which ``needle`` appears inside ``func``."""
    lines, start = inspect.getsourcelines(func)
    return start + next(k for k, line in enumerate(lines) if needle in line)


@lru_cache(maxsize=None)
def texts(program: str) -> dict[str, str]:
    """Every text form of one of the programs above (compiled once per test session)."""
    if program == "fori":
        lowered = jax.jit(fori_program).lower(jnp.ones((FORI_LENGTH, 128), jnp.float32))
    elif program == "nested":
        lowered = jax.jit(nested_scan_program).lower(jnp.ones((OUTER_LENGTH, INNER_LENGTH, 16)))
    else:
        lowered = jax.jit(branchy_program).lower(jnp.ones((4, 3)), 1)
    generic = lowered.compiler_ir("stablehlo").operation.get_asm(print_generic_op_form=True, enable_debug_info=True)
    return {
        "hlo": lowered.compile().as_text(),
        "unoptimized_hlo": lowered.as_text(dialect="hlo"),
        "stablehlo": lowered.as_text(),
        "debug": lowered.as_text(debug_info=True),
        "generic": generic,
    }


def same_file(path: str | None) -> bool:
    return path is not None and Path(path).resolve() == Path(__file__).resolve()


HLO_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s", re.M)
MLIR_RESULTS = re.compile(r"^\s*%[\w$.\-]+(?::\d+)?(?:\s*,\s*%[\w$.\-]+(?::\d+)?)*\s*=\s", re.M)
MLIR_RETURN = re.compile(r'^\s*"?(?:func\.|stablehlo\.|mhlo\.)?return\b', re.M)


@pytest.mark.parametrize("program", ["fori", "nested", "branchy"])
@pytest.mark.parametrize("form", ["hlo", "unoptimized_hlo"])
def test_hlo_instruction_count_matches_definitions(program, form):
    text = texts(program)[form]
    module = parse_hlo(text)
    assert module.dialect == "hlo"
    assert len(list(module.instructions())) == len(HLO_DEFINITION.findall(text))
    assert module.graph.number_of_nodes() == len(HLO_DEFINITION.findall(text))
    for comp in module.computations.values():
        assert [i.position for i in comp.instructions] == list(range(len(comp.instructions)))
        assert sum(i.is_root for i in comp.instructions) == 1


@pytest.mark.parametrize("program", ["fori", "nested", "branchy"])
@pytest.mark.parametrize("form", ["stablehlo", "debug", "generic"])
def test_stablehlo_op_count_matches_definitions(program, form):
    text = texts(program)[form]
    module = parse_stablehlo(text)
    ops = [i for i in module.instructions() if i.opcode not in ("parameter", "return")]
    # 'reduce ... applies stablehlo.add' gets its reducer written out as one more op.
    applies = [i for i in ops if "applies" in i.attributes]
    assert len(applies) == text.count(" applies ")
    assert len(ops) == len(MLIR_RESULTS.findall(text)) + len(applies)
    returns = [i for i in module.instructions() if i.opcode == "return"]
    assert len(returns) == len(MLIR_RETURN.findall(text)) + len(applies)
    assert not module.is_scheduled and module.entry == "main"


def test_compiled_fori_loop():
    module = parse_module(texts("fori")["hlo"])
    assert module.is_scheduled and module.name == "jit_fori_program"
    (loop,) = module.while_loops()
    assert loop.trip_count == FORI_LENGTH
    assert loop.instruction.computation == module.entry
    assert module.loop_nest(loop.body) == [loop] and module.loop_nest(loop.condition) == [loop]
    assert module.loop_nest(module.entry) == []

    dus_line = line_of(fori_program, "lax.dynamic_update_slice")
    updates = [i for i in module.instructions() if i.opcode == "dynamic-update-slice"]
    assert updates
    for dus in updates:
        assert str(dus.shape) == "f32[8,128]" and dus.shape.layout == (1, 0)
        assert dus.shape.nbytes() == FORI_LENGTH * 128 * 4
        assert dus.op_name.endswith("dynamic_update_slice")
        assert same_file(dus.source_file) and dus.source_line == dus_line
        # The update lives in a fused computation that a fusion in the body calls.
        assert module.loop_nest(dus.computation) == [loop]
        (fusion,) = module.callers(dus.computation)
        assert fusion.opcode == "fusion" and fusion.attributes["kind"] == "kLoop"
        assert module.graph.edges[(fusion.computation, fusion.name), (dus.computation, dus.name)] == {
            "kind": "calls", "computation": dus.computation}

    root = module.computations[module.entry].root()
    assert root.opcode == "tuple" and str(root.shape) == "(f32[8,128], f32[])"
    assert root.shape.nbytes() == FORI_LENGTH * 128 * 4 + 4
    for operand in module.operands_of(root):
        assert module.graph.edges[(operand.computation, operand.name), (root.computation, root.name)]["kind"] == "data"


def test_graph_edges_match_operands_and_calls():
    module = parse_module(texts("nested")["hlo"])
    for inst in module.instructions():
        node = (inst.computation, inst.name)
        assert module.graph.nodes[node]["instruction"] is inst
        data = {u for u, _, kind in module.graph.in_edges(node, data="kind") if kind == "data"}
        assert data == {(inst.computation, o) for o in inst.operands}
        calls = {v for _, v, kind in module.graph.out_edges(node, data="kind") if kind == "calls"}
        assert calls == {(c, module.computations[c].root().name) for c in inst.called_computations}
        for callee in inst.called_computations:
            assert inst in module.callers(callee)


def _check_nested(module: HloModule) -> None:
    loops = module.while_loops()
    assert sorted(w.trip_count for w in loops) == [OUTER_LENGTH, INNER_LENGTH]
    inner = next(w for w in loops if w.trip_count == INNER_LENGTH)
    outer = next(w for w in loops if w.trip_count == OUTER_LENGTH)
    assert module.loop_nest(inner.body) == [outer, inner]
    assert module.loop_nest(inner.condition) == [outer, inner]
    assert module.loop_nest(outer.body) == [outer]
    assert module.loop_nest(inner.instruction.computation) == [outer]


@pytest.mark.parametrize("form", ["hlo", "unoptimized_hlo", "stablehlo", "debug", "generic"])
def test_nested_scan_loop_nest(form):
    _check_nested(parse_module(texts("nested")[form]))


def test_trip_counts_inferred_without_known_trip_count():
    text = texts("nested")["unoptimized_hlo"]
    assert "known_trip_count" not in text  # so the counts below come from the loop conditions
    _check_nested(parse_hlo(text))


@pytest.mark.parametrize("form", ["stablehlo", "debug", "generic"])
def test_stablehlo_fori_loop(form):
    module = parse_stablehlo(texts("fori")[form])
    assert module.dialect == "stablehlo" and module.name == "jit_fori_program"
    (loop,) = module.while_loops()
    assert loop.trip_count == FORI_LENGTH
    assert loop.instruction.called_computations == [loop.condition, loop.body]
    assert loop.condition == f"main/while.{loop.instruction.name}/cond"
    assert loop.body == f"main/while.{loop.instruction.name}/body"
    assert module.computations[loop.body].parent == "main"
    assert module.computations[loop.condition].root().shape.dtype == "pred"

    (dus,) = [i for i in module.instructions() if i.opcode == "dynamic_update_slice"]
    assert str(dus.shape) == "f32[8,128]" and dus.shape.nbytes() == FORI_LENGTH * 128 * 4
    assert module.loop_nest(dus.computation) == [loop]
    assert module.operands_of(dus)[0].shape == dus.shape  # the buffer being updated
    if form == "stablehlo":
        assert dus.op_name is None and dus.source_file is None and dus.source_line is None
    else:
        assert dus.op_name.endswith("dynamic_update_slice")
        assert same_file(dus.source_file)
        assert dus.source_line == line_of(fori_program, "lax.dynamic_update_slice")
        assert "while" in loop.instruction.op_name
        assert loop.instruction.source_line == line_of(fori_program, "lax.fori_loop")


def test_stablehlo_multiple_results_and_captures():
    module = parse_stablehlo(texts("fori")["stablehlo"])
    (loop,) = module.while_loops()
    # '%1:4 = stablehlo.while(...)' is one instruction whose shape is the tuple of its 4 results;
    # 'reduce(%1#3 init: ...)' uses result 3 of it.
    assert loop.instruction.shape.is_tuple and len(loop.instruction.shape.elements) == 4
    (reduce,) = [i for i in module.instructions() if i.opcode == "reduce"]
    assert (reduce.operands[0], reduce.operand_results[0]) == (loop.instruction.name, 3)
    assert str(loop.instruction.shape.elements[3]) == "f32[8,128]"

    # Case branches use the function's %arg0 directly: an operand from an enclosing computation.
    branchy = parse_stablehlo(texts("branchy")["stablehlo"])
    captured = [(i, o) for i in branchy.instructions() if i.computation.startswith("main/case.")
                for o in branchy.operands_of(i) if o.computation == "main"]
    assert captured and any(o.opcode == "parameter" and o.name == "arg0" for _, o in captured)
    for user, operand in captured:
        edge = ((operand.computation, operand.name), (user.computation, user.name))
        assert branchy.graph.edges[edge]["kind"] == "data"


def test_branches_and_reducers():
    hlo = parse_module(texts("branchy")["hlo"])
    conditionals = [i for i in hlo.instructions() if i.opcode == "conditional"]
    assert sorted(len(c.called_computations) for c in conditionals) == [2, 3]
    assert hlo.while_loops() == []

    mlir = parse_module(texts("branchy")["stablehlo"])
    cases = [i for i in mlir.instructions() if i.opcode == "case"]
    assert sorted(len(c.called_computations) for c in cases) == [2, 3]
    for case in cases:
        assert [c.rsplit("/", 1)[1] for c in case.called_computations] == [
            f"branch{k}" for k in range(len(case.called_computations))]
        for branch in case.called_computations:
            assert mlir.computations[branch].root().opcode == "return"
            assert str(mlir.computations[branch].root().shape) == "f32[4,3]"
    reduces = [i for i in mlir.instructions() if i.opcode == "reduce"]
    assert len(reduces) == 2
    for reduce in reduces:
        (body,) = reduce.called_computations
        params = [i for i in mlir.computations[body].instructions if i.opcode == "parameter"]
        assert [str(p.shape) for p in params] == ["f32[]", "f32[]"]
        assert str(reduce.shape) == "f32[3]"
    (applied,) = [r for r in reduces if "applies" in r.attributes]
    reducer = mlir.computations[applied.called_computations[0]]
    assert [i.opcode for i in reducer.instructions] == ["parameter", "parameter", "maximum", "return"]
    assert reducer.root().opcode == "return" and str(reducer.root().shape) == "f32[]"


def test_parse_module_sniffs_the_dialect():
    forms = texts("fori")
    assert parse_module(forms["hlo"]).dialect == "hlo"
    assert parse_module("\n// a comment\n" + forms["stablehlo"]).dialect == "stablehlo"
    assert parse_module(forms["debug"]).dialect == "stablehlo"  # starts with '#loc' aliases
    assert parse_module(forms["generic"]).dialect == "stablehlo"
    with pytest.raises(ParseError) as err:
        parse_module("\n\nthis is not a module\n")
    assert err.value.lineno == 3 and "HloModule" in str(err.value)
    with pytest.raises(ParseError):
        parse_module("")


@pytest.mark.parametrize("program", ["nested", "branchy"])
def test_pretty_and_generic_forms_agree(program):
    pretty = parse_stablehlo(texts(program)["stablehlo"])
    generic = parse_stablehlo(texts(program)["generic"])
    # The generic printer writes reducers out in full where the pretty one says 'applies'.
    assert Counter(i.opcode for i in pretty.instructions()) == Counter(i.opcode for i in generic.instructions())

    def shape_of_names(module):  # SSA names differ between the forms; the region structure not
        return sorted(re.sub(r"\.[^/]+/", "./", name) for name in module.computations)

    assert shape_of_names(pretty) == shape_of_names(generic)
    assert [w.trip_count for w in pretty.while_loops()] == [w.trip_count for w in generic.while_loops()]
