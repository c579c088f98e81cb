"""Issue 17, item 5: text other tools write that the parser must read, and programs it must refuse.

Each input is small and written by hand to show one gap; every refusal is a ParseError whose
message is one line naming line and column.
"""

from __future__ import annotations

import pytest

from hloscope.hlo import ParseError, parse_module
from hloscope.trace import trace_module

_HLO_BODY = """ENTRY e {
  p = f32[2] parameter(0)
  ROOT a = f32[2] add(p, p)
}
"""

ACCEPTED = {
    "hlo leading /* */ comment": "/* A fuzzer's header\n   spanning lines. */\nHloModule m\n\n" + _HLO_BODY,
    "hlo '} // name' after a closing brace": "HloModule m\n\n" + _HLO_BODY.rstrip() + " // e\n",
    "hlo trailing // comment": "HloModule m\n\nENTRY e {\n  p = f32[2] parameter(0) // input\n"
                               "  ROOT a = f32[2] add(p, p) // the sum, \"quoted\"\n}\n",
    "hlo attributes on a continuation line": """HloModule m

add {
  x = f32[] parameter(0)
  y = f32[] parameter(1)
  ROOT s = f32[] add(x, y)
}

ENTRY e {
  p = f32[2] parameter(0)
  z = f32[] constant(0)
  ROOT r = f32[] reduce(p, z), dimensions={0},
      to_apply=add
}
""",
    "mlir private @\"<lambda>\"": """module @jit_f {
  func.func public @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
    %0 = call @"<lambda>"(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
    return %0 : tensor<2xf32>
  }
  func.func private @"<lambda>"(%arg0: tensor<2xf32>) -> tensor<2xf32> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<2xf32>
    return %0 : tensor<2xf32>
  }
}
""",
    "mlir attributes after a while": """module @m {
  func.func public @main(%arg0: tensor<i32>) -> tensor<i32> {
    %c = stablehlo.constant dense<1> : tensor<i32>
    %c0 = stablehlo.constant dense<0> : tensor<i32>
    %0 = stablehlo.while(%iterArg = %c0) : tensor<i32> attributes {mhlo.frontend_attributes = {a = "1"}, mhlo.sharding = "{replicated}"}
     cond {
      %c10 = stablehlo.constant dense<10> : tensor<i32>
      %1 = stablehlo.compare  LT, %iterArg, %c10 : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %1 : tensor<i1>
    } do {
      %1 = stablehlo.add %iterArg, %c : tensor<i32>
      stablehlo.return %1 : tensor<i32>
    }
    return %0 : tensor<i32>
  }
}
""",
    "mlir op spanning lines": """module @m {
  func.func public @main(%arg0: tensor<2xf32>,
                         %arg1: tensor<2xf32>) -> tensor<2xf32> {
    %0 = stablehlo.add %arg0,
           %arg1
           : tensor<2xf32>
    %1 = "stablehlo.multiply"(%0,
        %arg1) : (tensor<2xf32>,
        tensor<2xf32>) -> tensor<2xf32>
    return %1 : tensor<2xf32>
  }
}
""",
    "mlir tensor<3 x f64>": """module @m {
  func.func public @main(%arg0: tensor<3 x f64>) -> tensor<3 x f64> {
    %0 = stablehlo.add %arg0, %arg0 : tensor<3 x f64>
    return %0 : tensor<3 x f64>
  }
}
""",
    "mlir UTF-8 BOM": "\ufeffmodule @m {\n  func.func public @main(%arg0: tensor<3xf64>) -> tensor<3xf64> {\n"
                      "    return %arg0 : tensor<3xf64>\n  }\n}\n",
    "mlir top-level ops without module": """sdy.mesh @mesh = <["x"=2]>
func.func @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
  %0 = stablehlo.add %arg0, %arg0 : tensor<2xf32>
  return %0 : tensor<2xf32>
}
""",
    "mlir generic get_tuple_element {index = 0 : i32}": """module @m {
  func.func public @main(%arg0: tensor<2xf32>, %arg1: tensor<3xf32>) -> tensor<3xf32> {
    %t = "stablehlo.tuple"(%arg0, %arg1) : (tensor<2xf32>, tensor<3xf32>) -> tuple<tensor<2xf32>, tensor<3xf32>>
    %0 = "stablehlo.get_tuple_element"(%t) {index = 1 : i32} : (tuple<tensor<2xf32>, tensor<3xf32>>) -> tensor<3xf32>
    %1 = "stablehlo.negate"(%0) : (tensor<3xf32>) -> tensor<3xf32>
    return %1 : tensor<3xf32>
  }
}
""",
    # Found by the corpus run (analyses/hlo_corpus.py): forms other tools write.
    "hlo instruction without a shape, nested operand, '}, execution_thread=', opcode on the next line": """HloModule m

helper {
  x = (f32[4], s32[]) parameter(0)
  ROOT g = get-tuple-element(x), index=0
}, execution_thread="main"

ENTRY e {
  p = f32[4] parameter(0)
  r = f32[2,2] reshape(f32[4] negate(p))
  ROOT t = (f32[2,2], f32[4])
      tuple(r, p)
}
""",
    "mlir attribute dictionaries, types and headers across lines": """!pair = tuple<tensor<2xf32>, tensor<2xf32>>
module @m attributes {mhlo.frontend_attributes = {a =
    "1"}} {
  func.func @main(%arg0 : tensor<2xf32>) ->
      tensor<2xf32> attributes {
    // a comment inside the dictionary
    execution_thread = "main"
  } {
    %0 = "stablehlo.compare" (%arg0, %arg0) {
      comparison_direction = #stablehlo<comparison_direction LT>
    } : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xi1>
    %1 = stablehlo.abs %arg0: tensor<2xf32>
    %t = "stablehlo.tuple"(%1, %arg0) : (tensor<2xf32>, tensor<2xf32>) -> !pair
    %2 = "stablehlo.reduce"(%1, %1) ( {
    ^bb0(%a: tensor<f32>, %b: tensor<f32>): // no predecessors
      %s = stablehlo.add %a, %b : tensor<f32>
      "stablehlo.return"(%s) : (tensor<f32>) -> ()
    }) {dimensions = array<i64: 0>} : (tensor<2xf32>, tensor<2xf32>) -> tensor<2xf32>
    return %1 : tensor<2xf32>
  }
}
""",
    "mlir unnamed function arguments named by the entry block": """module @m {
func.func @main(tensor<4xf32>) -> tensor<4xf32> {
^bb0(%arg0: tensor<4xf32>):
  %0 = "mhlo.add"(%arg0, %arg0) : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
  func.return %0 : tensor<4xf32>
}
}
""",
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_gap_is_parsed_and_traced(name):
    module = parse_module(ACCEPTED[name])
    trace = trace_module(module)  # the figures must come out too (the tuple index once crashed here)
    assert trace.live_peak > 0


def test_gap_details():
    m = parse_module(ACCEPTED["mlir private @\"<lambda>\""])
    assert "<lambda>" in m.computations and m.callers("<lambda>")[0].opcode == "call"
    m = parse_module(ACCEPTED["mlir attributes after a while"])
    (loop,) = m.while_loops()
    assert loop.trip_count == 10 and loop.instruction.attributes["mhlo.sharding"] == '"{replicated}"'
    m = parse_module(ACCEPTED["mlir op spanning lines"])
    assert [i.opcode for i in m.computations["main"].instructions] == ["parameter", "parameter", "add", "multiply",
                                                                      "return"]
    assert str(parse_module(ACCEPTED["mlir tensor<3 x f64>"]).computations["main"].root().shape) == "f64[3]"
    m = parse_module(ACCEPTED["hlo attributes on a continuation line"])
    assert m.computations["e"].root().called_computations == ["add"]
    m = parse_module(ACCEPTED["mlir generic get_tuple_element {index = 0 : i32}"])
    gte = m.instruction("main", "0")
    assert gte.int_attribute("index", -1) == 1
    # The negate reads element 1 (3 floats); the tuple of arguments costs nothing more.
    assert trace_module(m).live_peak == (2 + 3 + 3) * 4


def test_corpus_forms_details():
    m = parse_module(ACCEPTED["hlo instruction without a shape, nested operand, '}, execution_thread=', "
                              "opcode on the next line"])
    assert str(m.instruction("helper", "g").shape) == "f32[4]"  # element 0 of the tuple, as XLA infers
    assert [i.name for i in m.computations["e"].instructions] == ["p", "r.operand0", "r", "t"]
    assert m.computations["e"].root().opcode == "tuple"
    m = parse_module(ACCEPTED["mlir attribute dictionaries, types and headers across lines"])
    assert m.instruction("main", "0").attributes["direction"] == "LT"
    assert str(m.instruction("main", "t").shape) == "(f32[2], f32[2])"
    assert [str(i.shape) for i in m.computations["main"].instructions if i.opcode == "parameter"] == ["f32[2]"]


def _deep_calls(depth: int) -> str:
    lines = ["HloModule m"]
    for k in range(depth):
        last = k == depth - 1
        lines += [f"c{k} {{", "  x = f32[2] parameter(0)",
                  "  ROOT y = f32[2] negate(x)" if last else f"  ROOT y = f32[2] call(x), to_apply=c{k + 1}", "}"]
    lines += ["ENTRY e {", "  p = f32[2] parameter(0)", "  ROOT c = f32[2] call(p), to_apply=c0", "}"]
    return "\n".join(lines) + "\n"


REFUSED = {
    "operand cycle": ("HloModule m\nENTRY e {\n  p = f32[2] parameter(0)\n  a = f32[2] add(p, b)\n"
                      "  b = f32[2] add(a, p)\n  ROOT r = f32[2] add(a, b)\n}\n", 4, "cycle"),
    "instruction using itself": ("HloModule m\nENTRY e {\n  p = f32[2] parameter(0)\n  ROOT a = f32[2] add(p, a)\n}\n",
                                 4, "cycle"),
    "recursive call": ("HloModule m\nf {\n  x = f32[2] parameter(0)\n  ROOT c = f32[2] call(x), to_apply=f\n}\n"
                       "ENTRY e {\n  p = f32[2] parameter(0)\n  ROOT c = f32[2] call(p), to_apply=f\n}\n", 4, "recursion"),
    "while body running itself": ("HloModule m\ncond {\n  x = s32[] parameter(0)\n  ROOT t = pred[] constant(true)\n}\n"
                                  "body {\n  x = s32[] parameter(0)\n  ROOT w = s32[] while(x), condition=cond, body=body\n}\n"
                                  "ENTRY e {\n  p = s32[] parameter(0)\n  ROOT w = s32[] while(p), condition=cond, body=body\n}\n",
                                  8, "recursion"),
    "2^63 dimension": ("HloModule m\nENTRY e {\n  ROOT p = f32[9223372036854775807] parameter(0)\n}\n", 3, "fits in memory"),
    "2^63 dimension, MLIR": ("func.func @main(%arg0: tensor<9223372036854775807xf32>) -> tensor<2xf32> {\n"
                             "  %0 = stablehlo.constant dense<1.0> : tensor<2xf32>\n  return %0 : tensor<2xf32>\n}\n",
                             1, "fits in memory"),
    "recursive MLIR function": ("""module @m {
  func.func public @main(%arg0: tensor<2xf32>) -> tensor<2xf32> {
    %0 = call @f(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
    return %0 : tensor<2xf32>
  }
  func.func private @f(%arg0: tensor<2xf32>) -> tensor<2xf32> {
    %0 = call @f(%arg0) : (tensor<2xf32>) -> tensor<2xf32>
    return %0 : tensor<2xf32>
  }
}
""", 7, "recursion"),
    "calls deeper than the walker follows": (_deep_calls(70), None, "nested at most 64"),
    "unterminated leading comment": ("/* never closed\nHloModule m\n" + _HLO_BODY, 1, "'*/'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_invalid_program_is_refused_with_one_line(name):
    text, lineno, expected = REFUSED[name]
    with pytest.raises(ParseError) as err:
        parse_module(text)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert err.value.column is not None and f"column {err.value.column}:" in message
    if lineno is not None:
        assert err.value.lineno == lineno and message.startswith(f"line {lineno}, column "), message


def test_call_chain_at_the_limit_is_walked_whole():
    # 64 nested calls are accepted and walked to the bottom: the negate at depth 64 is seen.
    module = parse_module(_deep_calls(64))
    assert trace_module(module).schedule[-1].opcode == "negate"


@pytest.mark.parametrize("line, ops", [
    # XLA's own stablehlo -> hlo test writes an op and the return on one line
    ("%0 = stablehlo.add %arg0, %arg1 : tensor<4xf32>  func.return %0 : tensor<4xf32>", ["add", "return"]),
    ("%0 = stablehlo.add %arg0, %arg1 : tensor<4xf32> %1 = stablehlo.multiply %0, %0 : tensor<4xf32> "
     "return %1 : tensor<4xf32>", ["add", "multiply", "return"]),
    # one statement: several results, a '%x = ' inside brackets, a string holding one
    ("%a, %b = \"test.pair\"(%arg0) {note = \"%x = y\"} : (tensor<4xf32>) -> (tensor<4xf32>, tensor<4xf32>) "
     "return %b : tensor<4xf32>", ["pair", "return"]),
])
def test_several_mlir_statements_on_one_line(line, ops):
    text = ("func.func @main(%arg0: tensor<4xf32>, %arg1: tensor<4xf32>) -> tensor<4xf32> {\n  "
            + line + "\n}\n")
    module = parse_module(text)
    assert [i.opcode for i in module.instructions() if i.opcode != "parameter"] == ops
    assert trace_module(module).live_peak > 0
