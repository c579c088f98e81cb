"""The user's line: the innermost call-stack frame outside libraries (hloscope.hlo.frames),
read from optimized HLO's stack tables and from StableHLO's callsite locations."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import optax
from hypothesis import given
from hypothesis import strategies as st

from hloscope.findings import find_offenders
from hloscope.hlo import parse_hlo, parse_stablehlo
from hloscope.hlo.frames import entry_source, is_library, shown_source, user_source
from hloscope.report import print_profile

OPTAX = "/venv/lib/python3.11/site-packages/optax/_src/update.py"
FLAX = "/opt/conda/lib/python3.12/site-packages/flax/linen/linear.py"
STDLIB = "/usr/lib/python3.11/contextlib.py"
USER = "/home/u/model.py"
TRAIN = "/home/u/train.py"
FILES = (OPTAX, FLAX, STDLIB, USER, TRAIN)


def test_libraries_are_told_apart_by_path():
    for path in (OPTAX, FLAX, STDLIB, "/usr/lib/python3/dist-packages/numpy/core.py",
                 "C:\\Python311\\Lib\\site-packages\\flax\\core.py", "<frozen runpy>", "<string>"):
        assert is_library(path), path
    for path in (USER, "/work/main/reftrain/layers.py", "examples/flax_decoder.py", "/srv/libpython/x.py"):
        assert not is_library(path), path


def test_user_source_is_the_innermost_frame_outside_libraries():
    assert user_source([(OPTAX, 42), (STDLIB, 3), (USER, 7), (TRAIN, 9)]) == f"{USER}:7"
    assert user_source([(USER, 7), (TRAIN, 9)]) is None  # the op's own line is already the user's
    assert user_source([(OPTAX, 42), (FLAX, 3)]) is None  # no user frame
    assert user_source([]) is None


def test_reports_show_the_users_line_then_the_library_line_from_its_package():
    assert shown_source(f"{OPTAX}:42", f"{USER}:7") == f"{USER}:7 via optax/_src/update.py:42"
    assert shown_source(f"{USER}:7", None) == f"{USER}:7"
    assert entry_source({"source": f"{FLAX}:3", "user_source": f"{TRAIN}:9"}) == f"{TRAIN}:9 via flax/linen/linear.py:3"
    assert entry_source({"source": None, "user_source": None}) is None


def _module_with_frames(parents: list[int], files: list[int], shift: int) -> str:
    """HLO text with one negate per stack frame (frame k, 1-based, at line 10k of FILES[files[k-1]]
    with parent parents[k-1], 0 for none), the parents written `shift` higher as jax 0.10 does."""
    n = len(parents)
    lines = ["HloModule m, entry_computation_layout={(f32[4]{0})->f32[4]{0}}", "", "FileNames"]
    lines += [f'{i} "{path}"' for i, path in enumerate(FILES, 1)]
    lines += ["", "FunctionNames", '1 "f"', "", "FileLocations"]
    lines += [f"{k} {{file_name_id={files[k - 1] + 1} function_name_id=1 line={10 * k} end_line={10 * k} column=1 "
              f"end_column=2}}" for k in range(1, n + 1)]
    lines += ["", "StackFrames"]
    lines += [f"{k} {{file_location_id={k} parent_frame_id={parents[k - 1] + shift}}}" for k in range(1, n + 1)]
    lines += ["", "", "ENTRY %main (x: f32[4]) -> f32[4] {", "  %x = f32[4]{0} parameter(0)"]
    previous = "%x"
    for k in range(1, n + 1):
        root = "ROOT " if k == n else ""
        lines.append(f'  {root}%n{k} = f32[4]{{0}} negate({previous}), metadata={{op_name="n" stack_frame_id={k}}}')
        previous = f"%n{k}"
    return "\n".join(lines + ["}", ""])


@st.composite
def _frame_forests(draw):
    """Frames numbered parents first (as XLA interns them): frame 1 is a root."""
    n = draw(st.integers(1, 12))
    parents = [0] + [draw(st.integers(0, k - 1)) for k in range(2, n + 1)]
    files = [draw(st.integers(0, len(FILES) - 1)) for _ in range(n)]
    return parents, files


@given(_frame_forests(), st.sampled_from([0, 1]))
def test_stack_tables_give_each_ops_line_and_the_users_in_either_parent_numbering(forest, shift):
    parents, files = forest
    module = parse_hlo(_module_with_frames(parents, files, shift))
    for k in range(1, len(parents) + 1):
        inst = module.instruction("main", f"n{k}")
        assert (inst.source_file, inst.source_line) == (FILES[files[k - 1]], 10 * k)
        chain, at = [], k
        while at:
            chain.append((FILES[files[at - 1]], 10 * at))
            at = parents[at - 1]
        assert inst.user_source == user_source(chain)


def test_a_malformed_stack_table_with_a_cycle_ends():
    text = _module_with_frames([0, 3, 2], [0, 0, 1], shift=0)  # frames 2 and 3 name each other
    inst = parse_hlo(text).instruction("main", "n2")
    assert (inst.source_file, inst.user_source) == (OPTAX, None)


def test_callsite_locations_give_the_users_line():
    text = f"""
