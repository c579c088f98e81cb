"""hloscope.hlo on small hand-written texts: syntax corners, MHLO generic form, locations,
trip-count inference, error reporting, and 100k-line inputs."""

from __future__ import annotations

import time

import pytest

from hloscope.hlo import ParseError, Shape, parse_hlo, parse_module, parse_stablehlo
from hloscope.hlo.shapes import parse_hlo_shape, parse_mlir_type

EDGE_HLO = r"""
HloModule edge_cases, entry_computation_layout={(f32[8]{0}, s32[])->(f32[8,128]{1,0}, (s32[], pred[<=4]))}

%fused_computation.3 (p0: f32[8], c: s32[]) -> f32[8,128] {
  %p0 = f32[8]{0} parameter(0)
  %c = s32[] parameter(1)
  ROOT %b = f32[8,128]{1,0:T(8,128)S(1)} broadcast(f32[8]{0} %p0), dimensions={0}
}

%cond-x (state: (s32[], f32[8,128])) -> pred[] {
  %state = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8,128]{1,0}) %state), index=0
  %limit = s32[] constant(12)
  ROOT %gt = pred[] compare(s32[] %limit, s32[] %i), direction=GT
}

%body_x.1 (state.1: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %state.1 = (s32[], f32[8,128]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%state.1), index=0
  %two = s32[] constant(2)
  %next = s32[] add(%two, %i.1)
  %v = f32[8,128]{1,0} get-tuple-element(%state.1), index=1
  ROOT %t = (s32[], f32[8,128]{1,0}) tuple(%next, %v)
}

ENTRY %main.7 (x: f32[8], n: s32[]) -> (f32[8,128], (s32[], pred[<=4])) {
  %x = f32[8]{0} parameter(0), sharding={replicated}
  %n = s32[] parameter(1)
  %zero = s32[] constant(0)
  %zero.copy = s32[] copy(%zero)
  %fusion.3 = f32[8,128]{1,0} fusion(f32[8]{0} %x, s32[] %n), kind=kLoop, calls=%fused_computation.3, metadata={op_type="broadcast" op_name="jit(f)/broadcast_in_dim" source_file="/x/y.py" source_line=42}, backend_config="{\"flag\":\"a,b}\"}"
  %init = (s32[], f32[8,128]{1,0}) tuple(%zero.copy, %fusion.3)
  %w = (s32[], f32[8,128]{1,0}) while(%init), condition=%cond-x, body=%body_x.1, metadata={op_name="jit(f)/while"}
  %init.2 = (s32[], f32[8,128]{1,0}) tuple(%n, %fusion.3)
  %w.2 = (s32[], f32[8,128]{1,0}) while(%init.2), condition=%cond-x, body=%body_x.1
  %w.3 = (s32[], f32[8,128]{1,0}) while(%init.2), condition=%cond-x, body=%body_x.1, backend_config={"known_trip_count":{"n":"7"}}
  %out = f32[8,128]{1,0} get-tuple-element(%w), index=1
  %flags = pred[<=4] constant({1, 0, 1}), metadata={op_name="a, \"b\" {c}"}
  %tok = token[] after-all()
  %odd = f32[8]{0} some-future-op(%x), new_attribute={x=1}
  %inner = (s32[], pred[<=4], /*index=2*/f32[8]{0}) tuple(%n, %flags, /*index=2*/%odd)
  ROOT %result = (f32[8,128]{1,0}, (s32[], pred[<=4], f32[8]{0})) tuple(%out, %inner)
}
"""


