"""Issue 17, item 1: donated arguments (input_output_alias) in the liveness simulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from hloscope.hlo import Alias, ParseError, parse_module
from hloscope.trace import trace_module


def _step(state, x):
    w, m = state
    g = jnp.tanh(x @ w)
    m = 0.9 * m + x.T @ g
    return (w - 0.1 * m, m), jnp.sum(g)


def _compiled(donate: bool):
    w, x = jnp.ones((256, 256)), jnp.ones((32, 256))
    lowered = jax.jit(_step, donate_argnums=(0,) if donate else ()).lower((w, w), x)
    compiled = lowered.compile()
    ma = compiled.memory_analysis()
    total = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
             - ma.alias_size_in_bytes)
    return lowered, compiled, total, ma.alias_size_in_bytes


@pytest.fixture(scope="module")
def steps():
    return {donate: _compiled(donate) for donate in (False, True)}


def test_donated_step_follows_xla(steps):
    _, _, undonated_total, _ = steps[False]
    _, compiled, donated_total, alias_bytes = steps[True]
    assert alias_bytes > 0 and donated_total < undonated_total  # donation matters to XLA here
    module = parse_module(compiled.as_text())
    assert [(a.output, a.parameter) for a in module.input_output_alias] == [((0,), 0), ((1,), 1)]
    trace = trace_module(module)
    assert trace.figures["donated_bytes"] == alias_bytes
    assert abs(trace.live_peak - donated_total) <= 0.01 * donated_total, (trace.live_peak, donated_total)


def test_undonated_step_is_unchanged(steps):
    _, compiled, total, _ = steps[False]
    module = parse_module(compiled.as_text())
    trace = trace_module(module)
    assert module.input_output_alias == [] and "donated_bytes" not in trace.figures
    assert abs(trace.live_peak - total) <= 0.01 * total
    # The donated step's figure is lower by what XLA saves (the outputs' buffers, less the
    # temporary donation makes XLA keep).
    donated = trace_module(parse_module(steps[True][1].as_text()))
    saved = total - steps[True][2]
    assert abs((trace.live_peak - donated.live_peak) - saved) <= 0.02 * saved


def test_stablehlo_aliasing_output_is_read(steps):
    module = parse_module(steps[True][0].as_text())
    assert module.input_output_alias == [Alias((0,), 0, (), "must-alias"), Alias((1,), 1, (), "must-alias")]
    assert parse_module(steps[False][0].as_text()).input_output_alias == []


_HANDWRITTEN = """HloModule m, input_output_alias={ {0}: (0, {}, may-alias), {1}: (1, {}, must-alias) }

ENTRY e {
  p0 = f32[1024] parameter(0)
  p1 = f32[1024] parameter(1)
  a = f32[1024] add(p0, p1)
  b = f32[1024] multiply(p0, p1)
  ROOT t = (f32[1024], f32[1024]) tuple(a, b)
}
"""


def test_handwritten_alias_both_kinds():
    module = parse_module(_HANDWRITTEN)
    assert [a.kind for a in module.input_output_alias] == ["may-alias", "must-alias"]
    assert trace_module(module).live_peak == 2 * 4096  # the arguments only
    plain = parse_module(_HANDWRITTEN.replace(
        ", input_output_alias={ {0}: (0, {}, may-alias), {1}: (1, {}, must-alias) }", ""))
    assert trace_module(plain).live_peak == 4 * 4096


def test_malformed_alias_is_a_parse_error():
    with pytest.raises(ParseError, match="input_output_alias"):
        parse_module(_HANDWRITTEN.replace("{0}: (0, {}, may-alias)", "{0}: zero").replace(
            ", {1}: (1, {}, must-alias)", ""))