#loc1 = loc("{OPTAX}":42:10)
#loc2 = loc("{STDLIB}":3:1)
#loc3 = loc("{USER}":7:3)
#loc4 = loc(callsite(#loc1 at callsite(#loc2 at #loc3)))
#loc5 = loc("jit(f)/neg"(#loc4))
module @jit_f {{
  func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {{
    %0 = stablehlo.negate %arg0 : tensor<4xf32> loc(#loc5)
    %1 = stablehlo.negate %0 : tensor<4xf32> loc(#loc3)
    return %1 : tensor<4xf32>
  }}
}}
"""
    module = parse_stablehlo(text)
    library, own = module.instruction("main", "0"), module.instruction("main", "1")
    assert (library.op_name, library.source_file, library.source_line) == ("jit(f)/neg", OPTAX, 42)
    assert library.user_source == f"{USER}:7"
    assert (own.source_file, own.user_source) == (USER, None)


def _loss(params, x):
    return optax.softmax_cross_entropy_with_integer_labels(x @ params, jnp.zeros(x.shape[0], jnp.int32)).mean()


def test_a_real_program_blames_this_file_for_optaxs_ops():
    """jax's own output, both forms: optax's ops name the line of _loss that called optax."""
    line = inspect.getsourcelines(_loss)[1] + 1
    lowered = jax.jit(jax.grad(_loss)).lower(jnp.ones((64, 128)), jnp.ones((8, 64)))
    for module in (parse_hlo(lowered.compile().as_text()), parse_stablehlo(lowered.as_text(debug_info=True))):
        insts = [i for c in module.computations.values() for i in c.instructions if i.source_file]
        in_optax = [i for i in insts if "optax" in i.source_file]
        assert in_optax, module.dialect
        assert {i.user_source for i in in_optax} == {f"{__file__}:{line}"}, module.dialect
        assert all(i.user_source is None for i in insts if i.source_file == __file__)
        findings = [f for f in find_offenders(module, budget_bytes=1 << 12, min_bytes=0) if "optax" in (f.source or "")]
        assert findings and {f.user_source for f in findings} == {f"{__file__}:{line}"}, module.dialect


def test_the_terminal_report_shows_the_users_line(capsys):
    buffer = {"instruction": "fusion.1", "opcode": "fusion", "shape": "f32[8]", "bytes": 32, "op_name": "add",
              "source": f"{OPTAX}:42", "user_source": f"{USER}:7"}
    profile = {"label": "p", "dialect": "hlo", "curve": {"instructions": 1}, "figures": {}, "figure_sources": {},
               "findings": [], "top_buffers": [buffer]}
    print_profile(profile, top=1)
    assert f"{USER}:7 via optax/_src/update.py:42" in capsys.readouterr().out.replace("\n", "").replace("│", "")