def test_hlo_syntax_corners():
    m = parse_hlo(EDGE_HLO)
    assert m.name == "edge_cases" and m.entry == "main.7" and not m.is_scheduled
    fusion = m.instruction("main.7", "fusion.3")
    assert fusion.operands == ["x", "n"] and fusion.called_computations == ["fused_computation.3"]
    assert fusion.op_name == "jit(f)/broadcast_in_dim"
    assert (fusion.source_file, fusion.source_line) == ("/x/y.py", 42)
    assert fusion.attributes["kind"] == "kLoop"
    assert fusion.attributes["backend_config"] == r'"{\"flag\":\"a,b}\"}"'
    tiled = m.computations["fused_computation.3"].root()
    assert tiled.shape == Shape("f32", (8, 128), (1, 0)) and tiled.attributes["dimensions"] == "{0}"
    flags = m.instruction("main.7", "flags")
    assert flags.shape == Shape("pred", (4,), None) and flags.attributes["literal"] == "{1, 0, 1}"
    assert flags.op_name == 'a, "b" {c}'
    inner = m.instruction("main.7", "inner")
    assert inner.operands == ["n", "flags", "odd"]
    assert str(inner.shape) == "(s32[], pred[4], f32[8])" and inner.shape.nbytes() == 4 + 4 + 32
    assert m.instruction("main.7", "odd").opcode == "some-future-op"  # unknown opcodes are fine
    assert m.instruction("main.7", "tok").shape.nbytes() == 0
    result = m.computations["main.7"].root()
    assert result.name == "result" and result.is_root
    assert result.shape.elements[1].elements[1] == Shape("pred", (4,), None)


def test_hlo_trip_counts():
    loops = {w.instruction.name: w for w in parse_hlo(EDGE_HLO).while_loops()}
    # 'limit > i' from i = 0 (through a copy) in steps of 2 (written 'add(2, i)'): 0,2,..,10.
    assert loops["w"].trip_count == 6
    assert (loops["w"].body, loops["w"].condition) == ("body_x.1", "cond-x")
    assert loops["w.2"].trip_count is None  # starts at a parameter: not sure
    assert loops["w.3"].trip_count == 7  # XLA's known_trip_count wins


def test_hlo_without_percent_signs_and_signatures():
    m = parse_hlo("HloModule m\n\nadd.1 {\n  a = f32[] parameter(0)\n  b = f32[] parameter(1)\n"
                  "  ROOT s = f32[] add(a, b)\n}\n\nENTRY main {\n  x = f32[4]{0} parameter(0)\n"
                  "  z = f32[] constant(0)\n  r = f32[] reduce(x, z), dimensions={0}, to_apply=add.1\n}\n")
    assert m.entry == "main" and m.computations["main"].root().name == "r"  # last one is ROOT
    assert m.callers("add.1") == [m.instruction("main", "r")]
    with pytest.raises(KeyError):
        m.instruction("main", "nope")
    with pytest.raises(KeyError):
        m.callers("nope")


