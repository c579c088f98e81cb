"""The HLO parser's one-regex path for whole instruction lines (hlo_text._LINE) must give what the
general statement path gives: the same module, or the same error. The general path is the oracle
(``_HloParser(text, by_line=False)`` sends every statement through it)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hloscope.hlo import ParseError
from hloscope.hlo.hlo_text import _LINE, _HloParser
from hloscope.hlo.mlir_text import _MlirParser

from tests.hloscope.test_hlo_parser import texts


def _key(module) -> tuple:
    """Everything the parser decides, in comparable form."""
    insts = [(i.name, i.opcode, i.shape, i.computation, i.operands, i.called_computations, i.attributes,
              i.op_name, i.source_file, i.source_line, i.position, i.is_root, i.operand_results)
             for i in module.instructions()]
    return (module.entry, module.is_scheduled, module.input_output_alias, module.sizes_are_global, insts,
            sorted(module._operand_keys.items()), [(w.instruction.name, w.body, w.trip_count)
                                                   for w in module.while_loops()])


def _both(text: str, parser=_HloParser) -> tuple[object, object]:
    """The module (or error) `parser` gives through its line path and through its general path."""
    out = []
    for by_line in (True, False):
        try:
            out.append(_key(parser(text, by_line).parse()))
        except ParseError as e:
            out.append(("ParseError", str(e)))
    return out[0], out[1]


@pytest.mark.parametrize("program", ["fori", "nested", "branchy"])
@pytest.mark.parametrize("form", ["hlo", "unoptimized_hlo"])
def test_compiled_programs_parse_the_same_both_ways(program, form):
    text = texts(program)[form]
    fast, general = _both(text)
    assert fast == general
    # the line path is really taken on XLA's own output
    lines = [line for line in text.splitlines() if " = " in line and not line.startswith("HloModule")]
    assert sum(1 for line in lines if _LINE.fullmatch(line)) > len(lines) // 2


_HEADER = """HloModule m

%f (x: f32[]) -> f32[] {
  ROOT %x = f32[] parameter(0)
}

ENTRY %main (p: f32[2], q: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  %q = f32[2]{0} parameter(1)
"""

_NAMES = ["%r", "r", "add.1", "%fusion-3.x"]
_SHAPES = ["f32[2]{0}", "f32[]", "(f32[], s32[2]{0})", "f32[2,3]{1,0:T(8,128)}", "bf16[<=4]",
           "(f32[], /*index=5*/f32[])", "f32[2]{0, 1", "q32[2]", "f32[2]{x}", "()"]
_OPCODES = ["add", "parameter", "constant", "fusion", "while", "get-tuple-element", "custom-call",
            "select-and-scatter", "tuple"]
_OPERANDS = ["", "%p", "%p, %q", "p,q", "f32[2]{0} %p, f32[2]{0} %q", "(f32[], s32[2]{0}) %p", "1",
             "2 ", "{1, 2}", "f32[2]{0}%p", "reshape(f32[2] %p)", "%p /*x*/", "%missing", "%r", "-inf"]
_ATTRIBUTES = [", index=0", ", calls=%f", ", body=%f, condition=%f", ", to_apply=%f",
               ', metadata={op_name="a(b)/c" source_file="/x.py" source_line=3}',
               ', metadata={op_name="x\\"y" stack_frame_id=2}', ', backend_config="{\\"k\\": 1}"',
               ", sharding={{replicated}, {devices=[2]0,1}}", ", slice={[0:2], [1:3]}", ", k=a b ",
               ", k={a=(1,{2})}", ", k=", ", k={a", " // comment", ", k=v // c", ", k=b01f_01io->b01f",
               ", k=[1,2]", ", x=(1)", ', k={"a\\"}"}', ", k=1, k=2", ", k={{{{1}}}}", ", k={{{1}}}",
               ", branch_computations={%f, %f}", ", select=%f, scatter=%f", ",k=1", " , k = 1",
               ", k={a}b", ", k=a, b", ', k="a', ", k={(}", ", k={[}", ", k=x/y", ", output_to_operand_aliasing={{0}: (1, {})}"]


@settings(max_examples=300, deadline=None)
@given(root=st.booleans(), name=st.sampled_from(_NAMES), shape=st.sampled_from(_SHAPES),
       opcode=st.sampled_from(_OPCODES), operands=st.sampled_from(_OPERANDS),
       attributes=st.lists(st.sampled_from(_ATTRIBUTES), max_size=3),
       spaces=st.sampled_from(["", " ", "  "]), next_line=st.sampled_from(["}", ", k=1\n}", "add(%p)\n}"]))
def test_generated_lines_parse_the_same_both_ways(root, name, shape, opcode, operands, attributes, spaces,
                                                  next_line):
    line = (f"  {'ROOT ' if root else ''}{name} ={spaces}{shape} {opcode}({operands}){''.join(attributes)}"
            f"{spaces}")
    text = _HEADER + line + "\n" + next_line + "\n"
    fast, general = _both(text)
    assert fast == general, line


def _both_mlir(text: str) -> tuple[object, object]:
    return _both(text, _MlirParser)


@pytest.mark.parametrize("program", ["fori", "nested", "branchy"])
@pytest.mark.parametrize("form", ["stablehlo", "debug"])
def test_lowered_programs_parse_the_same_both_ways(program, form):
    fast, general = _both_mlir(texts(program)[form])
    assert fast == general


_MLIR_HEAD = """#loc1 = loc("f.py":3:4)
#loc2 = loc("jit(f)/add"(#loc1))
module @m {
  func.func public @main(%arg0: tensor<4xf32>, %arg1: tensor<4xi1>) -> tensor<4xf32> {
    %t:2 = stablehlo.optimization_barrier %arg0, %arg0 : tensor<4xf32>, tensor<4xf32>
"""
_MLIR_OPS = ["stablehlo.add", "stablehlo.tanh", "mhlo.multiply", "stablehlo.compare", "stablehlo.constant",
             "stablehlo.return", "func.return", "stablehlo.select", "chlo.erf", "stablehlo.applies"]
_MLIR_OPERANDS = ["%arg0", "%arg0, %arg0", "%t#1, %arg0", "%t#2", "%nope", "%arg1, %arg0, %arg0", "%r"]
_MLIR_TYPES = ["tensor<4xf32>", "tensor<4xi1>, tensor<4xf32>", "tensor<f32>", "tensor<4xq32>", "tensor<?xf32>"]
_MLIR_LOCS = ["", " loc(#loc2)", " loc(#loc9)", " loc(unknown)", ' loc("x")']
_MLIR_NEXT = ["return %r : tensor<4xf32>", ": tensor<4xf32>\n    return %r : tensor<4xf32>",
              "{attr = 1}\n    return %r : tensor<4xf32>", "\n    return %r : tensor<4xf32>",
              "// c\n    return %r : tensor<4xf32>", "%r = stablehlo.add %arg0, %arg0 : tensor<4xf32>\n"
              "    return %r : tensor<4xf32>"]


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(["%r", "%0", "%arg0"]), op=st.sampled_from(_MLIR_OPS),
       operands=st.sampled_from(_MLIR_OPERANDS), types=st.sampled_from(_MLIR_TYPES),
       loc=st.sampled_from(_MLIR_LOCS), next_line=st.sampled_from(_MLIR_NEXT))
def test_generated_mlir_lines_parse_the_same_both_ways(name, op, operands, types, loc, next_line):
    line = f"    {name} = {op} {operands} : {types}{loc}"
    text = _MLIR_HEAD + line + "\n    " + next_line + "\n  }\n}\n"
    fast, general = _both_mlir(text)
    assert fast == general, line