# Excerpt of XLA:GPU output (jax 0.11.2, H100): async fusion-start/done, JSON backend_configs,
# scheduling names and stack-frame tables.
GPU_HLO = r"""
HloModule jit_mlp, is_scheduled=true, entry_computation_layout={(bf16[4,64,256]{2,1,0}, s32[], bf16[64,256]{1,0})->bf16[4,64,256]{2,1,0}}

FileNames
1 "/src/mlp.py"

FunctionNames
1 "mlp"

FileLocations
1 {file_name_id=1 function_name_id=1 line=17 end_line=17 column=8 end_column=40}

StackFrames
1 {file_location_id=1 parent_frame_id=1}

%fused_dynamic_update_slice.clone (param_0.92: bf16[4,64,256], param_1.95: s32[], param_2.58: bf16[64,256]) -> bf16[4,64,256] {
  %param_0.92 = bf16[4,64,256]{2,1,0} parameter(0), metadata={scheduling_name="param_0.92"}
  %param_2.58 = bf16[64,256]{1,0} parameter(2), metadata={scheduling_name="param_2.58"}
  %bitcast.14 = bf16[1,64,256]{2,1,0} bitcast(%param_2.58), metadata={op_name="jit(mlp)/jvp()/while/body/jit(dynamic_update_index_in_dim)/broadcast_in_dim" scheduling_name="bitcast.14" stack_frame_id=1}
  %param_1.95 = s32[] parameter(1), metadata={scheduling_name="param_1.95"}
  %constant_0_1_1 = s32[] constant(0), metadata={op_name="jit(mlp)/jvp()/while/body/jit(dynamic_update_index_in_dim)" stack_frame_id=1}
  ROOT %dynamic_update_slice.0.2 = bf16[4,64,256]{2,1,0} dynamic-update-slice(%param_0.92, %bitcast.14, %param_1.95, %constant_0_1_1, %constant_0_1_1), metadata={op_name="jit(mlp)/jvp()/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice" scheduling_name="dynamic_update_slice.0.2" stack_frame_id=1}, backend_config={"device_type":"DEVICE_TYPE_INVALID","dynamic_slice_config":{"byte_offset":"0","byte_stride":"32768","loop_index":"0"},"force_earliest_schedule":false,"operation_queue_id":"0","reification_cost":[]}
}

ENTRY %main.8 (a: bf16[4,64,256], i: s32[], u: bf16[64,256]) -> bf16[4,64,256] {
  %a = bf16[4,64,256]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %u = bf16[64,256]{1,0} parameter(2)
  %fusion-start = ((bf16[4,64,256]{2,1,0}, s32[], bf16[64,256]{1,0}), bf16[4,64,256]{2,1,0}, u32[]) fusion-start(%a, %i, %u), kind=kLoop, calls=%fused_dynamic_update_slice.clone, metadata={op_name="jit(mlp)/jvp()/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice" scheduling_name="fusion-start" stack_frame_id=1}, backend_config={"device_type":"DEVICE_TYPE_INVALID","force_earliest_schedule":false,"native_emitter_backend_config":{"type":"NATIVE_EMITTER_TYPE_INVALID","unroll_factor":0},"operation_queue_id":"0","reification_cost":[]}
  ROOT %fusion-done = bf16[4,64,256]{2,1,0} fusion-done(%fusion-start), metadata={op_name="jit(mlp)/jvp()/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice" scheduling_name="fusion-done" stack_frame_id=1}, backend_config={"device_type":"DEVICE_TYPE_INVALID","force_earliest_schedule":false,"native_emitter_backend_config":{"type":"NATIVE_EMITTER_TYPE_INVALID","unroll_factor":0},"operation_queue_id":"0","reification_cost":[]}
}
"""


def test_gpu_async_fusion():
    m = parse_module(GPU_HLO)
    start = m.instruction("main.8", "fusion-start")
    assert start.called_computations == ["fused_dynamic_update_slice.clone"]
    assert str(start.shape) == "((bf16[4,64,256], s32[], bf16[64,256]), bf16[4,64,256], u32[])"
    assert start.shape.nbytes() == 2 * (4 * 64 * 256 * 2) + 4 + 64 * 256 * 2 + 4
    assert start.attributes["backend_config"].endswith('"operation_queue_id":"0","reification_cost":[]}')
    assert (start.source_file, start.source_line) == ("/src/mlp.py", 17)
    done = m.computations["main.8"].root()
    assert done.opcode == "fusion-done" and done.operands == ["fusion-start"]
    dus = m.computations["fused_dynamic_update_slice.clone"].root()
    assert dus.op_name.endswith("/dynamic_update_slice") and dus.source_line == 17
    assert m.callers(dus.computation) == [start] and m.loop_nest(dus.computation) == []


def test_shapes():
    assert str(Shape("s32", (8, 1, 64))) == "s32[8,1,64]"
    assert parse_hlo_shape("s32[8,1,64]{2,1,0}")[0] == Shape("s32", (8, 1, 64), (2, 1, 0))
    tup, end = parse_hlo_shape("((f32[2]{0}, s4[3]), token[], u8[<=5,?]) tail")
    assert end == len("((f32[2]{0}, s4[3]), token[], u8[<=5,?])")
    assert str(tup) == "((f32[2], s4[3]), token[], u8[5,?])"
    assert tup.elements[0].nbytes() == 8 + 2  # s4 packs two per byte, rounded up
    assert parse_hlo_shape("f32[]{:T(128)}")[0] == Shape("f32", (), ())
    assert Shape("pred", (3,)).nbytes() == 3 and Shape("bf16", (2, 2)).nbytes() == 8
    cases = {
        "tensor<8x1x64xi32>": Shape("s32", (8, 1, 64)), "tensor<i1>": Shape("pred", ()),
        "tensor<4xui32>": Shape("u32", (4,)), "tensor<2x3xbf16>": Shape("bf16", (2, 3)),
        "tensor<5xf8E4M3FN>": Shape("f8e4m3fn", (5,)), "tensor<2xcomplex<f32>>": Shape("c64", (2,)),
        "!stablehlo.token": Shape("token", ()), "tensor<?x4xf32, #stablehlo.bounds<8, ?>>": Shape("f32", (8, 4)),
        "tuple<tensor<2xi64>, tuple<>>": Shape("tuple", (), None, (Shape("s64", (2,)), Shape("tuple", ()))),
    }
    for text, shape in cases.items():
        assert parse_mlir_type(text) == shape, text
    assert Shape("f32", (-1, 4)).nbytes() == 0  # unbounded dynamic size: unknown, not invented


MHLO = """
module @jit_big {
  func.func public @main(%arg0: tensor<8x1x64x32x524288xi32>, %arg1: tensor<8x1x64x32x1xi32>) -> tensor<8x1x64x32x524288xi32> {
    %c = mhlo.constant dense<0> : tensor<i32>
    %5 = "mhlo.dynamic_update_slice"(%arg0, %arg1, %c, %c, %c, %c, %c) : (tensor<8x1x64x32x524288xi32>, tensor<8x1x64x32x1xi32>, tensor<i32>, tensor<i32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<8x1x64x32x524288xi32>
    %6, %7 = "mhlo.optimization_barrier"(%5, %c) : (tensor<8x1x64x32x524288xi32>, tensor<i32>) -> (tensor<8x1x64x32x524288xi32>, tensor<i32>)
    %8 = "mydialect.frobnicate"(%7) {level = 3 : i64} : (tensor<i32>) -> tensor<i32>
    "func.return"(%6) : (tensor<8x1x64x32x524288xi32>) -> ()
  }
}
"""


def test_mhlo_generic_form():
    m = parse_module(MHLO)
    dus = m.instruction("main", "5")
    assert dus.opcode == "dynamic_update_slice" and dus.attributes["mlir_op"] == "mhlo.dynamic_update_slice"
    assert dus.shape == Shape("s32", (8, 1, 64, 32, 524288))
    assert dus.shape.nbytes() == 34_359_738_368
    assert dus.operands == ["arg0", "arg1", "c", "c", "c", "c", "c"]
    barrier = m.instruction("main", "6")  # '%6, %7 = ...': one op, two results
    assert len(barrier.shape.elements) == 2
    frob = m.instruction("main", "8")
    assert (frob.opcode, frob.operands, frob.operand_results) == ("frobnicate", ["6"], [1])
    assert frob.attributes["level"] == "3 : i64"
    root = m.computations["main"].root()
    assert root.opcode == "return" and root.shape == dus.shape


LOCATED = """
#loc1 = loc("/src/model.py":42:10 to :30)
#loc2 = loc("layer"(#loc1))
#loc3 = loc("/src/train.py":7:3)
#loc4 = loc(callsite(#loc2 at #loc3))
#loc5 = loc("jit(f)/mul"(#loc4))
module @jit_f {
  func.func public @main(%arg0: tensor<4xf32> loc("x"), %arg1: tensor<i32> loc(unknown)) -> tensor<4xf32> {
    %c = stablehlo.constant dense<2> : tensor<i32> loc(#loc3)
    %c_0 = stablehlo.constant dense<10> : tensor<i32>
    %0:2 = stablehlo.while(%iterArg = %arg0, %iterArg_1 = %c) : tensor<4xf32>, tensor<i32>
    cond {
      %1 = stablehlo.compare  LT, %iterArg_1, %c_0,  SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %1 : tensor<i1>
    } do {
      %1 = stablehlo.multiply %iterArg, %iterArg : tensor<4xf32> loc(#loc5)
      %c_2 = stablehlo.constant dense<3> : tensor<i32>
      %2 = stablehlo.add %iterArg_1, %c_2 : tensor<i32> loc(fused["a.py":1:1, "sum"("b.py":2:2)])
      stablehlo.return %1, %2 : tensor<4xf32>, tensor<i32>
    } loc(#loc5)
    %1:2 = stablehlo.while(%iterArg = %arg0, %iterArg_1 = %arg1) : tensor<4xf32>, tensor<i32>
    cond {
      %2 = stablehlo.compare  LT, %iterArg_1, %c_0,  SIGNED : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %2 : tensor<i1>
    } do {
      %c_2 = stablehlo.constant dense<1> : tensor<i32>
      %2 = stablehlo.add %iterArg_1, %c_2 : tensor<i32>
      stablehlo.return %iterArg, %2 : tensor<4xf32>, tensor<i32>
    }
    return %0#0 : tensor<4xf32> loc("out"("/src/model.py":50:1))
  }
}
"""


def test_mlir_locations_and_trip_counts():
    m = parse_stablehlo(LOCATED)
    first, second = m.while_loops()
    assert first.trip_count == 3  # 2, 5, 8 < 10 (the bound is captured from the function)
    assert second.trip_count is None  # the counter starts at a function argument
    assert (first.instruction.op_name, first.instruction.source_file, first.instruction.source_line) == (
        "jit(f)/mul", "/src/model.py", 42)
    mul = m.instruction(first.body, "1")
    assert (mul.op_name, mul.source_line) == ("jit(f)/mul", 42)  # callee before caller
    add = m.instruction(first.body, "2")
    assert (add.op_name, add.source_file, add.source_line) == ("sum", "a.py", 1)
    assert (m.instruction("main", "arg0").op_name, m.instruction("main", "arg1").op_name) == ("x", None)
    assert m.instruction("main", "c").source_file == "/src/train.py"
    assert m.instruction("main", "c_0").op_name is None
    assert m.computations["main"].root().op_name == "out"
    compare = m.instruction(first.condition, "1")
    assert compare.attributes["direction"] == "LT"
    assert [o.computation for o in m.operands_of(compare)] == [first.condition, "main"]  # a capture
    assert (("main", "c_0"), (first.condition, "1")) in m.graph.edges


@pytest.mark.parametrize("text, lineno, expected", [
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0\n}\n", 3, "brackets"),
    ("HloModule m\nENTRY e {\n  a = f33[2] parameter(0)\n}\n", 3, "element type"),
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0)\n  this is garbage\n}\n", 4, "instruction"),
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0)\n  b = f32[2] add(a, c)\n}\n", 4, "'c'"),
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0)\n", 2, "'}'"),
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0)\n  a = f32[2] parameter(1)\n}\n", 4, "already defined"),
    ("HloModule m\nENTRY e {\n  a = f32[2] call(), to_apply=missing\n}\n", 3, "missing"),
    ("HloModule m\nENTRY e {\n  a = (s32[]) parameter(0)\n  w = (s32[]) while(a), body=b\n}\n", 4, "condition"),
    ("HloModule m\nENTRY e {\n}\n", 2, "at least one instruction"),
    ("HloModule m\n\nnot a computation\n", 3, "computation header"),
    ("HloModule m\nENTRY e {\n  a = f32[2] parameter(0), metadata={op_name=\"x}\n}\n", 3, "'\"'"),
    ("module @m {\n  func.func @main() -> tensor<i32> {\n    %0 = stablehlo.add %1, %1 : tensor<i32>\n"
     "    return %0 : tensor<i32>\n  }\n}\n", 3, "%1"),
    ("module @m {\n  func.func @main() -> tensor<i32> {\n    %0 = stablehlo.constant dense<1> : tensor<i33>\n"
     "  }\n}\n", 3, "element type"),
    ("module @m {\n  func.func @main() {\n    hello world\n  }\n}\n", 3, "operation"),
    ("module @m {\n  func.func @main() -> tensor<i32> {\n    %0 = stablehlo.constant dense<1> : tensor<i32> loc(#loc9)\n"
     "    return %0 : tensor<i32>\n  }\n}\n", 3, "#loc9"),
    ("module @m {\n  func.func @main() -> tensor<i32> {\n    %0 = stablehlo.constant dense<1> : tensor<i32>\n", 2, "'}'"),
    ("module @m {\n  func.func @main() -> tensor<i32> {\n    %0 = func.call @nope() : () -> tensor<i32>\n"
     "    return %0 : tensor<i32>\n  }\n}\n", 3, "@nope"),
    ("module @m {\n}\n}\n", 3, "'}'"),
])
def test_errors_say_where_and_what(text, lineno, expected):
    with pytest.raises(ParseError) as err:
        parse_module(text)
    assert err.value.lineno == lineno, str(err.value)
    assert expected in str(err.value) and f"line {lineno}," in str(err.value)
    assert "internal" not in str(err.value)


def test_error_lines_are_truncated():
    text = "HloModule m\nENTRY e {\n  a = f32[2] nonsense(" + "x, " * 1000 + "\n}\n"
    with pytest.raises(ParseError) as err:
        parse_module(text)
    assert len(str(err.value)) < 400 and err.value.lineno == 3


def _big_hlo(n: int) -> str:
    lines = ["HloModule big, is_scheduled=true", "%fused (p: f32[8,128], q: s32[]) -> f32[8,128] {",
             "  %p = f32[8,128]{1,0} parameter(0)", "  %q = s32[] parameter(1)",
             "  ROOT %neg = f32[8,128]{1,0} negate(%p)", "}",
             "ENTRY %main (x: f32[8,128]) -> f32[8,128] {", "  %x = f32[8,128]{1,0} parameter(0)",
             "  %c = s32[] constant(3)", "  %a.0 = f32[8,128]{1,0} copy(%x)"]
    for i in range(1, n):
        if i % 3:
            lines.append(f'  %a.{i} = f32[8,128]{{1,0}} add(%a.{i - 1}, %x), metadata={{op_name="jit(f)/add" '
                         f'source_file="/x/y.py" source_line={i}}}')
        else:
            lines.append(f'  %a.{i} = f32[8,128]{{1,0}} fusion(%a.{i - 1}, %c), kind=kLoop, calls=%fused, '
                         f'metadata={{op_name="jit(f)/neg" stack_frame_id=3}}, backend_config={{"a":[],"b":{{"c":"d"}}}}')
    return "\n".join(lines + [f"  ROOT %t = (f32[8,128]{{1,0}}, s32[]) tuple(%a.{n - 1}, %c)", "}"])


def _big_mlir(n: int) -> str:
    lines = ['#loc1 = loc("/x/y.py":3:4)', '#loc2 = loc("jit(f)/add"(#loc1))', "module @big {",
             '  func.func public @main(%arg0: tensor<8x128xf32> loc("x")) -> (tensor<8x128xf32>) {',
             "    %0 = stablehlo.constant dense<1.000000e+00> : tensor<8x128xf32> loc(#loc2)"]
    for i in range(1, n):
        if i % 2:
            lines.append(f"    %{i} = stablehlo.add %{i - 1}, %arg0 : tensor<8x128xf32> loc(#loc2)")
        else:
            lines.append(f"    %{i} = stablehlo.dot_general %{i - 1}, %arg0, contracting_dims = [1] x [1] : "
                         f"(tensor<8x128xf32>, tensor<8x128xf32>) -> tensor<8x128xf32> loc(#loc2)")
    return "\n".join(lines + [f"    return %{n - 1} : tensor<8x128xf32>", "  }", "}"])


@pytest.mark.parametrize("make", [_big_hlo, _big_mlir])
def test_100k_lines_parse_in_seconds(make):
    text = make(100_000)
    start = time.process_time()  # CPU time: other jobs on a shared machine do not count
    module = parse_module(text)
    elapsed = time.process_time() - start
    assert module.graph.number_of_nodes() >= 100_000
    assert elapsed < 20, f"{elapsed:.1f} s of CPU for 100k lines"
